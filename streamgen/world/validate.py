"""Measure the oracle against ground truth: ``oracle_accuracy(num_clips)`` renders clips with switches (cut, smooth,
recall), reads them back and scores every attribute. The test suite and the numbers in ``streamgen.world`` both
come from here; ``python -m streamgen.world.validate`` prints them (including the resolution / shape-set
alternatives)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from .data import sample_segments
from .oracle import estimate_motion, read_frames
from .render import ClipSegment, render_clip
from .scenes import Attributes, BACKGROUNDS, DIRECTIONS, OBJECT_COLORS, RESOLUTION, SHAPES, SIZES, SPEEDS

__all__ = ["oracle_accuracy", "perturb"]


def _with_shape(attributes: Attributes, shape: str) -> Attributes:
    """``attributes`` with any renderable shape, including candidates outside SHAPES (skips validation: used only
    to measure alternative shape sets)."""
    out = object.__new__(Attributes)
    for name, value in attributes.as_dict().items():
        object.__setattr__(out, name, value)
    object.__setattr__(out, "shape", shape)
    return out


def perturb(frames: np.ndarray, *, noise: float = 0.0, blur: float = 0.0, seed: int = 0) -> np.ndarray:
    """Imperfect frames, like a generator's: Gaussian blur (sigma in px, wrap-around) then Gaussian pixel noise
    (sigma in RGB units), clipped to uint8."""
    import cv2

    x = frames.astype(np.float32)
    if blur > 0:
        pad = int(np.ceil(3 * blur))
        tiled = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="wrap")
        tiled = np.stack([cv2.GaussianBlur(f, (0, 0), blur) for f in tiled])
        x = tiled[:, pad:-pad, pad:-pad]
    if noise > 0:
        x = x + np.random.default_rng(seed).normal(0.0, noise, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def oracle_accuracy(num_clips: int = 3000, num_frames: int = 16, *, seed: int = 0, resolution: int = RESOLUTION,
                    shapes: Sequence[str] = SHAPES, switch_probs=(1 / 3, 1 / 3, 1 / 3),
                    min_segment: int = 5, noise: float = 0.0, blur: float = 0.0) -> dict:
    """Fraction of frames (segments, for motion) whose oracle reading equals the ground truth, per attribute.
    Frames inside a smooth transition are blends of two scenes and are not scored. ``shapes`` other than SHAPES
    (e.g. with "diamond") draw the clip's shapes from that set instead."""
    scale = resolution / RESOLUTION
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(num_clips):
        segments = sample_segments(seed * 1_000_000 + i, num_frames, split="train", switch_probs=switch_probs,
                                   min_segment=min_segment)
        if tuple(shapes) != SHAPES:  # a candidate shape set: same clips, each scene's shape redrawn from it
            swapped: dict = {}
            for seg in segments:
                if seg.scene not in swapped:
                    shape = shapes[int(rng.integers(len(shapes)))]
                    swapped[seg.scene] = replace(seg.scene, attributes=_with_shape(seg.scene.attributes, shape))
            segments = [ClipSegment(swapped[seg.scene], seg.frames, seg.transition) for seg in segments]
        clips.append(render_clip(segments, num_frames, seed=i, resolution=resolution))
    frames = np.concatenate([c.frames for c in clips])
    if noise or blur:
        frames = perturb(frames, noise=noise, blur=blur, seed=seed)
    t0 = time.process_time()
    readout = read_frames(frames, shapes=shapes)
    read_seconds = time.process_time() - t0

    hits = {k: [] for k in ("found", "background", "color", "shape", "shape_if_found", "size", "centroid",
                            "decoration_xy", "decoration_color", "direction", "speed")}
    centroid_err = []
    offset = 0
    for clip in clips:
        r = readout[slice(offset, offset + len(clip.frames))]
        offset += len(clip.frames)
        scored = ~clip.in_transition
        bg_ids = np.array([BACKGROUNDS.index(clip.segments[s].scene.attributes.background) for s in clip.segment])
        color_ids = np.array([OBJECT_COLORS.index(clip.segments[s].scene.attributes.color) for s in clip.segment])
        truth_shape = np.array([shapes.index(clip.segments[s].scene.attributes.shape) for s in clip.segment])
        size_ids = np.array([SIZES.index(clip.segments[s].scene.details.size) for s in clip.segment])
        deco = np.array([[round(v * scale) % resolution for v in clip.segments[s].scene.details.decoration]
                         for s in clip.segment])
        deco_color = np.array([OBJECT_COLORS.index(clip.segments[s].scene.details.decoration_color)
                               for s in clip.segment])
        err = np.abs((r.centroid - clip.centroid + resolution / 2) % resolution - resolution / 2).max(1)
        err = np.where(np.isnan(err), np.inf, err)
        hits["found"].append(r.found[scored])
        hits["background"].append((r.background == bg_ids)[scored])
        hits["color"].append((r.color == color_ids)[scored])
        hits["shape"].append((r.shape == truth_shape)[scored])
        hits["shape_if_found"].append((r.shape == truth_shape)[scored & r.found])
        hits["size"].append((r.size_class == size_ids)[scored])
        hits["centroid"].append((err < 0.5 * scale)[scored])
        centroid_err.append(err[scored & np.isfinite(err)])
        hits["decoration_xy"].append(np.all(r.decoration_xy == deco, 1)[scored])
        hits["decoration_color"].append((r.decoration_color == deco_color)[scored])
        for j, seg in enumerate(clip.segments):
            frames = np.flatnonzero((clip.segment == j) & scored)
            if len(frames) < 3:
                continue
            m = estimate_motion(r.centroid[frames], r.found[frames], resolution)
            a = seg.scene.attributes
            hits["direction"].append(np.array([m.direction == DIRECTIONS.index(a.direction)]))
            hits["speed"].append(np.array([m.speed == SPEEDS.index(a.speed)]))
    result = {k: float(np.concatenate(v).mean()) for k, v in hits.items()}
    counts = {k: int(sum(len(x) for x in v)) for k, v in hits.items()}
    errors = np.concatenate(centroid_err)
    return {"accuracy": result, "counts": counts, "clips": num_clips, "frames": int(len(readout)),
            "centroid_error_px": {"mean": float(errors.mean()), "p99": float(np.quantile(errors, 0.99))},
            "oracle_frames_per_cpu_s": len(readout) / max(read_seconds, 1e-9), "resolution": resolution,
            "shapes": list(shapes)}


def _main() -> None:  # pragma: no cover - prints the measurements quoted in streamgen.world
    import json

    for resolution, shapes in ((32, SHAPES), (16, SHAPES), (64, SHAPES), (32, SHAPES + ("diamond",)),
                               (16, SHAPES + ("diamond",))):
        result = oracle_accuracy(1000, 16, resolution=resolution, shapes=shapes)
        print(json.dumps({k: result[k] for k in ("resolution", "shapes", "accuracy", "centroid_error_px",
                                                 "oracle_frames_per_cpu_s")}))
    for noise, blur in ((8, 0), (16, 0), (0, 0.7), (12, 0.7), (24, 1.0)):
        result = oracle_accuracy(1000, 16, noise=noise, blur=blur)
        print(json.dumps({"noise": noise, "blur": blur, "accuracy": result["accuracy"]}))


if __name__ == "__main__":  # pragma: no cover
    _main()
