"""``streamgen bench revisit``: fly over a place, away for N chunks, and back along the same poses; measure what
each memory option brings back of the place.

This is the memory half of the issue's revisit suite, with no model in the loop: the memory is fed the true frames
(what a perfect generator would have drawn), and each revisit chunk's view is rebuilt from its retrieved anchors
alone (per pixel, the first anchor that covers it, in retrieval order; uncovered pixels are left as holes). So the
numbers are the ceiling a weaving model can reach with each retrieval method:

  covered   share of the revisit's pixels some anchor covers
  psnr      of the rebuilt view against the ground truth, on covered pixels (dB)
  objects   share of the static objects wholly in the revisit's view that the oracle finds in the rebuilt view
            (holes painted with the map's ground), in place and colour
  retrieve  milliseconds per chunk to pick the anchors and render them; memory bytes at the end of the flight

Flights: straight pans at ``speed`` units per frame in a random heading over a map denser than the default
(up to ``statics`` shapes ``spacing`` apart: about 95 fit in the 256-unit square), the camera at ``height`` (1.5x the default: more of the map per frame).
Row ``truth`` reads the true revisit frames: the oracle's own ceiling (100% on a correct renderer).

Methods: ``coverage`` (greedy + swap refinement, streamgen's), ``greedy`` (AnchorWeave's plain greedy), ``fov``
(WorldMem-style frustum overlap), ``recency``, ``fused`` (one global point cloud of the whole pool), each keeping the
first frame and at most ``k`` anchors, ``none`` (no memory: nothing covered).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import GeometricMemory, psnr
from ..world.camera import (
    CameraState, default_intrinsics, match_view, pan, read_view, render_flight, sample_map, visible_objects,
)
from ..world.scenes import COLORS, seeds_of_split

__all__ = ["METHODS", "RevisitRow", "run_revisit", "format_table"]

METHODS = ("coverage", "greedy", "fov", "recency", "fused", "none", "truth")


@dataclass
class RevisitRow:
    method: str
    away: int  # chunks flown away before coming back
    covered: float
    psnr: float
    objects: float
    retrieve_ms: float
    memory_bytes: int


def _rebuild(memory: GeometricMemory, method: str, poses: torch.Tensor, k: int):
    camera = default_intrinsics()
    shape = (len(poses), camera.height, camera.width)
    if method == "none":
        return torch.zeros(*shape, 3), torch.zeros(shape, dtype=torch.bool)
    if method == "truth":
        return None
    if method == "fused":
        renders = memory.fused(poses, camera)
        return torch.stack([r.image for r in renders]).float(), torch.stack([r.covered for r in renders])
    return memory.composite(memory.retrieve(poses, camera, k, method), poses, camera)


def run_revisit(*, away: tuple[int, ...] = (4, 8, 16), trials: int = 8, chunk_frames: int = 3, prefill: int = 9,
                capacity: int = 32, k: int = 4, speed: float = 2.0, height: float = 48.0, statics: int = 150,
                spacing: float = 20.0, methods: tuple[str, ...] = METHODS, seed: int = 0) -> list[RevisitRow]:
    """Average each method over ``trials`` flights per distance in ``away``."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown memory method {method!r}; choose from {', '.join(METHODS)}")
    camera = default_intrinsics()
    rows = []
    for n_away in away:
        totals = {m: {"covered": [], "psnr": [], "found": 0, "expected": 0, "ms": [], "bytes": 0} for m in methods}
        for trial in range(trials):
            rng = random.Random(seed * 1000 + trial)
            world = sample_map(seed * 1000 + trial, statics=statics, spacing=spacing)
            heading = rng.uniform(0, 2 * math.pi)
            dx, dy = speed * math.cos(heading), speed * math.sin(heading)
            start = CameraState(128 - dx * (prefill + n_away * chunk_frames) / 2, 128 - dy * (
                prefill + n_away * chunk_frames) / 2, height)
            out = pan(start, dx, dy, prefill + n_away * chunk_frames)
            back = out[prefill - 1::-1][:chunk_frames]  # the first revisit chunk: the place's last frames, reversed
            flight = render_flight(world, out)
            truth = render_flight(world, back, start_time=len(out))
            memory = GeometricMemory(capacity)
            for i in range(len(flight)):
                memory.add(torch.tensor(flight.frames[i]), flight.poses[i], camera, i,
                           depth=torch.tensor(flight.depth[i]))
            for method in methods:
                began = time.perf_counter()
                rebuilt = _rebuild(memory, method, truth.poses, k)
                elapsed = time.perf_counter() - began
                if rebuilt is None:  # the true frames themselves
                    rebuilt = torch.tensor(truth.frames).float(), torch.ones(truth.frames.shape[:3], dtype=torch.bool)
                image, covered = rebuilt
                t = totals[method]
                t["ms"].append(elapsed * 1000)
                t["bytes"] = memory.nbytes if method not in ("none", "truth") else 0
                t["covered"].append(float(covered.float().mean()))
                if covered.any():
                    value = psnr(image, torch.tensor(truth.frames).float(), covered)
                    t["psnr"].append(min(value, 99.0))
                painted = image.clone()
                painted[~covered] = torch.tensor(COLORS[world.background], dtype=torch.float32)
                frames = painted.round().clamp(0, 255).to(torch.uint8).numpy()
                for j in range(len(truth)):
                    expected = visible_objects(world, truth.poses[j], truth.times[j], camera)
                    score = match_view(read_view(frames[j], world.background)[1], expected)
                    t["found"] += score.found
                    t["expected"] += score.expected
        for method in methods:
            t = totals[method]
            rows.append(RevisitRow(method, n_away, float(np.mean(t["covered"])),
                                   float(np.mean(t["psnr"])) if t["psnr"] else float("nan"),
                                   t["found"] / max(t["expected"], 1), float(np.median(t["ms"])), t["bytes"]))
    return rows


def format_table(rows: list[RevisitRow]) -> str:
    lines = ["| memory | away (chunks) | covered | PSNR on covered (dB) | objects restored | retrieve + render (ms "
             "per chunk) | memory bytes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        value = "-" if math.isnan(r.psnr) else f"{r.psnr:.1f}"
        lines.append(f"| {r.method} | {r.away} | {r.covered:.1%} | {value} | {r.objects:.1%} | {r.retrieve_ms:.1f} | "
                     f"{r.memory_bytes:,} |")
    return "\n".join(lines)


def write_json(rows: list[RevisitRow], path: str) -> None:
    with open(path, "w") as f:
        json.dump([r.__dict__ for r in rows], f, indent=1)


# ---- with a camera model in the loop -----------------------------------------------------------------------------

# memory options of a camera stream: (retrieval, pool frames, anchors, keep the first frame)
MODEL_MEMORIES = {
    "coverage": ("coverage", 32, 4, True),  # streamgen: greedy + swaps over a pool of 32
    "greedy": ("greedy", 32, 4, True),  # AnchorWeave's plain greedy
    "fov": ("fov", 32, 4, True),  # WorldMem-style frustum overlap
    "recency": ("recency", 32, 4, True),  # the first frame and the 3 newest
    "window": ("recency", 4, 4, False),  # no long memory: the 4 newest frames only
}


@dataclass
class ModelRevisitRow:
    memory: str
    away: int
    psnr: float  # the revisit chunk against the true frames of the place
    objects: float  # the place's objects (seen in the true context) found in place and colour
    fps: float  # generated frames per second over the whole flight
    memory_bytes: int


def _model_flight(trial: int, context: int, away_frames: int, chunk: int, speed: int = 2):
    """(world, flight): ``context`` true frames of a place, ``away_frames`` flying off at whole units per frame,
    then the same poses back (the turning frame held once), the last ``chunk`` retracing the place's last chunk."""
    rng = random.Random(20_000 + trial)
    world = sample_map(next(seeds_of_split("heldout", start=trial * 7919)))
    direction = rng.choice([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)])
    vx, vy = direction[0] * speed, direction[1] * speed
    out_frames = context + away_frames
    x0 = world.extent / 2 - vx * out_frames / 2
    y0 = world.extent / 2 - vy * out_frames / 2
    out = [CameraState(round(x0) + k * vx, round(y0) + k * vy) for k in range(out_frames)]
    states = out + out[::-1][: away_frames + chunk]
    return world, render_flight(world, states, start_time=rng.uniform(0, 200))


def run_model_revisit(pipe, *, away: tuple[int, ...] = (8,), trials: int = 8, context: int = 9,
                      memories: tuple[str, ...] = tuple(MODEL_MEMORIES), cache: str | None = None,
                      seed: int = 0) -> list[ModelRevisitRow]:
    """Per distance and memory option: the camera model continues the flight from the place's true frames, flies
    away and back; the frames that retrace the place's last chunk are scored."""
    from ..camera_control import CameraTrack
    from ..world.camera import ground_depth

    chunk = int(pipe.config.chunk_frames)
    rows = []
    for n_away in away:
        for name in memories:
            retrieval, pool, k, keep_first = MODEL_MEMORIES[name]
            psnrs, found, expected, frames, seconds, nbytes = [], 0, 0, 0, 0.0, 0
            for trial in range(trials):
                world, flight = _model_flight(trial, context, n_away * chunk, chunk)
                generate = len(flight) - context
                track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, memory_frames=pool,
                                    anchors=k, retrieval=retrieval, keep_first=keep_first)
                began = time.perf_counter()
                stream = pipe.stream(world.caption, video=flight.frames[:context], camera=track,
                                     num_frames=generate, cache=cache,
                                     generator=torch.Generator().manual_seed(seed * 1000 + trial))
                video = np.concatenate([c.frames[0] for c in stream])
                seconds += time.perf_counter() - began
                frames += len(video)
                nbytes = stream.engine.camera.memory.nbytes
                # the last chunk retraces the place's last true chunk: score each frame against the true one
                for k_gen in range(len(video) - chunk, len(video)):
                    pose = flight.poses[context + k_gen]
                    true_index = next(i for i in range(context) if torch.equal(flight.poses[i], pose))
                    truth = flight.frames[true_index]
                    mse = float(np.mean((video[k_gen].astype(np.float64) - truth.astype(np.float64)) ** 2))
                    psnrs.append(99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse))
                    seen = visible_objects(world, pose, flight.times[true_index], flight.intrinsics)
                    score = match_view(read_view(video[k_gen], world.background)[1], seen)
                    found, expected = found + score.found, expected + score.expected
            rows.append(ModelRevisitRow(name, n_away, float(np.mean(psnrs)), found / max(expected, 1),
                                        frames / seconds, nbytes))
    return rows


def format_model_table(rows: list[ModelRevisitRow]) -> str:
    lines = ["| memory | away (chunks) | revisit PSNR (dB) | place's objects restored | FPS (whole flight) | memory "
             "bytes |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.memory} | {r.away} | {r.psnr:.1f} | {r.objects:.1%} | {r.fps:.1f} | {r.memory_bytes:,} |")
    return "\n".join(lines)
