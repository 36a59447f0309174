"""The ShapeWorld renderer: scenes and prompt switches -> uint8 video [F, H, W, 3], plus per-frame ground truth.

Drawing (all frames of a clip at once, in numpy):
  1. the background colour fills the frame;
  2. the decoration, a pixel-aligned DECORATION_PX x DECORATION_PX dot, is painted (it never moves);
  3. the object is composited on top with anti-aliased coverage alpha = clip(0.5 - sdf, 0, 1), where sdf is the
     shape's signed distance (pixels) at each pixel centre. Anti-aliasing makes half-pixel motion visible and
     lets the oracle measure centroids and areas to a small fraction of a pixel.

The world is a torus: the object wraps around the borders, so the motion direction always matches the caption and
the object is always whole somewhere (it may be split across an edge). Its cross-axis coordinate never changes,
so the decoration, placed outside the band the object sweeps, is never touched by it.

Time: a scene's object position is ``start + velocity * (frames since the scene first appeared in the clip)``.

Transitions into a segment (the first segment's transition is ignored):
  cut     the new scene, instantly, starting at its own start position;
  smooth  over SMOOTH_FRAMES frames the new scene grows out of the old one: background, object colour, shape
          (alpha blend of the two shapes), size and decoration (old fades out, new fades in) cross-fade with
          weight w = (k + 1) / (SMOOTH_FRAMES + 1) at frame k of the segment, while the object glides (shortest
          way round the torus) from where the old object is onto the new scene's own trajectory; afterwards the
          frame is exactly the new scene;
  recall  an earlier scene of the clip comes back at once with the SAME details (size, decoration), and its object
          is where it would be had it kept moving all along (its clock never stopped). A recall segment given as
          Attributes brings back the most recent earlier scene with those attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..transitions import TRANSITIONS
from .scenes import COLORS, DECORATION_PX, RESOLUTION, SHAPES, Attributes, Scene, sample_scene

__all__ = ["TRANSITIONS", "SMOOTH_FRAMES", "ALL_SHAPES", "ClipSegment", "PlacedSegment", "Clip", "render_clip",
           "render_scene", "shape_alpha", "centroid_offset", "area_factor"]

SMOOTH_FRAMES = 4  # blended frames of a smooth transition
ALL_SHAPES: tuple[str, ...] = SHAPES + ("diamond",)  # "diamond" is only a candidate, measured and not used


# -----------------------------------------------------------------------------
# Shapes


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, size) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape whose bounding box is size x size, centred at 0."""
    h = np.asarray(size, dtype=np.float32) / 2
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - h
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - h
    if shape == "triangle":  # apex up, base at the bottom of the box
        r5 = np.float32(1 / np.sqrt(5))
        return np.maximum(dy - h, np.maximum((-2 * dx - dy - h) * r5, (2 * dx - dy - h) * r5))
    if shape == "cross":  # a plus sign, arms 0.4 of the box wide (>= 3 px at size 8: survives a 3x3 opening)
        ax, ay, a = np.abs(dx), np.abs(dy), 0.4 * h
        return np.minimum(np.maximum(ax - h, ay - a), np.maximum(ax - a, ay - h))
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - h) * np.float32(1 / np.sqrt(2))
    raise ValueError(f"unknown shape {shape!r}")


def shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, size) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] at offsets (dx, dy) from the bounding-box centre."""
    return np.clip(0.5 - _sdf(shape, dx, dy, size), 0.0, 1.0)


def centroid_offset(shape: str, size) -> tuple:
    """(dx, dy) from the bounding-box centre to the area centroid: (0, size / 6) for the apex-up triangle (its
    centroid lies a third of the way up from the base), (0, 0) otherwise. ``size`` may be an array."""
    size = np.asarray(size, dtype=np.float32)
    return (np.zeros_like(size), size / 6 if shape == "triangle" else np.zeros_like(size))


@lru_cache(maxsize=None)
def area_factor(shape: str) -> float:
    """Rendered area / size**2, measured on this renderer (sum of alpha over sub-pixel offsets and sizes)."""
    grid = np.arange(-16, 16, dtype=np.float32) + 0.5
    total, norm = 0.0, 0.0
    for size in (8.0, 10.0, 12.0, 16.0):
        for off in (0.0, 0.25, 0.5, 0.75):
            dx, dy = grid[None, :] - off, grid[:, None] - off / 2
            total += float(shape_alpha(shape, dx, dy, size).sum())
            norm += size * size
    return total / norm


# -----------------------------------------------------------------------------
# Clips


@dataclass(frozen=True)
class ClipSegment:
    """One part of a clip: a scene (or attributes, whose details are drawn from the clip seed), how many frames it
    plays (None: until num_frames) and how it is entered."""

    scene: Scene | Attributes
    frames: int | None = None
    transition: str = "cut"


@dataclass(frozen=True)
class PlacedSegment:
    scene: Scene
    start: int
    length: int
    transition: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Clip:
    """A rendered clip and its ground truth.

    frames           uint8 [F, H, W, 3]
    segments         the resolved segments (scenes with details, frame ranges, transitions)
    segment          int [F]: index of the segment playing at each frame
    in_transition    bool [F]: frame is a blend of two scenes (the first SMOOTH_FRAMES frames of a smooth segment)
    centroid         float [F, 2]: (x, y) of the object's area centroid, in pixels of this clip
    """

    frames: np.ndarray
    segments: list[PlacedSegment]
    segment: np.ndarray
    in_transition: np.ndarray
    centroid: np.ndarray

    @property
    def captions(self) -> list[str]:
        return [s.scene.caption for s in self.segments]

    def labels(self) -> np.ndarray:
        """int64 [F, 5]: class id of each attribute (ATTRIBUTE_NAMES order) of the scene playing at each frame."""
        ids = np.array([s.scene.attributes.ids() for s in self.segments], dtype=np.int64)
        return ids[self.segment]

    def scene_at(self, frame: int) -> Scene:
        return self.segments[int(self.segment[frame])].scene


def _resolve(segments: Sequence[ClipSegment | Scene | Attributes | tuple], num_frames: int | None,
             seed: int) -> list[PlacedSegment]:
    items = []
    for item in segments:
        if isinstance(item, (Scene, Attributes)):
            item = ClipSegment(item)
        elif isinstance(item, tuple):
            item = ClipSegment(*item)
        if not isinstance(item, ClipSegment):
            raise TypeError(f"expected ClipSegment, Scene, Attributes or tuple, got {type(item).__name__}")
        if item.transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {TRANSITIONS}, got {item.transition!r}")
        items.append(item)
    if not items:
        raise ValueError("render_clip needs at least one segment")
    placed: list[PlacedSegment] = []
    start = 0
    for i, item in enumerate(items):
        length = item.frames
        if length is None:
            if num_frames is None or i != len(items) - 1:
                raise ValueError("only the last segment may leave out its length, and then num_frames is required")
            length = num_frames - start
        if length < 1:
            raise ValueError(f"segment {i + 1}: length must be positive, got {length}")
        transition = item.transition if i > 0 else "cut"
        scene = item.scene
        if transition == "recall":
            earlier = [p.scene for p in placed if (p.scene == scene if isinstance(scene, Scene)
                                                   else p.scene.attributes == scene)]
            if not earlier:
                raise ValueError(f"segment {i + 1}: recall of a scene that did not play earlier in the clip")
            scene = earlier[-1]
        elif isinstance(scene, Attributes):
            scene = sample_scene(_mix(seed, i), scene)
        placed.append(PlacedSegment(scene, start, length, transition))
        start += length
    total = start if num_frames is None else num_frames
    if start < total:
        raise ValueError(f"segments cover {start} frames, fewer than num_frames={num_frames}")
    # Truncate to num_frames.
    out = [p if p.end <= total else PlacedSegment(p.scene, p.start, total - p.start, p.transition)
           for p in placed if p.start < total]
    return out


def _mix(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) & 0x7FFFFFFFFFFFFFFF


def _wrap(d, period):
    return (d + period / 2) % period - period / 2


def render_clip(segments: Sequence[ClipSegment | Scene | Attributes | tuple], num_frames: int | None = None,
                seed: int = 0, *, resolution: int = RESOLUTION) -> Clip:
    """Render a clip of ``segments`` (ClipSegment, or (scene, frames, transition) tuples; a bare Scene or Attributes
    plays until num_frames). Segments given as Attributes get their details from ``seed``. Deterministic."""
    placed = _resolve(segments, num_frames, seed)
    total = placed[-1].end
    scale = resolution / RESOLUTION
    first_seen: dict[Scene, int] = {}
    for p in placed:
        first_seen.setdefault(p.scene, p.start)

    frame_ids = np.arange(total)
    segment = np.zeros(total, dtype=np.int64)
    for j, p in enumerate(placed):
        segment[p.start:p.end] = j

    def pure(scene: Scene, frames: np.ndarray):
        """Per-frame state of a scene on its own: bbox centre [n, 2] (pixels of this clip), and constants."""
        t = (frames - first_seen[scene]).astype(np.float64)
        vx, vy = scene.attributes.velocity
        x = (scene.details.x + vx * t) % RESOLUTION
        y = (scene.details.y + vy * t) % RESOLUTION
        return np.stack([x, y], axis=1) * scale

    n_shapes = len(ALL_SHAPES)
    bg = np.zeros((total, 3), np.float32)
    obj = np.zeros((total, 3), np.float32)
    pos = np.zeros((total, 2), np.float64)
    size = np.zeros(total, np.float32)
    shape_w = np.zeros((total, n_shapes), np.float32)
    deco_xy = np.zeros((total, 2, 2), np.int64)  # two decoration slots: old (fading) and current
    deco_rgb = np.zeros((total, 2, 3), np.float32)
    deco_op = np.zeros((total, 2), np.float32)
    in_transition = np.zeros(total, bool)

    def rgb(name):
        return np.asarray(COLORS[name], np.float32)

    def deco_of(scene):
        d = scene.details.decoration
        return np.array([round(d[0] * scale), round(d[1] * scale)], np.int64) % resolution

    for j, p in enumerate(placed):
        sl = slice(p.start, p.end)
        s, a = p.scene, p.scene.attributes
        bg[sl], obj[sl] = rgb(a.background), rgb(a.color)
        pos[sl] = pure(s, frame_ids[sl])
        size[sl] = s.details.size * scale
        shape_w[sl, ALL_SHAPES.index(a.shape)] = 1.0
        deco_xy[sl, 1], deco_rgb[sl, 1], deco_op[sl, 1] = deco_of(s), rgb(s.details.decoration_color), 1.0
        if p.transition == "smooth" and j > 0:
            old = placed[j - 1].scene
            if old == s:
                continue
            k = np.arange(min(SMOOTH_FRAMES, p.length))
            f = p.start + k
            w = ((k + 1) / (SMOOTH_FRAMES + 1)).astype(np.float32)
            wc = w[:, None]
            in_transition[f] = True
            oa = old.attributes
            bg[f] = (1 - wc) * rgb(oa.background) + wc * rgb(a.background)
            obj[f] = (1 - wc) * rgb(oa.color) + wc * rgb(a.color)
            old_pos, new_pos = pure(old, f), pos[f]
            pos[f] = (old_pos + w[:, None].astype(np.float64) * _wrap(new_pos - old_pos, resolution)) % resolution
            size[f] = (1 - w) * old.details.size * scale + w * s.details.size * scale
            shape_w[f] = 0.0
            shape_w[f, ALL_SHAPES.index(oa.shape)] += 1 - w
            shape_w[f, ALL_SHAPES.index(a.shape)] += w
            deco_xy[f, 0], deco_rgb[f, 0] = deco_of(old), rgb(old.details.decoration_color)
            deco_op[f, 0], deco_op[f, 1] = 1 - w, w

    # Area centroid of the object: bbox centre + the shape's offset (weighted by the shape blend).
    offsets = np.stack([np.asarray(centroid_offset(sh, 1.0), np.float32) for sh in ALL_SHAPES])  # [S, 2] per px
    centroid = (pos + (shape_w @ offsets) * size[:, None]) % resolution

    frames = np.empty((total, resolution, resolution, 3), np.uint8)
    block = 256
    for b0 in range(0, total, block):
        b = slice(b0, min(total, b0 + block))
        frames[b] = _draw(resolution, bg[b], obj[b], pos[b], size[b], shape_w[b], deco_xy[b], deco_rgb[b],
                          deco_op[b])
    return Clip(frames, placed, segment, in_transition, centroid)


def _draw(res, bg, obj, pos, size, shape_w, deco_xy, deco_rgb, deco_op) -> np.ndarray:
    n = len(bg)
    centres = np.arange(res, dtype=np.float32) + 0.5
    dx = _wrap(centres[None, None, :] - pos[:, 0, None, None].astype(np.float32), res).astype(np.float32)
    dy = _wrap(centres[None, :, None] - pos[:, 1, None, None].astype(np.float32), res).astype(np.float32)
    s = size[:, None, None]
    alpha = np.zeros((n, res, res), np.float32)
    for k, shape in enumerate(ALL_SHAPES):
        w = shape_w[:, k]
        if np.any(w > 0):
            alpha += w[:, None, None] * shape_alpha(shape, dx, dy, s)
    # Colour under the object, in channel planes [n, 3, H, W]: the background with the decoration dots painted in.
    under = np.empty((n, 3, res, res), np.float32)
    under[:] = bg[:, :, None, None]
    dot = max(1, round(DECORATION_PX * res / RESOLUTION))
    idx = np.arange(res)
    for slot in range(deco_xy.shape[1]):
        op = deco_op[:, slot]
        if not np.any(op > 0):
            continue
        rows = ((idx[None, :] - deco_xy[:, slot, 1, None]) % res) < dot  # [n, H]
        cols = ((idx[None, :] - deco_xy[:, slot, 0, None]) % res) < dot  # [n, W]
        m = (rows[:, :, None] & cols[:, None, :]) * op[:, None, None]  # [n, H, W]
        under += m[:, None] * (deco_rgb[:, slot, :, None, None] - under)
    # Composite the object: under + alpha * (obj - under), rounded to uint8.
    img = obj[:, :, None, None] - under
    img *= alpha[:, None]
    img += under
    img += 0.5  # values lie in [0.5, 255.5): truncation rounds half up
    return np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))


def render_scene(scene: Scene, num_frames: int, *, resolution: int = RESOLUTION) -> np.ndarray:
    """uint8 [F, H, W, 3] of one scene on its own."""
    return render_clip([ClipSegment(scene, num_frames)], resolution=resolution).frames
