"""Loading a pipeline the way the commands do (``streamgen generate``, ``info``, ``bench``, ``demo``, batch): a
folder or a shipped pipeline's name, the embedded default when none is given, and a dtype by short name."""

from __future__ import annotations

from pathlib import Path

from .resources import find_pipeline

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def open_pipeline(folder: str | Path | None = None, device: str = "cpu", dtype: str = "fp32"):
    """The pipeline in ``folder`` (a path or a shipped name; default: the embedded one) on ``device``, weights in
    ``dtype`` (a DTYPES key)."""
    import torch

    from .pipeline import load_pipeline

    return load_pipeline(find_pipeline(folder), device, getattr(torch, DTYPES[dtype]))
