"""Cameras over a camera world's map: a top-down pinhole camera with a position, a height (zoom) and a yaw, and the
flights it takes (pans, zooms, turns, out-and-back paths).

A camera at height h with focal length f pixels sees h / f world units per pixel. Its axes in the world frame of
:mod:`.map` (X east, Y south, Z down): image x = (cos yaw, sin yaw, 0), image y = (-sin yaw, cos yaw, 0), optical
axis = (0, 0, 1) straight down; its centre is (x, y, -h). Yaw 0 shows north at the top of the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ...geometry import Intrinsics
from ..scenes import RESOLUTION

__all__ = ["CameraState", "default_intrinsics", "DEFAULT_HEIGHT", "pan", "zoom", "turn", "out_and_back",
           "camera_to_world"]

DEFAULT_HEIGHT = float(RESOLUTION)  # with the default focal length: 1 world unit per pixel


def default_intrinsics(resolution: int = RESOLUTION) -> Intrinsics:
    """A square frame whose focal length equals its width (a 53-degree field of view)."""
    return Intrinsics.centred(resolution, resolution, float(resolution))


@dataclass(frozen=True)
class CameraState:
    """Where the camera is: ground position (x, y) under it, height above the ground, yaw in radians."""

    x: float
    y: float
    height: float = DEFAULT_HEIGHT
    yaw: float = 0.0

    def __post_init__(self):
        if not self.height > 0:
            raise ValueError(f"camera height must be positive, got {self.height}")

    def camera_to_world(self, dtype=torch.float64) -> torch.Tensor:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return torch.tensor([[c, -s, 0.0, self.x], [s, c, 0.0, self.y], [0.0, 0.0, 1.0, -self.height],
                             [0.0, 0.0, 0.0, 1.0]], dtype=dtype)

    def step(self, *, right: float = 0.0, forward: float = 0.0, zoom: float = 1.0, turn: float = 0.0,
             focal: float = float(RESOLUTION)) -> "CameraState":
        """Steer as a user does: move ``right`` / ``forward`` by that many pixels of the current view (forward is
        up the image), multiply the height by ``zoom`` (< 1 zooms in) and add ``turn`` radians of yaw."""
        scale = self.height / focal
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx = (right * c + forward * s) * scale
        dy = (right * s - forward * c) * scale
        return replace(self, x=self.x + dx, y=self.y + dy, height=self.height * zoom, yaw=self.yaw + turn)


def camera_to_world(states: Sequence[CameraState], dtype=torch.float64) -> torch.Tensor:
    """Poses [F, 4, 4] of a flight."""
    return torch.stack([s.camera_to_world(dtype) for s in states])


def pan(start: CameraState, dx: float, dy: float, frames: int) -> list[CameraState]:
    """``frames`` states moving (dx, dy) world units per frame, starting at ``start``."""
    return [replace(start, x=start.x + k * dx, y=start.y + k * dy) for k in range(frames)]


def zoom(start: CameraState, to_height: float, frames: int) -> list[CameraState]:
    """Height changing geometrically from ``start``'s to ``to_height`` over ``frames`` states."""
    ratio = (to_height / start.height) ** (1 / max(frames - 1, 1))
    return [replace(start, height=start.height * ratio ** k) for k in range(frames)]


def turn(start: CameraState, to_yaw: float, frames: int) -> list[CameraState]:
    """Yaw going linearly from ``start``'s to ``to_yaw`` over ``frames`` states."""
    step = (to_yaw - start.yaw) / max(frames - 1, 1)
    return [replace(start, yaw=start.yaw + k * step) for k in range(frames)]


def out_and_back(path: Sequence[CameraState]) -> list[CameraState]:
    """The path, then the same poses in reverse: a revisit of every place it saw."""
    path = list(path)
    return path + path[-2::-1]
