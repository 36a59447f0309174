"""Render a camera world exactly: every frame with its depth, intrinsics and pose.

Each pixel centre's ray meets the ground plane Z = 0 at a world point (a general ray-plane intersection, so any
camera rotation works); the pixel shows the background there, with each object composited by ShapeWorld's own
anti-aliased coverage ``clip(0.5 - sdf, 0, 1)``, the signed distance measured in pixels of the ground at that depth
(world units / (depth / fx)). Depth is exact: the z of the ground point in the camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...geometry import Intrinsics, unproject
from ..render import shape_alpha
from ..scenes import COLORS
from .flight import CameraState, camera_to_world, default_intrinsics
from .map import MapObject, WorldMap

__all__ = ["Flight", "render_flight", "ground_points", "ground_depth"]


@dataclass
class Flight:
    """Frames of a camera world and their exact geometry.

    frames       uint8 [F, H, W, 3]
    depth        float32 [F, H, W] (z of the ground point in the camera frame)
    poses        float64 [F, 4, 4] camera_to_world
    intrinsics   one camera for every frame
    states       the CameraState of each frame; times: the world time (frame index) of each frame
    """

    frames: np.ndarray
    depth: np.ndarray
    poses: torch.Tensor
    intrinsics: Intrinsics
    states: list[CameraState]
    times: list[float]

    def __len__(self) -> int:
        return len(self.frames)


def ground_points(intrinsics: Intrinsics, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [H, W, 3] where each pixel's ray meets the ground Z = 0, and their depths [H, W] (inf where a
    ray misses the ground: it points at or above the horizon)."""
    ones = torch.ones(intrinsics.height, intrinsics.width, dtype=pose.dtype)
    through = unproject(ones, intrinsics, pose)  # the point at depth 1 on each ray
    origin = pose[:3, 3]
    direction = through - origin
    depth = -origin[2] / direction[..., 2]
    depth = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
    return origin + direction * depth[..., None].nan_to_num(posinf=0.0), depth


def ground_depth(pose: torch.Tensor, intrinsics: Intrinsics) -> torch.Tensor:
    """Exact depth [H, W] (float32) of the ground seen from ``pose``: a stream's ``depth_fn`` over the camera world."""
    return ground_points(intrinsics, pose.to(torch.float64))[1].to(torch.float32)


def _copies(obj: MapObject, centre: np.ndarray, extent: float) -> np.ndarray:
    """The object's centre, and for a mover its wrapped copies (a mover leaving one side enters the other)."""
    if not obj.moving:
        return centre[None]
    shifts = np.array([(i * extent, j * extent) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    return centre[None] + shifts


def _render_one(world: WorldMap, intrinsics: Intrinsics, pose: torch.Tensor, time: float):
    points, depth = ground_points(intrinsics, pose)
    gx, gy = points[..., 0].numpy(), points[..., 1].numpy()
    units_per_pixel = depth.numpy() / intrinsics.fx
    rgb = np.empty((*gx.shape, 3), np.float64)
    rgb[:] = COLORS[world.background]
    finite = np.isfinite(units_per_pixel)
    if finite.any():
        low = np.array([gx[finite].min(), gy[finite].min()])
        high = np.array([gx[finite].max(), gy[finite].max()])
        scale = np.where(finite, units_per_pixel, 1.0)
        centres = world.positions(time)
        # statics first, movers over them
        order = sorted(range(len(world.objects)), key=lambda i: world.objects[i].moving)
        for i in order:
            obj = world.objects[i]
            for cx, cy in _copies(obj, centres[i], world.extent):
                reach = obj.size  # generous: the shape's half-diagonal plus an anti-aliasing margin
                if cx + reach < low[0] or cx - reach > high[0] or cy + reach < low[1] or cy - reach > high[1]:
                    continue
                alpha = shape_alpha(obj.shape, (gx - cx) / scale, (gy - cy) / scale, obj.size / scale)
                alpha = np.where(finite, alpha, 0.0)[..., None]
                rgb = rgb * (1 - alpha) + np.array(COLORS[obj.color], np.float64) * alpha
    frame = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return frame, depth.to(torch.float32).numpy()


def render_flight(world: WorldMap, states: Sequence[CameraState], *, start_time: float = 0.0,
                  intrinsics: Intrinsics | None = None) -> Flight:
    """Render the camera ``states`` one frame each, at world times start_time, start_time + 1, ..."""
    intrinsics = intrinsics or default_intrinsics()
    states = list(states)
    poses = camera_to_world(states)
    times = [start_time + k for k in range(len(states))]
    rendered = [_render_one(world, intrinsics, pose, t) for pose, t in zip(poses, times)]
    frames = np.stack([f for f, _ in rendered]) if rendered else np.zeros((0, intrinsics.height,
                                                                          intrinsics.width, 3), np.uint8)
    depth = np.stack([d for _, d in rendered]) if rendered else np.zeros((0, intrinsics.height, intrinsics.width),
                                                                        np.float32)
    return Flight(frames, depth, poses, intrinsics, states, times)
