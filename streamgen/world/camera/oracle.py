"""The camera world's oracle: which map objects a frame should show and where (from the geometry), which ones it
does show (from the pixels), and how many of them match in place and colour.

``visible_objects``  projects every object's area centroid through the frame's camera; an object counts when its
                     whole footprint (bounding circle plus one pixel) lies inside the frame and no mover overlaps it.
``read_view``        background = the map's, or the nearest BACKGROUNDS colour to the per-channel median;
                     foreground = pixels more than FG_THRESHOLD RGB units from it; objects = its 8-connected
                     components of at least MIN_PIXELS pixels. Per component: colour = the OBJECT_COLORS entry whose
                     background-to-colour segment passes closest to the mean of its strongest half of pixels;
                     coverage alpha = each pixel's projection on that segment; centroid = alpha-weighted mean of
                     pixel centres.
``match_view``       an expected object is found when a detection of its colour lies within ``radius`` pixels of
                     its projected centroid.

On the reference renderer it finds every expected object (tests/test_camera_world.py, random flights with pans,
zooms from 0.5x to 2x and turns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ...geometry import Intrinsics, invert_pose, project
from ..oracle import FG_THRESHOLD, palette_distance
from ..render import centroid_offset
from ..scenes import BACKGROUNDS, COLORS, OBJECT_COLORS
from .map import WorldMap

__all__ = ["ExpectedObject", "Detection", "ViewMatch", "visible_objects", "read_view", "match_view", "MIN_PIXELS"]

MIN_PIXELS = 3  # a smaller foreground blob is noise (a size-8 object seen from 4x the default height is ~9 px)


@dataclass(frozen=True)
class ExpectedObject:
    index: int  # into WorldMap.objects
    u: float
    v: float
    color: str
    shape: str
    moving: bool


@dataclass(frozen=True)
class Detection:
    u: float
    v: float
    color: str
    area: float  # sum of coverage alpha, pixels
    touches_border: bool


@dataclass(frozen=True)
class ViewMatch:
    found: int
    expected: int

    @property
    def fraction(self) -> float:
        return self.found / self.expected if self.expected else 1.0


def visible_objects(world: WorldMap, pose: torch.Tensor, time: float, intrinsics: Intrinsics,
                    *, include_movers: bool = False) -> list[ExpectedObject]:
    """Objects wholly inside the frame taken from ``pose`` (camera_to_world) at world ``time``."""
    centres = world.positions(time)
    area_centres = centres.copy()
    for i, obj in enumerate(world.objects):  # the triangle's area centroid sits size/6 south of its box centre
        dx, dy = centroid_offset(obj.shape, obj.size)
        area_centres[i] += (float(dx), float(dy))
    points = torch.tensor(np.c_[area_centres, np.zeros(len(centres))], dtype=torch.float64)
    uv, z = project(points, intrinsics, invert_pose(pose.to(torch.float64)))
    out = []
    for i, obj in enumerate(world.objects):
        if obj.moving and not include_movers:
            continue
        if z[i] <= 0:
            continue
        radius = (obj.size / math.sqrt(2)) * intrinsics.fx / float(z[i]) + 1.0
        u, v = float(uv[i, 0]), float(uv[i, 1])
        if not (radius <= u <= intrinsics.width - radius and radius <= v <= intrinsics.height - radius):
            continue
        overlapped = any(
            other.moving and j != i and np.hypot(*(centres[j] - centres[i])) < (obj.size + other.size) / math.sqrt(2)
            for j, other in enumerate(world.objects))
        if overlapped and not obj.moving:
            continue
        out.append(ExpectedObject(i, u, v, obj.color, obj.shape, obj.moving))
    return out


def _background(frame: np.ndarray) -> str:
    median = np.median(frame.reshape(-1, 3).astype(np.float32), axis=0)
    ids, _ = palette_distance(median, BACKGROUNDS)
    return BACKGROUNDS[int(ids)]


def read_view(frame: np.ndarray, background: str | None = None) -> tuple[str, list[Detection]]:
    """The background name and every object blob of one uint8 frame [H, W, 3]. Pass ``background`` when it is
    known (the map's): the estimate fails when one object fills more than half the frame (zoomed far in)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"read_view expects one uint8 frame [H, W, 3], got {frame.shape}")
    if background is None:
        background = _background(frame)
    elif background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    bg = np.array(COLORS[background], np.float32)
    rgb = frame.astype(np.float32)
    distance = np.linalg.norm(rgb - bg, axis=-1)
    mask = (distance > FG_THRESHOLD).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    height, width = mask.shape
    palette = np.array([COLORS[c] for c in OBJECT_COLORS], np.float32)
    detections = []
    for label in range(1, count):
        rows, cols = np.nonzero(labels == label)
        if len(rows) < MIN_PIXELS:
            continue
        pixels = rgb[rows, cols]
        strong = pixels[distance[rows, cols] >= np.median(distance[rows, cols])].mean(0)
        # the palette colour whose bg -> colour segment passes closest to the blob's strongest pixels
        seg = palette - bg
        t = np.clip((strong - bg) @ seg.T / np.maximum((seg * seg).sum(1), 1.0), 0.25, 1.0)
        miss = np.linalg.norm((strong - bg)[None] - t[:, None] * seg, axis=1)
        miss[np.array([c == background for c in OBJECT_COLORS])] = np.inf
        color = int(np.argmin(miss))
        alpha = np.clip((pixels - bg) @ seg[color] / float(seg[color] @ seg[color]), 0.0, 1.0)
        total = float(alpha.sum())
        if total <= 0:
            continue
        u = float((alpha * (cols + 0.5)).sum() / total)
        v = float((alpha * (rows + 0.5)).sum() / total)
        border = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == height - 1 or cols.max() == width - 1)
        detections.append(Detection(u, v, OBJECT_COLORS[color], total, border))
    return background, detections


def match_view(detections: list[Detection], expected: list[ExpectedObject], radius: float = 1.5) -> ViewMatch:
    """How many expected objects have a detection of their colour within ``radius`` pixels (each detection is used
    once, nearest first)."""
    used: set[int] = set()
    found = 0
    for obj in expected:
        best, best_d = None, radius
        for k, det in enumerate(detections):
            if k in used or det.color != obj.color:
                continue
            d = math.hypot(det.u - obj.u, det.v - obj.v)
            if d <= best_d:
                best, best_d = k, d
        if best is not None:
            used.add(best)
            found += 1
    return ViewMatch(found, len(expected))
