"""``streamgen bench quality``: what a model generates, read back by the ShapeWorld oracle.

```py
>>> from streamgen.bench.quality import run_quality
>>> result = run_quality("pipelines/tiny-random", cache="rolling", quick=True)
>>> result["suites"]["single"]["accuracy"]["shape"]
>>> run_quality("reference", quick=True)["suites"]["switch"]["new"]["cut"]   # the ground-truth renderer: ~100%
```

Every video is a prompt schedule of held-out ShapeWorld scenes (``streamgen.world.split_of``) driven through the
pipeline's public API (``pipe.stream(schedule=..., num_frames=..., cache=..., generator=...)``); switches sit on
chunk boundaries. The same schedules and seeds can be played by the world's own renderer instead
(``"reference"``), which must score ~100%: that proves the harness.

Suites (sizes in :class:`Sizes`; ``quick=True`` shrinks them for tests):

single    one prompt per video, ``single_videos`` held-out (caption, seed) pairs: per-frame accuracy of
          background, object colour and shape; per-video direction and speed (median frame-to-frame motion);
          ``all`` = every attribute of the video right. Chance = a uniform guess.
switch    A -> B, B differing from A in background, colour, shape and direction; every other switch is a cut,
          the others smooth. For chunks 1, 2, 3 after the switch: fraction of frames whose background, colour and
          shape all match B (``new``) and all still match A (``old``, leftovers), each attribute on its own too
          (``new_color``, ``old_background``, ...), and whether the direction read over the chunk is B's. A
          smooth switch is a cross-fade of SMOOTH_FRAMES frames in the reference world, so
          the reference's own smooth chunk 1 is below 100% by design: it is the target profile, not an error.
long      one prompt, one stream of ``long_frames``; accuracy in the early and the late window (per-frame
          appearance; motion over sub-windows of ``motion_window`` frames); FPS of each window goes to ``timing``.
recall    A -> B -> A (recall): do the recalled A's unprompted details (size class, decoration colour, decoration
          position within 1 px) match the first A's, as measured by the oracle on the generated video? Chance:
          how often a fresh draw of the world's details for A's attributes would match the first A.
temporal  flicker on the single suite's first ``temporal_videos`` videos: frame-to-frame change of background pixels
          and of the measured background colour, of the object's colour and area, and label flip rates.
continuation
          can the model continue a scene it is shown? ``continuation_videos`` held-out scenes play
          ``continuation_context_chunks`` chunks of TRUE frames (the renderer's, given as ``video=`` context), then
          the model generates ``continuation_chunks`` chunks under the same prompt. Per generated chunk: object found,
          colour, shape, and the centroid's distance from where the true continuation has it (px at 32x32); over all
          generated frames: direction and speed. The next frame is fully determined by the context, so a model that
          has learned the world is at ~100% from the first chunk on; a blurry or frozen object shows here first.

The single suite also reports its per-chunk curve (``per_chunk``: found / colour / shape of chunk 0, 1, ...): how
fast a free run loses what the prompt asked for.

Output: a JSON-able dict. Everything outside ``timing`` is deterministic for the same inputs (same pipeline, preset,
seed, sizes); wall-clock numbers live under ``timing`` only. ``plots`` lists the PNGs written (per-frame agreement
around switches, and one per other suite).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...world.oracle import FrameReadout, estimate_motion, read_frames, read_segment
from ...world.render import SMOOTH_FRAMES, ClipSegment, render_clip
from ...world.scenes import (
    BACKGROUNDS, DECORATION_PX, DIRECTIONS, OBJECT_COLORS, RESOLUTION, SHAPES, SIZES, SPEEDS, Draws, Scene,
    _splitmix64, distinct_attributes, first_seeds, sample_details, sample_scene,
)

__all__ = ["SUITES", "Sizes", "FULL", "QUICK", "Layout", "run_quality", "run_quality_compare", "markdown_table",
           "summary_rows", "register_cli", "cmd_bench_quality", "strip_timing"]

SUITES = ("single", "switch", "long", "recall", "temporal", "continuation")  # append only: a suite's seeds follow
# its index
APPEARANCE = ("background", "color", "shape")
SWITCH_FIELDS = ("background", "color", "shape", "direction")  # a switch changes all of these
RECALL_CHANCE_DRAWS = 256


@dataclass(frozen=True)
class Sizes:
    """How much each suite generates. Lengths in chunks are chunk_frames latent frames each."""

    single_videos: int = 64
    single_chunks: int = 16
    switch_pairs: int = 16
    switch_chunks_before: int = 4
    switch_chunks_after: int = 4
    long_frames: int = 2200
    long_windows: tuple[tuple[int, int], ...] = ((0, 200), (2000, 2200))
    recall_triples: int = 16
    recall_chunks: int = 4
    temporal_videos: int = 16
    motion_window: int = 24
    continuation_videos: int = 32
    continuation_context_chunks: int = 3
    continuation_chunks: int = 8

    def __post_init__(self):
        if self.switch_chunks_after < 1 or self.switch_chunks_before < 1:
            raise ValueError("the switch suite needs at least one chunk before and after the switch")
        if self.temporal_videos > self.single_videos:
            object.__setattr__(self, "temporal_videos", self.single_videos)


FULL = Sizes()
QUICK = Sizes(single_videos=3, single_chunks=3, switch_pairs=2, switch_chunks_before=2, switch_chunks_after=3,
              long_frames=30, long_windows=((0, 9), (21, 30)), recall_triples=2, recall_chunks=2, temporal_videos=3,
              motion_window=9, continuation_videos=2, continuation_context_chunks=1, continuation_chunks=2)


@dataclass(frozen=True)
class Layout:
    """The generator's grid: latent frames per chunk, temporal compression, fps and (square) resolution."""

    chunk_frames: int = 3
    temporal: int = 1
    fps: float = 16.0
    resolution: int = RESOLUTION

    @classmethod
    def of(cls, pipe) -> "Layout":
        height, width = pipe.default_size()
        if height != width:
            raise ValueError(f"the ShapeWorld oracle reads square frames; this pipeline makes {height}x{width}")
        return cls(int(pipe.config.chunk_frames), int(pipe.vae_scale_factor_temporal), float(pipe.config.fps),
                   int(height))

    def video_start(self, latent: int) -> int:
        """First video frame of latent frame ``latent`` (a causal VAE keeps frame 0 alone in latent 0)."""
        return 0 if latent == 0 else 1 + self.temporal * (latent - 1)

    def chunk_latents(self, chunks: int) -> int:
        return chunks * self.chunk_frames

    def frames_for_latents(self, latents: int) -> int:
        return self.video_start(latents)  # = number of video frames of latents [0, latents)


@dataclass(frozen=True)
class Video:
    """One test video: (scene, chunks, transition) parts and the generator seed; ``context`` chunks of the first
    scene's TRUE frames come first, shown to the generator as context (they are not part of the result)."""

    parts: tuple[tuple[Scene, int, str], ...]
    seed: int
    context: int = 0

    def key(self) -> tuple:
        return tuple((s.caption, s.seed, n, t) for s, n, t in self.parts), self.seed, self.context

    def context_frames(self, layout: "Layout") -> int:
        return layout.frames_for_latents(layout.chunk_latents(self.context)) if self.context else 0

    def truth(self, layout: "Layout"):
        """The renderer's clip of the context followed by the parts (a :class:`~streamgen.world.render.Clip`)."""
        segment, _, starts = _frame_map(self, layout)
        skip = self.context_frames(layout)
        ends = [*starts[1:], len(segment)]
        lengths = [e - s + (skip if j == 0 else 0) for j, (s, e) in enumerate(zip(starts, ends))]
        parts = [ClipSegment(scene, n, mode) for (scene, _, mode), n in zip(self.parts, lengths)]
        return render_clip(parts, skip + len(segment), seed=self.seed, resolution=layout.resolution)


@dataclass
class Generated:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    segment: np.ndarray  # int [F]: which part plays
    chunk: np.ndarray  # int [F]: which chunk produced the frame
    chunk_seconds: list[float]
    seconds: float
    memory_bytes: list[int] = field(default_factory=list)  # the stream's memory after each chunk (pipelines only)


def _frame_map(video: Video, layout: Layout) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(segment [F], chunk [F], video start of each part) for a video on this layout."""
    latents = [layout.chunk_latents(n) for _, n, _ in video.parts]
    starts_latent = np.cumsum([0, *latents])
    total = layout.frames_for_latents(int(starts_latent[-1]))
    starts = [layout.video_start(int(s)) for s in starts_latent[:-1]]
    segment = np.zeros(total, np.int64)
    for j, s in enumerate(starts):
        segment[s:] = j
    n_chunks = int(starts_latent[-1]) // layout.chunk_frames
    chunk = np.zeros(total, np.int64)
    for c in range(n_chunks):
        chunk[layout.video_start(c * layout.chunk_frames):] = c
    return segment, chunk, starts


class ReferenceSource:
    """The ground-truth renderer playing the same schedules."""

    name = "reference"

    def __init__(self, layout: Layout = Layout()):
        self.layout = layout

    def generate(self, video: Video) -> Generated:
        segment, chunk, _ = _frame_map(video, self.layout)
        start = time.perf_counter()
        frames = video.truth(self.layout).frames[video.context_frames(self.layout):]
        seconds = time.perf_counter() - start
        n_chunks = int(chunk[-1]) + 1
        return Generated(frames, segment, chunk, [seconds / n_chunks] * n_chunks, seconds)


class PipelineSource:
    """A StreamingVideoPipeline streaming each schedule with one cache preset."""

    def __init__(self, pipe, cache: str | None = None):
        self.pipe = pipe
        self.layout = Layout.of(pipe)
        self.cache = cache or pipe.config.default_cache
        self.name = str(getattr(self.cache, "name", self.cache))

    def generate(self, video: Video) -> Generated:
        import torch

        from ...schedule import Schedule, Segment

        segment, chunk, starts = _frame_map(video, self.layout)
        schedule = Schedule(tuple(
            Segment(scene.caption, self.layout.chunk_latents(n), "latent_frames", transition=mode)
            for scene, n, mode in video.parts))
        generator = torch.Generator(self.pipe.transformer.device).manual_seed(video.seed)
        context = video.truth(self.layout).frames[: video.context_frames(self.layout)] if video.context else None
        stream = self.pipe.stream(schedule=schedule, num_frames=len(segment), cache=self.cache, generator=generator,
                                  video=context)
        planned = [self.layout.video_start(p.start) for p in stream.plan]
        if planned != starts:
            raise RuntimeError(f"the pipeline planned switches at video frames {planned}, expected {starts}")
        frames, seconds, memory = [], [], []
        start = last = time.perf_counter()
        for piece in stream:
            frames.append(piece.frames[0])
            memory.append(stream.memory_bytes)
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
        out = np.concatenate(frames)
        if out.shape[0] != len(segment):
            raise RuntimeError(f"the stream gave {out.shape[0]} frames, expected {len(segment)}")
        return Generated(out, segment, chunk, seconds, time.perf_counter() - start, memory)


# -----------------------------------------------------------------------------
# Helpers


def _seed(base: int, *key: int) -> int:
    return Draws(base, *key).next64() >> 1


def _suite_id(name: str) -> int:
    return SUITES.index(name) + 1


def _scenes(seed: int, suite: str, count: int) -> list[Scene]:
    start = _splitmix64(seed * 16 + _suite_id(suite)) >> 36  # a 28-bit starting point per (seed, suite)
    return [sample_scene(s) for s in first_seeds("heldout", count, start)]


def _partner(a: Scene, seed: int, suite: str, i: int) -> Scene:
    """A held-out scene for the second prompt, differing from ``a`` in every SWITCH_FIELDS attribute."""
    attributes = distinct_attributes(a.attributes, Draws(seed, _suite_id(suite), i, 7), SWITCH_FIELDS)
    start = _splitmix64(_seed(seed, _suite_id(suite), i, 8)) >> 36
    return sample_scene(first_seeds("heldout", 1, start)[0], attributes)


def _ids(scene: Scene) -> dict[str, int]:
    a = scene.attributes
    return {"background": BACKGROUNDS.index(a.background), "color": OBJECT_COLORS.index(a.color),
            "shape": SHAPES.index(a.shape), "direction": DIRECTIONS.index(a.direction),
            "speed": SPEEDS.index(a.speed)}


def _appearance_hits(r: FrameReadout, scene: Scene) -> dict[str, np.ndarray]:
    ids = _ids(scene)
    hits = {name: getattr(r, name) == ids[name] for name in APPEARANCE}
    hits["all"] = hits["background"] & hits["color"] & hits["shape"]
    return hits


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


class _Runner:
    def __init__(self, source, seed: int, sizes: Sizes, out_dir: Path | None, label: str, log: Callable):
        self.source, self.seed, self.sizes, self.out_dir = source, seed, sizes, out_dir
        self.label, self.log = label, log
        self.layout: Layout = source.layout
        self._videos: dict[tuple, tuple[Generated, FrameReadout]] = {}
        self.plots: dict[str, str] = {}
        self.timing: dict[str, Any] = {}

    def play(self, video: Video) -> tuple[Generated, FrameReadout]:
        key = video.key()
        if key not in self._videos:
            generated = self.source.generate(video)
            self._videos[key] = (generated, read_frames(generated.frames))
        return self._videos[key]

    def plot_path(self, suite: str) -> Path | None:
        if self.out_dir is None:
            return None
        name = f"quality_{self.label}_{suite}.png".replace("/", "_")
        self.plots[suite] = name
        return self.out_dir / name

    def timed(self, suite: str, fn):
        before = {k: v[0].seconds for k, v in self._videos.items()}
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        new = [v[0] for k, v in self._videos.items() if k not in before]
        frames = sum(len(g.frames) for g in new)
        gen_seconds = sum(g.seconds for g in new)
        self.timing[suite] = {"seconds": round(wall, 3), "generated_frames": frames,
                              "generation_fps": round(frames / gen_seconds, 2) if gen_seconds > 0 else None}
        return result

    # ---- suites ---------------------------------------------------------------------------------------------
    def single_videos(self) -> list[Video]:
        s = self.sizes
        return [Video(((scene, s.single_chunks, "cut"),), _seed(self.seed, _suite_id("single"), i))
                for i, scene in enumerate(_scenes(self.seed, "single", s.single_videos))]

    def single(self) -> dict:
        per_attr = {name: [] for name in (*APPEARANCE, "direction", "speed", "all")}
        found, curves, chunk_curves = [], [], []
        for video in self.single_videos():
            generated, r = self.play(video)
            scene = video.parts[0][0]
            ids = _ids(scene)
            hits = _appearance_hits(r, scene)
            chunk_curves.append(_per_chunk({"found": r.found, "color": hits["color"], "shape": hits["shape"]},
                                           generated.chunk))
            for name in APPEARANCE:
                per_attr[name].append(float(hits[name].mean()))
            motion = estimate_motion(r.centroid, r.found, r.resolution)
            per_attr["direction"].append(float(motion.direction == ids["direction"]))
            per_attr["speed"].append(float(motion.speed == ids["speed"]))
            seg = read_segment(r)
            per_attr["all"].append(float(seg.ids() == tuple(ids[n] for n in ("background", "color", "shape",
                                                                                 "direction", "speed"))))
            found.append(float(r.found.mean()))
            curves.append(hits["all"].astype(float))
        chance = {"background": 1 / len(BACKGROUNDS), "color": 1 / len(OBJECT_COLORS), "shape": 1 / len(SHAPES),
                  "direction": 1 / len(DIRECTIONS), "speed": 1 / len(SPEEDS)}
        chance["all"] = float(np.prod(list(chance.values())))
        accuracy = {k: _r(_mean(v)) for k, v in per_attr.items()}
        curve = np.mean(np.stack(curves), 0)
        path = self.plot_path("single")
        if path is not None:
            from ..quality_plot import line_chart

            line_chart(path, {"bg+colour+shape": (np.arange(len(curve)), curve)},
                       title=f"single [{self.label}]: per-frame agreement with the prompt",
                       xlabel="frame", ylabel="fraction of videos")
        return {"videos": len(curves), "frames_per_video": len(curve), "accuracy": accuracy,
                "chance": {k: _r(v) for k, v in chance.items()}, "found": _r(_mean(found)),
                "per_frame_all": [_r(v, 3) for v in curve], "per_chunk": _mean_curves(chunk_curves)}

    def switch(self) -> dict:
        s, layout = self.sizes, self.layout
        scenes = _scenes(self.seed, "switch", s.switch_pairs)
        chunks_reported = min(3, s.switch_chunks_after)
        records = {"cut": [], "smooth": []}
        offsets_curves = {"cut": [], "smooth": []}
        for i, a in enumerate(scenes):
            mode = "cut" if i % 2 == 0 else "smooth"
            b = _partner(a, self.seed, "switch", i)
            video = Video(((a, s.switch_chunks_before, "cut"), (b, s.switch_chunks_after, mode)),
                          _seed(self.seed, _suite_id("switch"), i))
            generated, r = self.play(video)
            new, old = _appearance_hits(r, b), _appearance_hits(r, a)
            switch_frame = int(np.flatnonzero(generated.segment == 1)[0])
            first_chunk = int(generated.chunk[switch_frame])
            rec = {}
            for k in range(1, chunks_reported + 1):
                frames = np.flatnonzero(generated.chunk == first_chunk + k - 1)
                m = estimate_motion(r.centroid[frames], r.found[frames], r.resolution)
                rec[k] = {"new": float(new["all"][frames].mean()), "old": float(old["all"][frames].mean()),
                          **{f"new_{n}": float(new[n][frames].mean()) for n in APPEARANCE},
                          **{f"old_{n}": float(old[n][frames].mean()) for n in APPEARANCE},
                          "new_direction": float(m.direction == _ids(b)["direction"])}
            before = np.flatnonzero(generated.chunk == first_chunk - 1)
            rec[0] = {"old": float(old["all"][before].mean())}
            records[mode].append(rec)
            window = np.arange(switch_frame - 2 * (switch_frame - int(before[0])), len(r))
            window = window[window >= 0]
            offsets_curves[mode].append((window - switch_frame, new["all"][window], old["all"][window]))

        def summarise(recs):
            if not recs:
                return None
            out = {"switches": len(recs), "old_before": _r(_mean([x[0]["old"] for x in recs]))}
            for key in ("new", "old", "new_background", "new_color", "new_shape", "new_direction",
                        "old_background", "old_color", "old_shape"):
                out[key] = {f"chunk{k}": _r(_mean([x[k][key] for x in recs])) for k in range(1, chunks_reported + 1)}
            return out

        result = {mode: summarise(recs) for mode, recs in records.items()}
        both = records["cut"] + records["smooth"]
        result["all"] = summarise(both)
        result = {"smooth_frames_in_reference": SMOOTH_FRAMES, **result}
        path = self.plot_path("switch")
        if path is not None:
            from ..quality_plot import line_chart

            series = {}
            for mode, curves in offsets_curves.items():
                if not curves:
                    continue
                n = min(len(c[0]) for c in curves)
                xs = curves[0][0][:n]
                series[f"{mode}: new"] = (xs, np.mean([c[1][:n] for c in curves], 0))
                series[f"{mode}: old"] = (xs, np.mean([c[2][:n] for c in curves], 0))
            line_chart(path, series, title=f"switch [{self.label}]: frames matching the new / old prompt",
                       xlabel="frames after the switch", ylabel="fraction of switches", markers=[0])
        return result

    def long(self) -> dict:
        s, layout = self.sizes, self.layout
        chunks = max(1, math.ceil(_latent_for_frame(layout, s.long_frames) / layout.chunk_frames))
        scene = _scenes(self.seed, "long", 1)[0]
        video = Video(((scene, chunks, "cut"),), _seed(self.seed, _suite_id("long")))
        generated, r = self.play(video)
        hits = _appearance_hits(r, scene)
        ids = _ids(scene)
        windows, fps, series = {}, {}, {}
        for a, b in s.long_windows:
            a, b = max(0, a), min(b, len(r))
            name = f"frames_{a}_{b}"
            frames = np.arange(a, b)
            motion_dir, motion_speed = [], []
            for w0 in range(a, b - 2, s.motion_window):
                w = np.arange(w0, min(b, w0 + s.motion_window))
                m = estimate_motion(r.centroid[w], r.found[w], r.resolution)
                motion_dir.append(float(m.direction == ids["direction"]))
                motion_speed.append(float(m.speed == ids["speed"]))
            windows[name] = {
                **{n: _r(hits[n][frames].mean()) for n in (*APPEARANCE, "all")},
                "direction": _r(_mean(motion_dir)), "speed": _r(_mean(motion_speed)),
                "found": _r(r.found[frames].mean()),
            }
            chunks = np.unique(generated.chunk[frames])
            if generated.memory_bytes:  # the most the stream held in the window: equal windows = bounded memory
                windows[name]["memory_bytes"] = max(generated.memory_bytes[c] for c in chunks)
            chunk_frames = sum(int((generated.chunk == c).sum()) for c in chunks)
            seconds = sum(generated.chunk_seconds[c] for c in chunks)
            fps[name] = round(chunk_frames / seconds, 2) if seconds > 0 else None
            series[f"frames {a}-{b}"] = (frames - a, _smooth(hits["all"][frames].astype(float), 9))
        self.timing["long_fps"] = fps
        path = self.plot_path("long")
        if path is not None:
            from ..quality_plot import line_chart

            line_chart(path, series, title=f"long [{self.label}]: per-frame agreement (9-frame mean)",
                       xlabel="frame within window", ylabel="fraction")
        return {"frames": len(r), "windows": windows}

    def recall(self) -> dict:
        s = self.sizes
        scenes = _scenes(self.seed, "recall", s.recall_triples)
        tol = max(1, round(self.layout.resolution / RESOLUTION))
        matches = {k: [] for k in ("size", "decoration_color", "decoration_position", "all_details")}
        chances = {k: [] for k in matches}
        prompted = []
        for i, a in enumerate(scenes):
            b = _partner(a, self.seed, "recall", i)
            video = Video(((a, s.recall_chunks, "cut"), (b, s.recall_chunks, "cut"), (a, s.recall_chunks, "recall")),
                          _seed(self.seed, _suite_id("recall"), i))
            generated, r = self.play(video)
            first = np.flatnonzero(generated.segment == 0)
            again = np.flatnonzero(generated.segment == 2)
            s1 = read_segment(r, int(first[0]), int(first[-1]) + 1)
            s2 = read_segment(r, int(again[0]), int(again[-1]) + 1)
            m = _detail_match(s1.size_class, s1.decoration_color, s1.decoration_xy,
                              s2.size_class, s2.decoration_color, s2.decoration_xy, r.resolution, tol)
            for k in matches:
                matches[k].append(m[k])
            ids = _ids(a)
            prompted.append(float(s2.ids() == tuple(ids[n] for n in ("background", "color", "shape", "direction",
                                                                      "speed"))))
            # chance: fresh details for A's attributes vs what the first A showed
            draws = [sample_details(a.attributes, Draws(_seed(self.seed, 99, i), j))
                     for j in range(RECALL_CHANCE_DRAWS)]
            scale = r.resolution / RESOLUTION
            fresh = [_detail_match(s1.size_class, s1.decoration_color, s1.decoration_xy,
                                   SIZES.index(d.size), OBJECT_COLORS.index(d.decoration_color),
                                   (round(d.decoration[0] * scale) % r.resolution,
                                    round(d.decoration[1] * scale) % r.resolution), r.resolution, tol)
                     for d in draws]
            for k in chances:
                chances[k].append(float(np.mean([f[k] for f in fresh])))
        result = {"triples": len(scenes), "match": {k: _r(_mean(v)) for k, v in matches.items()},
                  "chance": {k: _r(_mean(v)) for k, v in chances.items()},
                  "recalled_prompt_all_attributes": _r(_mean(prompted)), "position_tolerance_px": tol}
        path = self.plot_path("recall")
        if path is not None:
            from ..quality_plot import bar_chart

            short = {"size": "size", "decoration_color": "deco colour", "decoration_position": "deco position",
                     "all_details": "all details"}
            bar_chart(path, {short[k]: {"match": result["match"][k]} for k in matches},
                      chance={short[k]: v for k, v in result["chance"].items()},
                      title=f"recall [{self.label}]: recalled A's details = first A's",
                      ylabel="fraction of recalls")
        return result

    def temporal(self) -> dict:
        videos = self.single_videos()[: self.sizes.temporal_videos]
        stats = {k: [] for k in ("background_pixel_flicker", "background_color_flicker", "object_color_flicker",
                                 "object_area_flicker", "background_flips", "color_flips", "shape_flips")}
        curves_bg, curves_obj = [], []
        for video in videos:
            generated, r = self.play(video)
            x = generated.frames.astype(np.float32)
            calm = ~r.object_mask & ~_dot_masks(r)  # background: neither object (with rim) nor decoration
            both = calm[1:] & calm[:-1]
            delta = np.abs(x[1:] - x[:-1]).mean(-1)
            bg_pix = (delta * both).sum((1, 2)) / np.maximum(both.sum((1, 2)), 1)
            stats["background_pixel_flicker"].append(float(bg_pix.mean()))
            stats["background_color_flicker"].append(
                float(np.linalg.norm(np.diff(r.background_rgb, axis=0), axis=1).mean()))
            pair = r.found[1:] & r.found[:-1]
            obj = np.linalg.norm(np.diff(r.color_rgb, axis=0), axis=1)
            area = np.abs(np.diff(r.area)) / np.maximum(0.5 * (r.area[1:] + r.area[:-1]), 1e-6)
            stats["object_color_flicker"].append(float(obj[pair].mean()) if pair.any() else None)
            stats["object_area_flicker"].append(float(area[pair].mean()) if pair.any() else None)
            for name in ("background", "color", "shape"):
                labels = getattr(r, name)
                stats[f"{name}_flips"].append(float((labels[1:] != labels[:-1]).mean()))
            curves_bg.append(bg_pix)
            curves_obj.append(np.where(pair, obj, np.nan))
        result = {"videos": len(videos), **{k: _r(_mean(v)) for k, v in stats.items()},
                  "units": {"background_pixel_flicker": "mean |RGB change| of pixels that are neither object nor "
                                                        "decoration in both frames, 0-255",
                            "background_color_flicker": "RGB distance between consecutive measured backgrounds",
                            "object_color_flicker": "RGB distance between consecutive measured object colours",
                            "object_area_flicker": "relative change of the object's area",
                            "background_flips": "fraction of frame pairs whose class changes"}}
        path = self.plot_path("temporal")
        if path is not None:
            from ..quality_plot import line_chart

            n = min(len(c) for c in curves_bg)
            xs = np.arange(1, n + 1)
            line_chart(path, {"background pixels": (xs, np.mean([c[:n] for c in curves_bg], 0)),
                              "object colour": (xs, np.nanmean([c[:n] for c in curves_obj], 0)
                                                if np.isfinite(np.concatenate(curves_obj)).any() else
                                                np.full(n, np.nan))},
                       title=f"temporal [{self.label}]: frame-to-frame change", xlabel="frame",
                       ylabel="RGB units", y_range=None)
        return result


    def continuation(self) -> dict:
        s, layout = self.sizes, self.layout
        per_chunk, motion = [], {"direction": [], "speed": []}
        for i, scene in enumerate(_scenes(self.seed, "continuation", s.continuation_videos)):
            video = Video(((scene, s.continuation_chunks, "cut"),), _seed(self.seed, _suite_id("continuation"), i),
                          context=s.continuation_context_chunks)
            generated, r = self.play(video)
            truth = video.truth(layout)
            true_xy = truth.centroid[video.context_frames(layout):]
            hits = _appearance_hits(r, scene)
            scale = RESOLUTION / r.resolution
            d = np.abs(_wrap_delta(r.centroid - true_xy, r.resolution))
            error = np.where(r.found, np.hypot(d[:, 0], d[:, 1]) * scale, np.nan)
            per_chunk.append(_per_chunk({"found": r.found, "color": hits["color"], "shape": hits["shape"],
                                         "centroid_error_px": error}, generated.chunk))
            m = estimate_motion(r.centroid, r.found, r.resolution)
            ids = _ids(scene)
            motion["direction"].append(float(m.direction == ids["direction"]))
            motion["speed"].append(float(m.speed == ids["speed"]))
        curves = _mean_curves(per_chunk)
        first = {k: v[0] for k, v in curves.items()}
        path = self.plot_path("continuation")
        if path is not None:
            from ..quality_plot import line_chart

            xs = np.arange(len(curves["found"]))
            line_chart(path, {k: (xs, np.array([np.nan if v is None else v for v in curves[k]], float))
                              for k in ("found", "color", "shape")},
                       title=f"continuation [{self.label}]: after true frames, per generated chunk",
                       xlabel="generated chunk", ylabel="fraction of frames")
        return {"videos": len(per_chunk), "context_frames": layout.frames_for_latents(
                    layout.chunk_latents(s.continuation_context_chunks)),
                "generated_frames": layout.frames_for_latents(layout.chunk_latents(s.continuation_chunks)),
                "first_chunk": first, "per_chunk": curves,
                **{k: _r(_mean(v)) for k, v in motion.items()}}


def _per_chunk(values: dict[str, np.ndarray], chunk: np.ndarray) -> dict[str, list[float]]:
    """Mean of each per-frame array over the frames of each chunk (NaN-aware: a chunk without a value gives NaN)."""
    out = {}
    for name, v in values.items():
        v = np.asarray(v, np.float64)
        out[name] = [float(np.nanmean(v[chunk == c])) if np.isfinite(v[chunk == c]).any() else float("nan")
                     for c in range(int(chunk.max()) + 1)]
    return out


def _mean_curves(curves: list[dict[str, list[float]]]) -> dict[str, list[float | None]]:
    """Average per-chunk curves over videos, ignoring NaNs (None where no video has a value)."""
    return {name: [_r(_mean([c[name][k] for c in curves])) for k in range(len(curves[0][name]))]
            for name in curves[0]} if curves else {}


def _wrap_delta(d: np.ndarray, period: int) -> np.ndarray:
    return (d + period / 2) % period - period / 2


def _dot_masks(r: FrameReadout, margin: int = 1) -> np.ndarray:
    """bool [F, H, W]: each frame's decoration dot (as the oracle found it) plus ``margin`` pixels around it."""
    res = r.resolution
    dot = max(1, round(DECORATION_PX * res / RESOLUTION))
    idx = np.arange(res)
    x0 = r.decoration_xy[:, 0, None] - margin
    y0 = r.decoration_xy[:, 1, None] - margin
    cols = ((idx[None, :] - x0) % res) < dot + 2 * margin
    rows = ((idx[None, :] - y0) % res) < dot + 2 * margin
    return rows[:, :, None] & cols[:, None, :] & r.decoration_found[:, None, None]


def _latent_for_frame(layout: Layout, frames: int) -> int:
    """Latent frames needed for at least ``frames`` video frames."""
    latent = 1
    while layout.frames_for_latents(latent) < frames:
        latent += 1
    return latent


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) == 0:
        return values
    kernel = np.ones(min(width, len(values))) / min(width, len(values))
    return np.convolve(values, kernel, mode="same")


def _detail_match(size1, color1, xy1, size2, color2, xy2, resolution: int, tol: int) -> dict[str, float]:
    size = float(size1 >= 0 and size1 == size2)
    color = float(color1 >= 0 and color1 == color2)
    if xy1 is None or xy2 is None:
        position = 0.0
    else:
        d = [abs((p - q + resolution // 2) % resolution - resolution // 2) for p, q in zip(xy1, xy2)]
        position = float(max(d) <= tol)
    return {"size": size, "decoration_color": color, "decoration_position": position,
            "all_details": float(size and color and position)}


# -----------------------------------------------------------------------------
# Entry points


def _source_for(pipeline, cache, device, layout):
    if isinstance(pipeline, str) and pipeline == "reference":
        return ReferenceSource(layout or Layout())
    if isinstance(pipeline, (str, Path)):
        from ...pipeline import load_pipeline

        pipeline = load_pipeline(pipeline, device)
    return PipelineSource(pipeline, cache)


def run_quality(pipeline, suites: Sequence[str] = SUITES, cache: str | None = None, seed: int = 0, *,
                quick: bool = False, sizes: Sizes | None = None, out_dir: str | Path | None = None,
                device: str = "cpu", layout: Layout | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run the quality suites on ``pipeline`` (a pipeline folder, a StreamingVideoPipeline, or ``"reference"`` for
    the ground-truth renderer on ``layout``) with cache preset ``cache``; write PNG plots to ``out_dir`` if given."""
    suites = _check_suites(suites)
    sizes = sizes or (QUICK if quick else FULL)
    source = _source_for(pipeline, cache, device, layout)
    label = source.name
    out = Path(out_dir) if out_dir is not None else None
    runner = _Runner(source, int(seed), sizes, out, label, log or (lambda _: None))
    start = time.perf_counter()
    results = {}
    for suite in suites:
        runner.log(f"[{label}] {suite} ...")
        results[suite] = runner.timed(suite, getattr(runner, suite))
    runner.timing["total_seconds"] = round(time.perf_counter() - start, 3)
    pipe_name = "reference" if isinstance(source, ReferenceSource) else str(getattr(source.pipe, "name_or_path", ""))
    return {
        "benchmark": "quality",
        "source": "reference" if isinstance(source, ReferenceSource) else "pipeline",
        "pipeline": pipe_name,
        "cache": None if isinstance(source, ReferenceSource) else source.name,
        "seed": int(seed),
        "quick": bool(quick),
        "sizes": asdict(sizes),
        "layout": asdict(source.layout),
        "suites": results,
        "plots": dict(runner.plots),
        "timing": runner.timing,
    }


def run_quality_compare(pipeline, presets: Sequence[str], suites: Sequence[str] = SUITES, seed: int = 0, *,
                        reference: bool = False, quick: bool = False, sizes: Sizes | None = None,
                        out_dir: str | Path | None = None, device: str = "cpu",
                        log: Callable[[str], None] | None = None) -> dict:
    """The same suites and seeds on several cache presets (and the reference renderer if ``reference``); one
    markdown table with a column per run."""
    from ...pipeline import StreamingVideoPipeline

    if isinstance(pipeline, (str, Path)):
        source = _source_for(pipeline, None, device, None)
        pipe = source.pipe
    else:
        pipe = pipeline
    if not isinstance(pipe, StreamingVideoPipeline):
        raise ValueError("--compare needs a pipeline")
    runs = {}
    for preset in presets:
        runs[preset] = run_quality(pipe, suites, preset, seed, quick=quick, sizes=sizes, out_dir=out_dir,
                                   log=log)
    if reference:
        runs["reference"] = run_quality("reference", suites, None, seed, quick=quick, sizes=sizes, out_dir=out_dir,
                                        layout=Layout.of(pipe), log=log)
    return {"benchmark": "quality-compare", "runs": runs, "table": markdown_table(runs)}


def _check_suites(suites) -> tuple[str, ...]:
    if isinstance(suites, str):
        suites = [s.strip() for s in suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    return tuple(suites)


def strip_timing(result: dict) -> dict:
    """The result without wall-clock numbers: what must be identical between two runs of the same inputs."""
    if result.get("benchmark") == "quality-compare":
        return {**result, "runs": {k: strip_timing(v) for k, v in result["runs"].items()}, "table": None}
    return {k: v for k, v in result.items() if k != "timing"}


# -----------------------------------------------------------------------------
# Reporting


def summary_rows(result: dict) -> list[tuple[str, float | None, str]]:
    """Headline numbers of one run: (metric, value, kind) with kind "pct", "num", "fps" or "mb"."""
    rows: list[tuple[str, float | None, str]] = []
    suites = result["suites"]
    if "single" in suites:
        acc = suites["single"]["accuracy"]
        for name in ("background", "color", "shape", "direction", "speed", "all"):
            rows.append((f"single: {name} (chance {suites['single']['chance'][name]:.1%})", acc[name], "pct"))
    if "switch" in suites:
        sw = suites["switch"]
        for mode in ("cut", "smooth"):
            if sw.get(mode) is None:
                continue
            for key, what in (("new", "new prompt"), ("old", "old leftovers")):
                for chunk, value in sw[mode][key].items():
                    rows.append((f"switch {mode}: {what}, {chunk.replace('chunk', 'chunk ')}", value, "pct"))
            # One attribute at a time, first chunk: a weak model rarely gets all three, so these still separate runs.
            for key, what in (("new_color", "new colour"), ("old_color", "old colour left"),
                              ("old_background", "old background left")):
                if key in sw[mode]:
                    rows.append((f"switch {mode}: {what}, chunk 1", sw[mode][key]["chunk1"], "pct"))
    if "long" in suites:
        for name, w in suites["long"]["windows"].items():
            span = name.replace("frames_", "").replace("_", "-")
            rows.append((f"long {span}: bg+colour+shape per frame", w["all"], "pct"))
            rows.append((f"long {span}: direction", w["direction"], "pct"))
            if "memory_bytes" in w:
                rows.append((f"long {span}: stream memory (MB)", w["memory_bytes"] / 2**20, "mb"))
        for name, value in result.get("timing", {}).get("long_fps", {}).items():
            rows.append((f"long {name.replace('frames_', '').replace('_', '-')}: FPS (timing)", value, "fps"))
    if "recall" in suites:
        rc = suites["recall"]
        for key in ("size", "decoration_color", "decoration_position", "all_details"):
            rows.append((f"recall: {key.replace('_', ' ')} matches", rc["match"][key], "pct"))
            rows.append((f"recall: {key.replace('_', ' ')} chance", rc["chance"][key], "pct"))
    if "continuation" in suites:
        c = suites["continuation"]
        head = f"continuation ({c['context_frames']} true frames)"
        for key, what in (("found", "object found"), ("color", "colour"), ("shape", "shape")):
            rows.append((f"{head}: first chunk {what}", c["first_chunk"][key], "pct"))
        rows.append((f"{head}: first chunk centroid error (px)", c["first_chunk"]["centroid_error_px"], "num"))
        rows.append((f"{head}: direction over {c['generated_frames']} frames", c["direction"], "pct"))
        rows.append((f"{head}: last chunk shape", c["per_chunk"]["shape"][-1], "pct"))
    if "single" in suites and "per_chunk" in suites["single"]:
        shape = suites["single"]["per_chunk"]["shape"]
        rows.append(("single: shape in chunk 0", shape[0], "pct"))
        rows.append(("single: shape in the last chunk", shape[-1], "pct"))
    if "temporal" in suites:
        t = suites["temporal"]
        for key in ("background_pixel_flicker", "background_color_flicker", "object_color_flicker",
                    "object_area_flicker"):
            rows.append((f"temporal: {key.replace('_', ' ')}", t[key], "num"))
        for key in ("background_flips", "color_flips", "shape_flips"):
            rows.append((f"temporal: {key.replace('_', ' ')}", t[key], "pct"))
    return rows


def relative_speed(runs: dict[str, dict]) -> tuple[str | None, dict[str, float]]:
    """(baseline, {run: long-suite generation FPS / the baseline's}): the cache mechanisms' overhead. The baseline
    is ``rolling`` if it ran, else ``longlive`` (the same cache), else the first run with a long suite."""
    fps = {name: r.get("timing", {}).get("long", {}).get("generation_fps") for name, r in runs.items()
           if r.get("source") == "pipeline"}
    fps = {name: value for name, value in fps.items() if value}
    baseline = next((n for n in ("rolling", "longlive", *fps) if n in fps), None)
    if baseline is None:
        return None, {}
    return baseline, {name: value / fps[baseline] for name, value in fps.items()}


def _cell(value, kind) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "fps":
        return f"{value:.1f}"
    if kind == "mb":
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown_table(runs: dict[str, dict]) -> str:
    """One markdown table: a row per metric, a column per run."""
    names = list(runs)
    table: dict[str, dict[str, str]] = {}
    for name, result in runs.items():
        for metric, value, kind in summary_rows(result):
            table.setdefault(metric, {})[name] = _cell(value, kind)
    baseline, ratios = relative_speed(runs)
    for name, ratio in ratios.items():
        table.setdefault(f"long: FPS relative to `{baseline}` (timing)", {})[name] = f"{ratio:.2f}x"
    lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |"]
    for metric, cells in table.items():
        lines.append(f"| {metric} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Command line


def register_cli(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``quality`` to the ``streamgen bench`` subcommands."""
    p = bench_subparsers.add_parser("quality", help="oracle-scored quality suites on held-out ShapeWorld prompts")
    p.add_argument("--pipeline", help="pipeline folder (default: the embedded one under pipelines/)")
    p.add_argument("--cache", help="cache preset name or YAML path (default: the pipeline's)")
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    p.add_argument("--compare", help="comma-separated cache presets to run on the same seeds (one table)")
    p.add_argument("--reference", action="store_true",
                   help="play the schedules with the ground-truth renderer instead of (or, with --compare, beside) "
                        "the pipeline")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests and smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", nargs="+", metavar="JSON",
                   help="print one table from earlier --json results (e.g. halves of a comparison run in parallel) "
                        "instead of running anything")
    p.set_defaults(func=cmd_bench_quality)
    return p


def merged_runs(paths: Sequence[str | Path]) -> dict[str, dict]:
    """The runs of several ``--json`` results (single runs or comparisons), in order, as one comparison."""
    runs: dict[str, dict] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        found = result["runs"] if result.get("benchmark") == "quality-compare" else {result["cache"] or "reference": result}
        for name, run in found.items():
            if name in runs:
                raise ValueError(f"{path}: run {name!r} is already in an earlier file")
            runs[name] = run
    return runs


def cmd_bench_quality(args) -> int:
    if args.table:
        print(markdown_table(merged_runs(args.table)))
        return 0
    suites = _check_suites(args.suites)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    pipeline = args.pipeline
    if pipeline is None and not (args.reference and not args.compare):
        from ...cli import default_pipeline

        pipeline = str(default_pipeline())
    if args.compare:
        presets = [p.strip() for p in args.compare.split(",") if p.strip()]
        result = run_quality_compare(pipeline, presets, suites, args.seed, reference=args.reference,
                                     quick=args.quick, out_dir=args.plots, device=args.device, log=log)
        table = result["table"]
    else:
        if args.reference:
            layout = None
            if pipeline is not None:
                layout = Layout.of(_source_for(pipeline, None, args.device, None).pipe)
            result = run_quality("reference", suites, None, args.seed, quick=args.quick, out_dir=args.plots,
                                 layout=layout, log=log)
            label = "reference"
        else:
            result = run_quality(pipeline, suites, args.cache, args.seed, quick=args.quick, out_dir=args.plots,
                                 device=args.device, log=log)
            label = result["cache"]
        table = markdown_table({label: result})
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
