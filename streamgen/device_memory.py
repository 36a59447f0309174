"""How much memory a device has left: what streams and snapshots are sized against before they allocate."""

from __future__ import annotations

import torch


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (free GPU memory, or available RAM), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None
