"""Resumable training state on disk, without pickles: loading a state file never runs code from it.

``state.safetensors`` holds every tensor of the state (model, EMA shadow, optimizer moments and steps, RNG states of
torch and of the data generator) under its path in the state (``optimizer/state/0/exp_avg``), and everything else
(step, optimizer hyper-parameters, LR schedule, numpy's and Python's RNG states, the config) as JSON in the
safetensors header's metadata, where a tensor's place holds ``{"__tensor__": "its/path"}``. Tuples, numpy arrays and
dicts with non-string keys (the optimizer's per-parameter state) are tagged so that the state loads back exactly
as saved, which keeps a resumed run bit-identical.

A legacy ``state.pt`` (``torch.save`` of the same dict, written before this format) still loads, with
``weights_only=True`` and an allow-list of exactly the numpy types its numpy RNG state needs
(:data:`LEGACY_GLOBALS`): anything else in its pickle is refused (:class:`streamgen.safe_load.UnsafeFileError`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_load import UnsafeFileError, short_reason, torch_load

CHECKPOINT = "checkpoint"  # a run's folder of its resumable state
STATE_FILE = "state.safetensors"
LEGACY_STATE_FILE = "state.pt"
FORMAT = "streamgen-train-state"
VERSION = "1"
REQUIRED = ("step", "model", "ema", "optimizer", "scheduler", "generator", "torch_rng", "numpy_rng", "python_rng")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# np.random.get_state() pickles as ('MT19937', uint32 key array, pos, has_gauss, cached_gaussian): the array is
# rebuilt by numpy's _reconstruct (named after the numpy that wrote the file), ndarray, dtype and its uint32 class.
LEGACY_GLOBALS = (
    (_numpy_reconstruct(), "numpy._core.multiarray._reconstruct"),
    (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)


def find_state(folder: str | Path) -> Path | None:
    """The training state in a run's checkpoint ``folder``: ``state.safetensors``, else a legacy ``state.pt``."""
    for name in (STATE_FILE, LEGACY_STATE_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little endian) and then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < Path(path).stat().st_size


def state_file_name(path: str | Path) -> str:
    """The name a run's checkpoint folder gives the state file ``path``, after its format."""
    return STATE_FILE if is_safetensors(path) else LEGACY_STATE_FILE


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` (a ``.safetensors`` file) atomically: a kill leaves the previous file whole."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": VERSION, "state": json.dumps(tree)})
    os.replace(tmp, path)
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """The training state in ``path``: a ``state.safetensors`` or a legacy ``state.pt``; ValueError (one line) for
    anything else, :class:`~streamgen.safe_load.UnsafeFileError` for a pickle that would run code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such training state file")
    if is_safetensors(path):
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: a damaged training state ({err})") from None
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: a safetensors file, but not a streamgen training state (no {FORMAT!r} header)")
        state = _decode(json.loads(metadata["state"]), tensors)
    else:
        try:
            state = torch_load(path, allow=LEGACY_GLOBALS)
        except UnsafeFileError:
            raise
        except Exception as err:  # truncated or damaged: EOFError, RuntimeError, UnpicklingError, decode errors ...
            raise ValueError(f"{path}: not a readable training state ({short_reason(err)})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not a streamgen training state (no {', '.join(missing)})")
    return state


# ---- JSON tree <-> Python objects ---------------------------------------------------------------------------------
def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"training state: two tensors at {key!r}")
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}/{k}" if key else k, tensors) for k, v in obj.items()}
        return {"__dict__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"training state: cannot store {type(obj).__name__} at {key!r}")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return np.array(tree["__ndarray__"], dtype=tree["dtype"])
    if "__tuple__" in tree:
        return tuple(_decode(v, tensors) for v in tree["__tuple__"])
    if "__dict__" in tree:
        return {k: _decode(v, tensors) for k, v in tree["__dict__"]}
    return {k: _decode(v, tensors) for k, v in tree.items()}
