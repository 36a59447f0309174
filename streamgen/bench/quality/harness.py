"""The quality harness: how big each suite is, the generator's frame grid, the test videos, the two sources that play
them (a pipeline, or the ShapeWorld renderer as ground truth) and the :class:`Runner` a suite plays its videos
through. What each suite measures is in :mod:`.suites`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...world.oracle import FrameReadout, read_frames
from ...world.render import ClipSegment, render_clip
from ...world.scenes import BACKGROUNDS, DIRECTIONS, OBJECT_COLORS, RESOLUTION, SHAPES, SPEEDS, Scene

APPEARANCE = ("background", "color", "shape")


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
    # The erasure suite's sizes; None follows the other suites' scale (so Sizes made before the suite existed stay
    # small): videos per concept and condition = single_videos / 4 (16), concept chunks per video = single_chunks / 2
    # (8), chunks before a switch = switch_chunks_before (4), long videos 2 (1 below 16 single videos), frames after
    # the switch in the long condition = min(200, long_frames) (200).
    erasure_videos: int | None = None
    erasure_chunks: int | None = None
    erasure_switch_before: int | None = None
    erasure_long_videos: int | None = None
    erasure_long_frames: int | None = None

    def __post_init__(self):
        if self.switch_chunks_after < 1 or self.switch_chunks_before < 1:
            raise ValueError("the switch suite needs at least one chunk before and after the switch")
        if self.temporal_videos > self.single_videos:
            object.__setattr__(self, "temporal_videos", self.single_videos)
        derived = {"erasure_videos": max(1, self.single_videos // 4), "erasure_chunks": max(1, self.single_chunks // 2),
                   "erasure_switch_before": self.switch_chunks_before,
                   "erasure_long_videos": 2 if self.single_videos >= 16 else 1,
                   "erasure_long_frames": min(200, self.long_frames)}
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


FULL = Sizes()
QUICK = Sizes(single_videos=3, single_chunks=3, switch_pairs=2, switch_chunks_before=2, switch_chunks_after=3,
              long_frames=30, long_windows=((0, 9), (21, 30)), recall_triples=2, recall_chunks=2, temporal_videos=3,
              motion_window=9, continuation_videos=2, continuation_context_chunks=1, continuation_chunks=2,
              erasure_videos=1, erasure_chunks=1, erasure_switch_before=1, erasure_long_videos=1,
              erasure_long_frames=9)


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
        generator = torch.Generator().manual_seed(video.seed)
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


class Runner:
    """Plays one run's videos for the suites: each video once (suites that share videos, like ``temporal`` and
    ``single``, share the generation), read back by the oracle; collects plots and timing."""

    def __init__(self, source, seed: int, sizes: Sizes, out_dir: Path | None, label: str, log: Callable,
                 options: dict | None = None):
        self.source, self.seed, self.sizes, self.out_dir = source, seed, sizes, out_dir
        self.label, self.log = label, log
        self.options = dict(options or {})  # per-suite settings (e.g. the erasure suite's LoRAs and concepts)
        self.layout: Layout = source.layout
        self._videos: dict[tuple, tuple[Generated, FrameReadout]] = {}
        self.plots: dict[str, str] = {}
        self.timing: dict[str, Any] = {}

    def play(self, video: Video) -> tuple[Generated, FrameReadout]:
        """The generated video and the oracle's readout of it."""
        key = video.key()
        if key not in self._videos:
            generated = self.source.generate(video)
            self._videos[key] = (generated, read_frames(generated.frames))
        return self._videos[key]

    def plot_path(self, suite: str) -> Path | None:
        """Where ``suite`` writes its PNG, or None when this run writes no plots."""
        if self.out_dir is None:
            return None
        name = f"quality_{self.label}_{suite}.png".replace("/", "_")
        self.plots[suite] = name
        return self.out_dir / name

    def timed(self, suite: str, fn: Callable[["Runner"], dict]) -> dict:
        """``fn(self)``, its wall time and the generation FPS of the videos it made recorded under ``timing[suite]``."""
        before = {k: v[0].seconds for k, v in self._videos.items()}
        start = time.perf_counter()
        result = fn(self)
        wall = time.perf_counter() - start
        new = [v[0] for k, v in self._videos.items() if k not in before]
        frames = sum(len(g.frames) for g in new)
        gen_seconds = sum(g.seconds for g in new)
        self.timing[suite] = {"seconds": round(wall, 3), "generated_frames": frames,
                              "generation_fps": round(frames / gen_seconds, 2) if gen_seconds > 0 else None}
        return result


# -----------------------------------------------------------------------------
# Scoring helpers the suites share


def scene_ids(scene: Scene) -> dict[str, int]:
    a = scene.attributes
    return {"background": BACKGROUNDS.index(a.background), "color": OBJECT_COLORS.index(a.color),
            "shape": SHAPES.index(a.shape), "direction": DIRECTIONS.index(a.direction),
            "speed": SPEEDS.index(a.speed)}


def appearance_hits(r: FrameReadout, scene: Scene) -> dict[str, np.ndarray]:
    ids = scene_ids(scene)
    hits = {name: getattr(r, name) == ids[name] for name in APPEARANCE}
    hits["all"] = hits["background"] & hits["color"] & hits["shape"]
    return hits


def mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def per_chunk(values: dict[str, np.ndarray], chunk: np.ndarray) -> dict[str, list[float]]:
    """Mean of each per-frame array over the frames of each chunk (NaN-aware: a chunk without a value gives NaN)."""
    out = {}
    for name, v in values.items():
        v = np.asarray(v, np.float64)
        out[name] = [float(np.nanmean(v[chunk == c])) if np.isfinite(v[chunk == c]).any() else float("nan")
                     for c in range(int(chunk.max()) + 1)]
    return out


def mean_curves(curves: list[dict[str, list[float]]]) -> dict[str, list[float | None]]:
    """Average per-chunk curves over videos, ignoring NaNs (None where no video has a value)."""
    return {name: [rounded(mean([c[name][k] for c in curves])) for k in range(len(curves[0][name]))]
            for name in curves[0]} if curves else {}

