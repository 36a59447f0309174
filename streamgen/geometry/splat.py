"""Z-buffered forward splatting: render a coloured point cloud (a memory frame lifted by its depth) into another
camera, with the mask of the pixels it covers.

Each point lands on the pixel that contains its projection. Per pixel the nearest depth wins; the points within
``depth_tolerance`` (relative) of it are averaged, so a surface seen at a coarser scale is box-filtered instead of
decimated. Magnification leaves gaps between points: ``reproject`` lifts each source pixel to ``supersample``^2
points first, which fills a target up to that zoom.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .pinhole import Intrinsics, invert_pose, project, unproject

__all__ = ["Splat", "splat", "reproject", "token_holes", "psnr"]

NEAR = 1e-6  # points closer to the camera plane than this (or behind it) are not drawn


@dataclass
class Splat:
    """A rendered view: ``image`` [H, W, C] (zeros where uncovered), ``depth`` [H, W] (inf where uncovered) and
    ``covered`` bool [H, W]."""

    image: torch.Tensor
    depth: torch.Tensor
    covered: torch.Tensor

    @property
    def holes(self) -> torch.Tensor:
        return ~self.covered


def splat(points: torch.Tensor, colors: torch.Tensor, intrinsics: Intrinsics, world_to_camera: torch.Tensor,
          *, valid: torch.Tensor | None = None, depth_tolerance: float = 1e-3) -> Splat:
    """Render points [N, 3] with colours [N, C] into the camera ``world_to_camera`` [4, 4] of ``intrinsics``."""
    points, colors = points.reshape(-1, 3), colors.reshape(-1, colors.shape[-1])
    if points.shape[0] != colors.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {colors.shape[0]} colours")
    width, height = intrinsics.width, intrinsics.height
    uv, z = project(points, intrinsics, world_to_camera)
    column, row = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
    inside = (z > NEAR) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
    if valid is not None:
        inside &= valid.reshape(-1)
    index = (row[inside] * width + column[inside]).long()
    z, colors = z[inside], colors[inside]

    depth = torch.full((height * width,), float("inf"), dtype=z.dtype, device=z.device)
    depth = depth.scatter_reduce(0, index, z, reduce="amin")
    front = z <= depth[index] * (1 + depth_tolerance)
    index, colors = index[front], colors[front]
    count = torch.zeros(height * width, dtype=colors.dtype, device=colors.device).index_add_(
        0, index, torch.ones_like(index, dtype=colors.dtype))
    total = torch.zeros(height * width, colors.shape[-1], dtype=colors.dtype, device=colors.device)
    total.index_add_(0, index, colors)
    covered = count > 0
    image = total / count.clamp(min=1)[:, None]
    return Splat(image.view(height, width, -1), depth.view(height, width), covered.view(height, width))


def reproject(image: torch.Tensor, depth: torch.Tensor, source: Intrinsics, source_pose: torch.Tensor,
              target: Intrinsics, target_pose: torch.Tensor, *, supersample: int = 2,
              valid: torch.Tensor | None = None) -> Splat:
    """Render frame ``image`` [H, W, C] with its ``depth`` [H, W], taken by camera ``source`` at ``source_pose``
    (camera_to_world), as camera ``target`` at ``target_pose`` (camera_to_world) would see it."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if supersample > 1:
        # every source pixel becomes supersample^2 points with its colour, at its own (bilinear) depth
        image = image.repeat_interleave(supersample, 0).repeat_interleave(supersample, 1)
        depth = F.interpolate(depth[None, None], scale_factor=supersample, mode="bilinear",
                              align_corners=False)[0, 0]
        if valid is not None:
            valid = valid.repeat_interleave(supersample, 0).repeat_interleave(supersample, 1)
        source = source.scaled(supersample)
    points = unproject(depth, source, source_pose.to(depth.dtype))
    if valid is not None:
        valid = valid & torch.isfinite(depth)
    else:
        valid = torch.isfinite(depth)
    return splat(points, image.to(depth.dtype), target, invert_pose(target_pose.to(depth.dtype)), valid=valid)


def token_holes(covered: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Pool a pixel coverage mask [..., H, W] to a token grid of ``patch`` (ph, pw) pixels per token: a token is a
    hole when more than half of its pixels are (AnchorWeave's rule)."""
    ph, pw = patch
    height, width = covered.shape[-2:]
    if height % ph or width % pw:
        raise ValueError(f"a {height}x{width} mask does not tile into {ph}x{pw} tokens")
    hole = (~covered).to(torch.float32)
    pooled = hole.unflatten(-1, (width // pw, pw)).unflatten(-3, (height // ph, ph)).mean(dim=(-3, -1))
    return pooled > 0.5


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, peak: float = 255.0) -> float:
    """PSNR in dB of images [..., H, W, C] over the pixels of ``mask`` [..., H, W] (all if None); inf if equal."""
    diff = (a.to(torch.float64) - b.to(torch.float64)) ** 2
    if mask is not None:
        diff = diff[mask]
    if diff.numel() == 0:
        raise ValueError("psnr over an empty mask")
    mse = float(diff.mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak * peak / mse)).item()
