"""Pinhole cameras: intrinsics, poses, (un)projection and Plücker rays, for any camera and any depth source.

Conventions (OpenCV's): the camera looks along +z, x to the right of the image, y down it. Pixel ``(i, j)`` (column,
row) covers ``[i, i + 1) x [j, j + 1)`` in image coordinates, so its centre is ``(i + 0.5, j + 0.5)`` and an image
``width`` wide spans ``[0, width]``. Depth is a point's z in the camera frame (not its distance along the ray).

A pose is a 4x4 ``camera_to_world`` matrix ``[R | t]`` (the columns of R are the camera's axes in the world, t its
centre); ``world_to_camera`` is its inverse. Everything is batched over leading dimensions and works in the input's
dtype; the exactness tests run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Intrinsics", "invert_pose", "pixel_centres", "unproject", "project", "in_view", "ray_directions",
           "plucker_rays"]


@dataclass(frozen=True)
class Intrinsics:
    """Focal lengths and principal point in pixels, and the image size they belong to."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be at least 1x1, got {self.width}x{self.height}")

    @classmethod
    def centred(cls, width: int, height: int, focal: float) -> "Intrinsics":
        """Square pixels, principal point at the image centre."""
        return cls(float(focal), float(focal), width / 2, height / 2, int(width), int(height))

    def matrix(self, dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
                            dtype=dtype, device=device)

    def scaled(self, factor: float) -> "Intrinsics":
        """The same camera sampled ``factor`` times more finely (a frame rendered at another resolution)."""
        return Intrinsics(self.fx * factor, self.fy * factor, self.cx * factor, self.cy * factor,
                          round(self.width * factor), round(self.height * factor))


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms [..., 4, 4] (exact for rotations: R^T, -R^T t)."""
    rotation, translation = pose[..., :3, :3], pose[..., :3, 3:]
    inverse = torch.zeros_like(pose)
    inverse[..., :3, :3] = rotation.transpose(-1, -2)
    inverse[..., :3, 3:] = -rotation.transpose(-1, -2) @ translation
    inverse[..., 3, 3] = 1
    return inverse


def pixel_centres(intrinsics: Intrinsics, dtype=torch.float32, device=None) -> torch.Tensor:
    """Image coordinates of every pixel centre, [H, W, 2] as (u, v)."""
    u = torch.arange(intrinsics.width, dtype=dtype, device=device) + 0.5
    v = torch.arange(intrinsics.height, dtype=dtype, device=device) + 0.5
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


def _camera_rays(intrinsics: Intrinsics, uv: torch.Tensor) -> torch.Tensor:
    """Camera-frame directions with z = 1 through image points uv [..., 2]."""
    x = (uv[..., 0] - intrinsics.cx) / intrinsics.fx
    y = (uv[..., 1] - intrinsics.cy) / intrinsics.fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def unproject(depth: torch.Tensor, intrinsics: Intrinsics, camera_to_world: torch.Tensor) -> torch.Tensor:
    """World points [..., H, W, 3] seen at each pixel centre of depth maps [..., H, W] taken from poses [..., 4, 4]."""
    if depth.shape[-2:] != (intrinsics.height, intrinsics.width):
        raise ValueError(f"depth is {tuple(depth.shape[-2:])} (H, W) but the intrinsics are for "
                         f"{intrinsics.height}x{intrinsics.width}")
    rays = _camera_rays(intrinsics, pixel_centres(intrinsics, depth.dtype, depth.device))
    camera_points = rays * depth[..., None]
    rotation = camera_to_world[..., None, None, :3, :3]
    return (rotation @ camera_points[..., None])[..., 0] + camera_to_world[..., None, None, :3, 3]


def project(points: torch.Tensor, intrinsics: Intrinsics, world_to_camera: torch.Tensor):
    """Image coordinates uv [..., N, 2] and depths z [..., N] of world points [..., N, 3] seen from poses [..., 4, 4].
    Points behind the camera get z <= 0 (their uv is meaningless): callers mask them."""
    rotation, translation = world_to_camera[..., None, :3, :3], world_to_camera[..., None, :3, 3]
    camera_points = (rotation @ points[..., None])[..., 0] + translation
    z = camera_points[..., 2]
    safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    u = intrinsics.fx * camera_points[..., 0] / safe + intrinsics.cx
    v = intrinsics.fy * camera_points[..., 1] / safe + intrinsics.cy
    return torch.stack([u, v], dim=-1), z


def in_view(points: torch.Tensor, intrinsics: Intrinsics, camera_to_world: torch.Tensor) -> torch.Tensor:
    """bool [N]: which world points [N, 3] fall inside the image of the camera at ``camera_to_world`` (in front of
    it, occlusion ignored)."""
    uv, z = project(points, intrinsics, invert_pose(camera_to_world.to(points.dtype)))
    return (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < intrinsics.width) & (uv[:, 1] >= 0) & (uv[:, 1] < intrinsics.height)


def ray_directions(intrinsics: Intrinsics, camera_to_world: torch.Tensor) -> torch.Tensor:
    """Unit world-frame directions [..., H, W, 3] of the rays through every pixel centre."""
    rays = _camera_rays(intrinsics, pixel_centres(intrinsics, camera_to_world.dtype, camera_to_world.device))
    world = (camera_to_world[..., None, None, :3, :3] @ rays[..., None])[..., 0]
    return world / world.norm(dim=-1, keepdim=True)


def plucker_rays(intrinsics: Intrinsics, camera_to_world: torch.Tensor) -> torch.Tensor:
    """Plücker coordinates (d, o x d) [..., H, W, 6] of every pixel's ray: the per-token camera signal of
    camera-controlled video models (d unit, o the camera centre); independent of where along the ray o sits."""
    direction = ray_directions(intrinsics, camera_to_world)
    origin = camera_to_world[..., None, None, :3, 3].expand_as(direction)
    return torch.cat([direction, torch.linalg.cross(origin, direction, dim=-1)], dim=-1)
