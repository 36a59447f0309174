"""Local geometric memory (AnchorWeave's): past frames kept one by one with their pose and depth, never fused, a
bounded pool of them, and retrieval of the few that best cover the next chunk's cameras, rendered there as anchors
with hole masks.

Pool. At most ``capacity`` frames; the first frame stays (AnchorWeave always keeps it as an anchor). When full, the
frame whose view its two time neighbours together cover best goes (ties: the one whose farther neighbour still
covers most): a steady flight is thinned to evenly spaced views and a place that only one frame saw is kept. A
frame's redundancy is the share of its pixels' ground points inside the neighbours' frusta, recomputed only when
its neighbours change, so memory bytes are constant and the work per frame is bounded, however long the stream.

Depth. Given per frame, or by a ``depth_fn(image, pose, intrinsics) -> depth [H, W]``: the camera world's exact
depth, or a monocular estimator for real footage. An estimator's frames disagree in scale; ``align_depth`` (streamgen's,
off for AnchorWeave's behaviour) rescales each new frame's depth to the pool's: the median, over every pool frame's
points that land in the new view (on the coverage grid), of their depth seen from the new camera over the new
frame's own. The first frame's scale stays, so an error in it stays too, but one consistent scale for the whole
pool; matching the whole pool rather than the newest frame alone keeps that scale from drifting along a long stream
(the first frame is always in the pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .pinhole import Intrinsics, in_view, invert_pose, unproject
from .retrieval import greedy_coverage, most_recent, top_k
from .splat import Splat, reproject, splat

__all__ = ["MemoryFrame", "GeometricMemory", "Anchors", "RETRIEVAL_METHODS"]

RETRIEVAL_METHODS = ("coverage", "greedy", "fov", "recency")
EVICTIONS = ("redundancy", "oldest")
DepthFn = Callable[[torch.Tensor, torch.Tensor, Intrinsics], torch.Tensor]


@dataclass
class MemoryFrame:
    """One remembered frame: ``image`` [H, W, C] float, ``depth`` [H, W], its camera, its stream time, and an
    optional ``payload`` (what a weaving method needs of it: its latent, its K/V)."""

    image: torch.Tensor
    depth: torch.Tensor
    intrinsics: Intrinsics
    pose: torch.Tensor  # camera_to_world [4, 4] float64
    time: int
    payload: Any = None
    redundancy: tuple[float, float] = field(default=(0.0, 0.0), repr=False)  # (by both neighbours, by the weaker)

    def points(self) -> torch.Tensor:
        return unproject(self.depth.to(torch.float64), self.intrinsics, self.pose)

    def coarse_points(self, scale: int) -> torch.Tensor:
        """The points of the depth averaged over ``scale`` x ``scale`` pixel blocks (one per block), kept once."""
        cache = self.__dict__.setdefault("_coarse", {})
        if scale not in cache:
            depth = F.avg_pool2d(self.depth[None, None].to(torch.float64), scale)[0, 0]
            cache[scale] = unproject(depth, self.intrinsics.scaled(1 / scale), self.pose).reshape(-1, 3)
        return cache[scale]

    @property
    def nbytes(self) -> int:
        sizes = [self.image, self.depth, self.pose]
        if isinstance(self.payload, torch.Tensor):
            sizes.append(self.payload)
        return sum(t.numel() * t.element_size() for t in sizes)


@dataclass
class Anchors:
    """Retrieved frames rendered along the target cameras: ``images`` [K, T, H, W, C], ``covered`` bool
    [K, T, H, W] (False = hole), and which pool frames they came from."""

    frames: list[MemoryFrame]
    images: torch.Tensor
    covered: torch.Tensor


class GeometricMemory:
    """A bounded pool of :class:`MemoryFrame` with coverage-driven retrieval.

    ``capacity``   frames kept (>= 2: the first plus at least one more)
    ``depth_fn``   depth for frames added without one
    ``supersample`` points per source pixel side when rendering (fills the gaps of a zoom-in up to that factor)
    ``coverage_scale`` retrieval counts coverage on a grid this many times coarser than the pixels (one point per
    block of the memory frame's depth): a stream retrieves every chunk, and the pixel-exact coverage of a full pool
    costs about as much as the model's own chunk on a CPU; 1 is pixel-exact
    ``eviction``   "redundancy" (above) or "oldest" (a FIFO of the newest frames: no memory beyond them)
    ``align_depth`` rescale each added frame's depth to the newest frame's (above)
    """

    def __init__(self, capacity: int, *, depth_fn: DepthFn | None = None, keep_first: bool = True,
                 supersample: int = 2, coverage_scale: int = 1, eviction: str = "redundancy",
                 align_depth: bool = False):
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 frames, got {capacity}")
        if coverage_scale < 1:
            raise ValueError(f"coverage_scale must be >= 1, got {coverage_scale}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {eviction!r}")
        self.capacity, self.depth_fn, self.keep_first, self.supersample = capacity, depth_fn, keep_first, supersample
        self.coverage_scale, self.eviction, self.align_depth = coverage_scale, eviction, align_depth
        self.frames: list[MemoryFrame] = []

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.frames)

    # ---- writing -------------------------------------------------------------------------------------------------

    def add(self, image: torch.Tensor, pose: torch.Tensor, intrinsics: Intrinsics, time: int, *,
            depth: torch.Tensor | None = None, payload: Any = None) -> MemoryFrame:
        """Remember one frame ``image`` [H, W, C] seen from ``pose`` (camera_to_world [4, 4])."""
        if image.shape[:2] != (intrinsics.height, intrinsics.width):
            raise ValueError(f"image is {tuple(image.shape[:2])} (H, W) but the camera is "
                             f"{intrinsics.height}x{intrinsics.width}")
        if depth is None:
            if self.depth_fn is None:
                raise ValueError("a frame without depth needs the memory's depth_fn")
            depth = self.depth_fn(image, pose, intrinsics)
        if self.align_depth and self.frames:
            depth = depth * self.scale_to_pool(depth, pose, intrinsics)
        frame = MemoryFrame(image.to(torch.float32), depth.to(torch.float32), intrinsics,
                            pose.to(torch.float64), int(time), payload)
        self.frames.append(frame)
        if len(self.frames) >= 2:
            self._update_redundancy(len(self.frames) - 2)
        if len(self.frames) > self.capacity:
            self._evict()
        return frame

    def scale_to_pool(self, depth: torch.Tensor, pose: torch.Tensor, intrinsics: Intrinsics) -> float:
        """The factor that brings ``depth`` [H, W] of a frame seen from ``pose`` to the pool's scale: the median
        ratio of the pool frames' depths, rendered at this camera, to this one, where both have a surface (on the
        ``coverage_scale`` grid; 1 where nothing overlaps)."""
        scale = self.coverage_scale
        own = depth.to(torch.float64)
        if scale > 1:
            own = F.avg_pool2d(own[None, None], scale)[0, 0]
        target, view = intrinsics.scaled(1 / scale), invert_pose(pose.to(torch.float64))
        ratios = []
        for frame in self.frames:
            points = frame.coarse_points(scale) if scale > 1 else frame.points().reshape(-1, 3)
            seen = splat(points, torch.ones(len(points), 1, dtype=points.dtype), target, view)
            both = seen.covered & torch.isfinite(own) & (own > 0)
            if bool(both.any()):
                ratios.append(seen.depth[both] / own[both])
        return float(torch.cat(ratios).median()) if ratios else 1.0

    @staticmethod
    def _inside(frame: MemoryFrame, by: MemoryFrame) -> torch.Tensor:
        """Which of ``frame``'s pixels' points lie inside ``by``'s view (occlusion ignored), bool [H * W]."""
        return in_view(frame.points().reshape(-1, 3), by.intrinsics, by.pose)

    def _update_redundancy(self, index: int) -> None:
        frame = self.frames[index]
        inside = [self._inside(frame, self.frames[j]) for j in (index - 1, index + 1) if 0 <= j < len(self.frames)]
        if not inside:
            frame.redundancy = (0.0, 0.0)
            return
        both = torch.stack(inside).any(0).double().mean().item()
        frame.redundancy = (both, min(m.double().mean().item() for m in inside))

    def _evict(self) -> None:
        first = 1 if self.keep_first else 0
        # the newest frame has no later neighbour yet: it is never the one judged redundant
        candidates = range(first, len(self.frames) - 1)
        if self.eviction == "oldest":
            victim = first
        else:
            victim = max(candidates, key=lambda i: (*self.frames[i].redundancy, -i))
        del self.frames[victim]
        for j in (victim - 1, victim):
            if first <= j < len(self.frames) - 1:
                self._update_redundancy(j)

    # ---- reading -------------------------------------------------------------------------------------------------

    def _render(self, frame: MemoryFrame, intrinsics: Intrinsics, pose: torch.Tensor) -> Splat:
        return reproject(frame.image, frame.depth, frame.intrinsics, frame.pose, intrinsics, pose,
                         supersample=self.supersample)

    def coverage(self, poses: torch.Tensor, intrinsics: Intrinsics) -> torch.Tensor:
        """bool [N, T, H, W]: where each pool frame lands in each target camera (poses [T, 4, 4]), on a grid
        ``coverage_scale`` times coarser than the cameras' pixels."""
        scale = self.coverage_scale
        if scale == 1:
            return torch.stack([torch.stack([self._render(f, intrinsics, p).covered for p in poses])
                                for f in self.frames]) if self.frames else torch.zeros(
                0, len(poses), intrinsics.height, intrinsics.width, dtype=torch.bool)
        target = intrinsics.scaled(1 / scale)
        views = [invert_pose(p.to(torch.float64)) for p in poses]
        out = torch.zeros(len(self.frames), len(poses), target.height, target.width, dtype=torch.bool)
        for i, frame in enumerate(self.frames):
            points = frame.coarse_points(scale)
            ones = torch.ones(len(points), 1, dtype=points.dtype)
            for t, view in enumerate(views):
                out[i, t] = splat(points, ones, target, view).covered
        return out

    def fov_overlap(self, poses: torch.Tensor, intrinsics: Intrinsics) -> torch.Tensor:
        """float [N]: mean over targets of the share of each frame's points (one per coverage block) inside the
        target frustum."""
        scores = []
        for frame in self.frames:
            scale = self.coverage_scale
            points = frame.coarse_points(scale) if scale > 1 else frame.points().reshape(-1, 3)
            shares = [in_view(points, intrinsics, pose).double().mean() for pose in poses]
            scores.append(torch.stack(shares).mean())
        return torch.stack(scores) if scores else torch.zeros(0)

    def retrieve(self, poses: torch.Tensor, intrinsics: Intrinsics, k: int, method: str = "coverage") -> list[int]:
        """Pool indices of up to ``k`` frames for target cameras ``poses`` [T, 4, 4] (the first frame included
        when ``keep_first``). ``coverage``: greedy plus swap refinement (streamgen's); ``greedy``: AnchorWeave's
        plain greedy; ``fov``: frustum overlap (WorldMem-style); ``recency``: the newest."""
        always = [0] if self.keep_first and self.frames else []
        if method in ("coverage", "greedy"):
            return greedy_coverage(self.coverage(poses, intrinsics), k, always=always, refine=method == "coverage")
        if method == "fov":
            return top_k(self.fov_overlap(poses, intrinsics), k, always=always)
        if method == "recency":
            return most_recent(len(self.frames), k, always=always)
        raise ValueError(f"unknown retrieval method {method!r}; choose one of {', '.join(RETRIEVAL_METHODS)}")

    def anchors(self, indices: list[int], poses: torch.Tensor, intrinsics: Intrinsics) -> Anchors:
        """Render pool frames ``indices`` along the target cameras."""
        frames = [self.frames[i] for i in indices]
        renders = [[self._render(f, intrinsics, p) for p in poses] for f in frames]
        empty = (0, len(poses), intrinsics.height, intrinsics.width)
        images = torch.stack([torch.stack([r.image for r in row]) for row in renders]) if frames else torch.zeros(
            *empty, 3)
        covered = torch.stack([torch.stack([r.covered for r in row]) for row in renders]) if frames else torch.zeros(
            *empty, dtype=torch.bool)
        return Anchors(frames, images.to(torch.float32), covered)

    def composite(self, indices: list[int], poses: torch.Tensor, intrinsics: Intrinsics):
        """One anchor per target camera: pool frames ``indices`` rendered there, the first to cover a pixel winning
        (retrieval order). (images [T, H, W, C], covered bool [T, H, W]); uncovered pixels are 0."""
        shape = (len(poses), intrinsics.height, intrinsics.width)
        channels = self.frames[0].image.shape[-1] if self.frames else 3
        image, covered = torch.zeros(*shape, channels), torch.zeros(shape, dtype=torch.bool)
        if not indices:
            return image, covered
        anchors = self.anchors(indices, poses, intrinsics)
        for a in range(len(indices)):
            take = anchors.covered[a] & ~covered
            image[take] = anchors.images[a][take]
            covered |= take
        return image, covered

    def fused(self, poses: torch.Tensor, intrinsics: Intrinsics) -> list[Splat]:
        """The baseline AnchorWeave argues against: every pool frame's points fused into one global cloud, rendered
        into each target camera (with exact depth it matches the local renders; estimated depth smears it)."""
        points = torch.cat([f.points().reshape(-1, 3) for f in self.frames])
        colors = torch.cat([f.image.reshape(-1, f.image.shape[-1]).to(torch.float64) for f in self.frames])
        return [splat(points, colors, intrinsics, invert_pose(p.to(torch.float64))) for p in poses]
