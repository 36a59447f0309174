"""How many torch CPU threads a model should use: one for a small model, the physical cores for a large one.

Measured on a loaded 2-core machine: the embedded ShapeWorld model (~1M parameters) took 56 s for the quick-start
command with torch's default (one thread per logical core) and 14.8 s with one thread. A small model's operations
are too short to pay for waking a thread team, and when the cores are busy every extra thread waits for a core. A
large model (Wan2.1-1.3B) has work enough to split across every physical core; hyper-threads add nothing to matmuls.

A pipeline folder may state its own number in ``model_index.json`` (``"torch_threads": 2``); ``--threads`` wins over
both. From Python::

    import torch
    from streamgen.threads import default_threads

    torch.set_num_threads(default_threads(pipe))  # or any number: torch.set_num_threads(1)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Below this many transformer parameters one thread is fastest (the embedded model: ~1M; Wan2.1-1.3B: 1.4B).
SMALL_MODEL_PARAMETERS = 100_000_000


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once; at least 1)."""
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))  # a container or taskset may allow fewer
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    return max(1, min(physical, allowed))


def stated_threads(folder: str | Path | None) -> int | None:
    """The ``torch_threads`` a pipeline folder's model_index.json states, None if it states none."""
    if folder is None:
        return None
    try:
        value = json.loads((Path(folder) / "model_index.json").read_text()).get("torch_threads")
    except (OSError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{folder}/model_index.json: torch_threads must be a whole number >= 1, got {value!r}")
    return value


def default_threads(pipe, stated: int | None = None) -> int:
    """Torch CPU threads for ``pipe``: ``stated`` (a pipeline config's ``torch_threads``) if given, else the folder's
    own statement, else 1 below :data:`SMALL_MODEL_PARAMETERS` transformer parameters and the physical cores above."""
    if stated is None:
        stated = stated_threads(getattr(pipe, "name_or_path", None) or None)
    if stated is not None:
        return stated
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    return 1 if parameters < SMALL_MODEL_PARAMETERS else physical_cores()


def use_default_threads(pipe) -> int:
    """Set torch's CPU threads to :func:`default_threads` and return the number (what the commands do without
    ``--threads``)."""
    import torch

    threads = default_threads(pipe)
    torch.set_num_threads(threads)
    return threads
