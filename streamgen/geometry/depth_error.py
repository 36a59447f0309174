"""What estimated depth does to a geometric memory, in one knob: each frame's depth is off by its own scale factor.

A monocular depth estimator (what real footage has) knows depth up to scale, and its per-frame estimates disagree with
each other: a frame's points land scaled about its camera and at the wrong distance from any other camera. Local
memory (AnchorWeave's) renders each retrieved frame on its own, so each anchor is consistently off; a globally fused
cloud mixes every frame's error in one z-buffer, where the frames whose depth came out short win. The camera world's
exact depth times :class:`DepthScaleError` is how the revisit bench measures that difference.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["DepthScaleError"]


class DepthScaleError:
    """Multiply each depth map it is given by a fresh ``exp(N(0, sigma))`` (``sigma`` the log-scale error; 0.05 is
    about 5%), drawn from its own generator seeded ``seed``: the same frames in the same order get the same errors."""

    def __init__(self, sigma: float, seed: int = 0):
        if not (math.isfinite(sigma) and 0 <= sigma <= 1):
            raise ValueError(f"depth error sigma must be in [0, 1] (a log-scale standard deviation), got {sigma}")
        self.sigma = float(sigma)
        self.generator = torch.Generator().manual_seed(int(seed))

    def scale(self) -> float:
        """The next frame's factor."""
        return math.exp(self.sigma * float(torch.randn((), generator=self.generator, dtype=torch.float64)))

    def __call__(self, depth: torch.Tensor) -> torch.Tensor:
        return depth * self.scale()

    def around(self, depth_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``depth_fn`` with this error on every map it returns (a stream's ``depth_fn(pose, intrinsics)``)."""
        return lambda *args: self(depth_fn(*args))
