"""What estimated depth does to a geometric memory, in two knobs: each frame's depth off by its own scale factor, and
warped within the frame by a smooth distortion of its own.

A monocular depth estimator (what real footage has) knows depth up to scale, and its per-frame estimates disagree with
each other: a frame's points land scaled about its camera and at the wrong distance from any other camera. Within a
frame it errs too, smoothly (a slope read into flat ground, a bulge): that part no rescaling removes. Local memory
(AnchorWeave's) renders each retrieved frame on its own, so each anchor is consistently off; a globally fused cloud
mixes every frame's error in one z-buffer, where the frames whose depth came out short win. The camera world's exact
depth through :class:`DepthError` is how the revisit bench measures that difference.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["DepthError"]


def _log_sd(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"depth error {name} must be in [0, 1] (a log-scale standard deviation), got {value}")
    return float(value)


class DepthError:
    """Multiply each depth map it is given by ``exp(N(0, sigma))`` (one factor per map; 0.05 is about 5%) and, with
    ``warp``, by ``exp(field)``, a field of N(0, warp) values on a ``cells`` x ``cells`` grid bilinearly spread over the
    map. Seeded: the same maps in the same order get the same errors, and the scale factors do not depend on
    ``warp`` (each has its own generator)."""

    def __init__(self, sigma: float = 0.0, seed: int = 0, *, warp: float = 0.0, cells: int = 4):
        self.sigma, self.warp = _log_sd(sigma, "sigma"), _log_sd(warp, "warp")
        if not (isinstance(cells, int) and 2 <= cells <= 64):
            raise ValueError(f"depth error cells must be 2..64 (the warp's grid per side), got {cells!r}")
        self.cells = cells
        self.generator = torch.Generator().manual_seed(int(seed))
        self.warp_generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + 1)

    def scale(self) -> float:
        """The next frame's factor."""
        return math.exp(self.sigma * float(torch.randn((), generator=self.generator, dtype=torch.float64)))

    def __call__(self, depth: torch.Tensor) -> torch.Tensor:
        depth = depth * self.scale()
        if self.warp:
            grid = torch.randn(1, 1, self.cells, self.cells, generator=self.warp_generator, dtype=torch.float64)
            field = F.interpolate(grid * self.warp, size=tuple(depth.shape[-2:]), mode="bilinear", align_corners=True)
            depth = depth * field[0, 0].exp().to(depth.dtype)
        return depth

    def around(self, depth_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``depth_fn`` with this error on every map it returns (a stream's ``depth_fn(pose, intrinsics)``)."""
        return lambda *args: self(depth_fn(*args))
