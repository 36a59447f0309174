"""Checks of a pipeline's weights: the files before loading, the values after.

A damaged download used to surface as an ``OSError`` from deep inside diffusers (truncated or empty safetensors), a
weights file that would run code as the same bare ``OSError``, and NaN or huge weights as an all-black video with
exit code 0. Each is now one line naming the file or the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable

import torch

from .safe_load import refused_names, UnsafeFileError

MAX_ABS_WEIGHT = 1e4  # trained weights stay orders of magnitude below; random byte damage lands far above
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weight_files(folder: str | Path, given: Iterable[str] = ()) -> None:
    """ValueError naming the component if ``model_index.json`` names one its folder lacks (and the caller does not
    pass, ``given``), or the file if a weights
    file in a component is empty, truncated or not safetensors; :class:`~streamgen.safe_load.UnsafeFileError` if a
    pickled one would run code. Reads headers only."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}  # diffusers says what is wrong with the index itself
    for name, spec in index.items():  # diffusers' own message names a config.json, not the missing component
        component = isinstance(spec, list) and len(spec) == 2 and all(isinstance(part, str) for part in spec)
        if component and name not in given and not (folder / name).is_dir():
            raise ValueError(f"{folder}: no {name}/ folder, though model_index.json names the component {name!r} "
                             f"({spec[1]}): an incomplete copy of the pipeline, or a folder of configs only")
    for path in sorted(folder.glob("*/*")):
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                raise ValueError(f"{path}: {problem}; download or copy it again")
        elif path.suffix in PICKLE_SUFFIXES and path.is_file():
            names = refused_names(path)
            if names:
                raise UnsafeFileError(path, f"its pickle calls {', '.join(names[:5])}")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (empty, truncated, bad header), or None."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    if size < 8:
        return f"truncated ({size} bytes, less than a safetensors header)"
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > size - 8:
            return f"truncated or not safetensors: its header claims {length:,} bytes, the file holds {size:,}"
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            return f"not a valid safetensors file (bad header: {err})"
    if 8 + length + end != size:
        return f"truncated: its tensors need {8 + length + end:,} bytes, the file holds {size:,}"
    return None


def check_finite_weights(module: torch.nn.Module, where: str | Path) -> None:
    """ValueError naming the tensor if a parameter of ``module`` (loaded from ``where``) holds NaN / inf or a value
    beyond +-MAX_ABS_WEIGHT: such weights make every frame NaN (black) instead of failing. One pass per tensor
    (min and max propagate NaN), so a 1.3B-parameter transformer takes a second or two on a CPU."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not param.numel() or not param.is_floating_point():
                continue
            low, high = (float(v) for v in torch.aminmax(param.detach()))
            if not (math.isfinite(low) and math.isfinite(high)):
                bad = int((~torch.isfinite(param)).sum())
                raise ValueError(f"{where}: weight {name} holds {bad:,} NaN/inf values; the file is damaged")
            largest = max(-low, high)
            if largest > MAX_ABS_WEIGHT:
                raise ValueError(f"{where}: weight {name} holds a value of magnitude {largest:.3g} (more than "
                                 f"{MAX_ABS_WEIGHT:g}); the file is damaged")
