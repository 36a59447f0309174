"""Loading a pipeline the way the commands do (``streamgen generate``, ``info``, ``bench``, ``demo``, batch): a
folder or a shipped pipeline's name, the embedded default when none is given, a dtype by short name, and the
commands' comma-separated integer lists."""

from __future__ import annotations

from pathlib import Path

from .resources import find_pipeline

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def int_list(text: str) -> list[int]:
    """argparse type for comma-separated integers, e.g. LongLive's switch frame indices."""
    return [int(x) for x in text.split(",")]


def open_pipeline(folder: str | Path | None = None, device: str = "cpu", dtype: str = "fp32"):
    """The pipeline in ``folder`` (a path or a shipped name; default: the embedded one) on ``device``, weights in
    ``dtype`` (a DTYPES key)."""
    import torch

    from .pipeline import load_pipeline

    folder = find_pipeline(folder)
    check_device(device)
    return load_pipeline(folder, device, getattr(torch, DTYPES[dtype]))


def check_device(device: str) -> None:
    """ValueError, before anything loads, if ``device`` is not a torch device this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return
    count = {"cuda": torch.cuda.device_count, "mps": lambda: int(torch.backends.mps.is_available())}.get(dev.type)
    if count is None:
        raise ValueError(f"--device {device!r}: streamgen runs on cpu, cuda or mps")
    if count() <= (dev.index or 0):
        raise ValueError(f"--device {device!r}: this machine has {count()} {dev.type} device(s)")
