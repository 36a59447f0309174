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
(up to ``statics`` shapes ``spacing`` apart: about 95 fit in the 256-unit square), the camera at ``height``
(1.5x the default: more of the map per frame).
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
from dataclasses import dataclass, field

import numpy as np
import torch

from ..geometry import GeometricMemory, psnr
from ..geometry.depth_error import DepthError
from ..world.camera import (
    CameraState, default_intrinsics, map_seed, match_view, pan, read_view, render_flight, sample_map, visible_objects,
)
from ..world.scenes import COLORS

__all__ = ["METHODS", "RevisitRow", "run_revisit", "format_table"]

METHODS = ("coverage", "greedy", "fov", "recency", "fused", "none", "truth")


@dataclass
class RevisitRow:
    method: str
    flight: str  # "straight" or "linger"
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


def _memory_flight(kind: str, rng: random.Random, n_away: int, chunk_frames: int, prefill: int, speed: float,
                   height: float):
    """(the flight the memory holds, the revisit chunk's cameras).

    straight  ``prefill`` frames of the place panning in a random heading, away ``n_away`` chunks, then the
              place's last frames in reverse;
    linger    the camera hovers at half the height over one corner of the place for ``prefill`` frames (near
              look-alikes that each lie wholly inside the revisit's view), passes once over the opposite corner at
              full height, flies away ``n_away`` chunks; the revisit looks at the whole place. Frustum overlap
              ranks the hovering frames first; coverage wants the pass."""
    heading = rng.uniform(0, 2 * math.pi)
    dx, dy = speed * math.cos(heading), speed * math.sin(heading)
    if kind == "straight":
        start = CameraState(128 - dx * (prefill + n_away * chunk_frames) / 2, 128 - dy * (
            prefill + n_away * chunk_frames) / 2, height)
        out = pan(start, dx, dy, prefill + n_away * chunk_frames)
        return out, out[prefill - 1::-1][:chunk_frames]
    place = CameraState(128.0, 128.0, height)
    quarter = height / 4  # a quarter of the view's side, in world units at this height
    hover = [CameraState(place.x - quarter + rng.uniform(-1, 1), place.y - quarter + rng.uniform(-1, 1), height / 2)
             for _ in range(prefill)]
    passing = CameraState(place.x + quarter, place.y + quarter, height)
    out = hover + [passing] + pan(passing, dx, dy, n_away * chunk_frames + 1)[1:]
    return out, pan(place, 0.5 * dx, 0.5 * dy, chunk_frames)


def run_revisit(*, away: tuple[int, ...] = (4, 8, 16), flights: tuple[str, ...] = ("straight", "linger"),
                trials: int = 8, chunk_frames: int = 3, prefill: int = 9, capacity: int = 32, k: int = 4,
                speed: float = 2.0, height: float = 48.0, statics: int = 150, spacing: float = 20.0,
                methods: tuple[str, ...] = METHODS, seed: int = 0, depth_error: float = 0.0,
                depth_warp: float = 0.0, align_depth: bool = False) -> list[RevisitRow]:
    """Average each method over ``trials`` flights: straight ones per distance in ``away``, lingering ones
    ``away[len(away) // 2]`` chunks away. ``depth_error``: the memory's depth is the true depth times a per-frame
    scale error (:class:`~streamgen.geometry.depth_error.DepthError`, this sigma) and ``depth_warp`` a smooth
    distortion within each frame (its ``warp``), as an estimator's would be;
    ``align_depth``: the memory rescales each frame's depth to the pool's
    (:attr:`~streamgen.geometry.GeometricMemory.align_depth`)."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown memory method {method!r}; choose from {', '.join(METHODS)}")
    camera = default_intrinsics()
    cases = [("straight", n) for n in away if "straight" in flights]
    cases += [("linger", away[len(away) // 2])] if "linger" in flights else []
    rows = []
    for kind, n_away in cases:
        totals = {m: {"covered": [], "psnr": [], "found": 0, "expected": 0, "ms": [], "bytes": 0} for m in methods}
        for trial in range(trials):
            rng = random.Random(seed * 1000 + trial)
            world = sample_map(seed * 1000 + trial, statics=statics, spacing=spacing)
            out, back = _memory_flight(kind, rng, n_away, chunk_frames, prefill, speed, height)
            flight = render_flight(world, out)
            truth = render_flight(world, back, start_time=len(out))
            memory = GeometricMemory(capacity, align_depth=align_depth)
            estimate = DepthError(depth_error, seed * 1000 + trial, warp=depth_warp)
            for i in range(len(flight)):
                memory.add(torch.tensor(flight.frames[i]), flight.poses[i], camera, i,
                           depth=estimate(torch.tensor(flight.depth[i])))
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
            rows.append(RevisitRow(method, kind, n_away, float(np.mean(t["covered"])),
                                   float(np.mean(t["psnr"])) if t["psnr"] else float("nan"),
                                   t["found"] / max(t["expected"], 1), float(np.median(t["ms"])), t["bytes"]))
    return rows


def format_table(rows: list[RevisitRow]) -> str:
    lines = ["| flight | memory | covered | PSNR on covered (dB) | objects restored | retrieve + render (ms "
             "per chunk) | memory bytes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        value = "-" if math.isnan(r.psnr) else f"{r.psnr:.1f}"
        lines.append(f"| {r.flight}, {r.away} chunks away | {r.method} | {r.covered:.1%} | {value} | {r.objects:.1%} | "
                     f"{r.retrieve_ms:.1f} | {r.memory_bytes:,} |")
    return "\n".join(lines)


def write_json(rows: list[RevisitRow], path: str) -> None:
    with open(path, "w") as f:
        json.dump([r.__dict__ for r in rows], f, indent=1)


# ---- with a camera model in the loop -----------------------------------------------------------------------------

# memory options of a camera stream: (retrieval, pool frames, anchors, keep the first frame, eviction)
MODEL_MEMORIES = {
    "coverage": ("coverage", 32, 4, True, "redundancy"),  # streamgen: greedy + swaps over a pool of 32
    "greedy": ("greedy", 32, 4, True, "redundancy"),  # AnchorWeave's plain greedy
    "fov": ("fov", 32, 4, True, "redundancy"),  # WorldMem-style frustum overlap
    "recency": ("recency", 32, 4, True, "redundancy"),  # the first frame and the 3 newest of the pool
    "fused": ("fused", 32, 4, True, "redundancy"),  # the whole pool of 32 as one global point cloud (K unused)
    "none": ("recency", 4, 4, False, "oldest"),  # no long memory: the 4 newest frames, as the KV cache's window
}


PLAIN_MODEL = "none, plain model"  # memory_speed's reference row when the memory is woven in another way


def _model_track(memory: str, intrinsics, poses: torch.Tensor, weave: str, controller_every: int,
                 depth_error: DepthError | None = None, align_depth: bool = False):
    """The camera track of memory option ``memory`` (:data:`MODEL_MEMORIES`), with the camera world's depth (times
    ``depth_error``'s scale errors when given)."""
    from ..camera_control import CameraTrack
    from ..world.camera import ground_depth

    retrieval, pool, k, keep_first, eviction = MODEL_MEMORIES[memory]
    depth_fn = ground_depth if depth_error is None else depth_error.around(ground_depth)
    return CameraTrack(intrinsics, poses, depth_fn=depth_fn, memory_frames=pool, anchors=k, retrieval=retrieval,
                       keep_first=keep_first, eviction=eviction, weave=weave, controller_every=controller_every,
                       align_depth=align_depth)


@dataclass
class ModelRevisitRow:
    memory: str
    flight: str  # "straight" (away and back), "two-pass" or "linger"
    away: int  # straight and lingering flights: chunks away
    psnr: float  # the revisit chunk against the true frames of the place
    objects: float  # of the objects seen earlier in the flight, the share found in place and colour
    objects_expected: int
    fps: float  # generated frames per second over the whole flight
    memory_bytes: int
    anchor_frames: list[list[int]] = field(default_factory=list)  # per flight: the frames the scored chunk's anchors
    # came from (0 .. context - 1 are the true frames; empty for the fused cloud)


def _place_start(world, rng, path, scored: slice, min_objects: int, attempts: int = 200):
    """An offset for ``path`` (relative (dx, dy) per frame from the start) over the map's middle such that at least
    ``min_objects`` static objects are wholly in view of every scored frame; the states."""
    camera = default_intrinsics()
    for _ in range(attempts):
        x0 = round(world.extent / 2 + rng.uniform(-40, 40))
        y0 = round(world.extent / 2 + rng.uniform(-40, 40))
        states = [CameraState(x0 + dx, y0 + dy) for dx, dy in path]
        if min(len(visible_objects(world, s.camera_to_world(), 0, camera)) for s in states[scored]) >= min_objects:
            break
    return states


def _straight_path(context: int, away_frames: int, chunk: int, direction, speed: int = 2):
    """``context`` frames and ``away_frames`` more along ``direction``, then the same poses back (the turning frame
    held once) until the last ``chunk`` retrace the context's last chunk."""
    vx, vy = direction[0] * speed, direction[1] * speed
    out = [(k * vx, k * vy) for k in range(context + away_frames)]
    return out + out[::-1][: away_frames + chunk]


def _two_pass_path(context: int, chunk: int, direction, speed: int = 2, gap: int = 24):
    """The context flies along ``direction``; the stream then steps ``gap`` units aside, flies back parallel, steps
    half the gap in and flies the first way again, over the band between both passes: the scored last chunk sees one
    half of its view only in the first pass (true frames) and the other only in the second (generated)."""
    ux, uy = direction
    sx, sy = -uy, ux  # to the side
    path = [(k * speed * ux, k * speed * uy) for k in range(context)]

    def go(dx, dy, frames):
        for _ in range(frames):
            x, y = path[-1]
            path.append((x + dx, y + dy))

    go(sx * speed, sy * speed, gap // speed)  # aside
    back = (context + chunk) // chunk * chunk
    go(-ux * speed, -uy * speed, back)  # the second pass
    go(-sx * speed, -sy * speed, gap // 2 // speed)  # half way in
    go(ux * speed, uy * speed, back)  # along the band
    extra = (len(path) - context) % chunk
    return path[: len(path) - extra]


def _linger_path(context: int, away_frames: int, chunk: int, direction, speed: int = 2, hover: float = 0.5):
    """The context hovers at ``hover`` x the height over the place's north-west quarter (``context`` - 1 frames),
    then passes once at full height over its south-east quarter; the stream flies away and back to that pass and on
    to the place's middle, where the last chunk holds. (dx, dy, height factor) per frame."""
    quarter = 8
    path = [(-quarter + (j % 3), -quarter + (j // 3) % 3, hover) for j in range(context - 1)]
    path.append((quarter, quarter, 1.0))
    out = [(quarter + k * speed * direction[0], quarter + k * speed * direction[1], 1.0)
           for k in range(1, away_frames + 1)]
    path += out + out[::-1] + [(quarter, quarter, 1.0)]
    while path[-1][:2] != (0, 0):  # diagonally in to the middle
        x, y, _ = path[-1]
        path.append((x - speed * (x > 0), y - speed * (y > 0), 1.0))
    while (len(path) - context) % chunk or len(path) - context < 2 * chunk:
        path.append((0, 0, 1.0))
    return path + [(0, 0, 1.0)] * chunk


DIRECTIONS8 = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))


def _model_flight(trial: int, context: int, chunk: int, flight: str, away_chunks: int = 8, min_objects: int = 2):
    """(world, flight) of a held-out map: ``flight`` "straight" (away ``away_chunks`` chunks and back), "two-pass"
    or "linger" (away ``away_chunks`` chunks)."""
    rng = random.Random(20_000 + trial)
    world = sample_map(map_seed("heldout", trial))
    direction = rng.choice(DIRECTIONS8 if flight == "straight" else DIRECTIONS8[:4])
    if flight == "straight":
        path = _straight_path(context, away_chunks * chunk, chunk, direction)
    elif flight == "two-pass":
        path = _two_pass_path(context, chunk, direction)
    else:
        path = _linger_path(context, away_chunks * chunk, chunk, direction)
    heights = [p[2] if len(p) > 2 else 1.0 for p in path]
    states = _place_start(world, rng, [p[:2] for p in path], slice(len(path) - chunk, len(path)), min_objects)
    states = [CameraState(s.x, s.y, s.height * h) for s, h in zip(states, heights)]
    return world, render_flight(world, states, start_time=rng.uniform(0, 200))


def run_model_revisit(pipe, *, away: tuple[int, ...] = (8,),
                      flights: tuple[str, ...] = ("straight", "two-pass", "linger"),
                      trials: int = 8, context: int = 9, memories: tuple[str, ...] = tuple(MODEL_MEMORIES),
                      cache: str | None = None, seed: int = 0, weave: str = "encoder",
                      controller_every: int = 1, depth_error: float = 0.0, depth_warp: float = 0.0,
                      align_depth: bool = False) -> list[ModelRevisitRow]:
    """Per flight and memory option: the camera model continues the flight from the place's true frames; the last
    chunk, back over ground the flight has seen, is scored against the true frames there (PSNR; of the static
    objects wholly in view that some earlier frame showed wholly, the share found in place and colour). ``weave``:
    how the memory reaches the model (:attr:`streamgen.camera_control.CameraTrack.weave`; ``controller_every``, its
    ``controller_every``); ``depth_error``, ``depth_warp`` and ``align_depth``, as in :func:`run_revisit`."""
    chunk = int(pipe.config.chunk_frames)
    camera = default_intrinsics()
    cases = [("straight", n) for n in away if "straight" in flights]
    cases += [("two-pass", 0)] if "two-pass" in flights else []
    cases += [("linger", away[len(away) // 2])] if "linger" in flights else []
    rows = []
    for flight_kind, n_away in cases:
        for name in memories:
            psnrs, found, expected, frames, seconds, nbytes, picks = [], 0, 0, 0, 0.0, 0, []
            for trial in range(trials):
                world, flight = _model_flight(trial, context, chunk, flight_kind, n_away)
                estimate = (DepthError(depth_error, seed * 1000 + trial, warp=depth_warp)
                            if depth_error or depth_warp else None)
                track = _model_track(name, flight.intrinsics, flight.poses, weave, controller_every, estimate,
                                     align_depth)
                began = time.perf_counter()
                stream = pipe.stream(world.caption, video=flight.frames[:context], camera=track,
                                     num_frames=len(flight) - context, cache=cache,
                                     generator=torch.Generator().manual_seed(seed * 1000 + trial))
                video = np.concatenate([c.frames[0] for c in stream])
                seconds += time.perf_counter() - began
                frames += len(video)
                nbytes = stream.engine.camera.memory.nbytes
                picks.append(sorted(stream.engine.camera.retrieved))  # the last retrieval: the scored chunk's
                seen = set()
                for j in range(len(flight) - chunk):
                    seen |= {o.index for o in visible_objects(world, flight.poses[j], flight.times[j], camera)}
                for j in range(len(flight) - chunk, len(flight)):
                    generated, truth = video[j - context], flight.frames[j]
                    psnrs.append(min(psnr(torch.from_numpy(generated), torch.from_numpy(truth)), 99.0))
                    objects = [o for o in visible_objects(world, flight.poses[j], flight.times[j], camera)
                               if o.index in seen]
                    score = match_view(read_view(generated, world.background)[1], objects)
                    found, expected = found + score.found, expected + score.expected
            rows.append(ModelRevisitRow(name, flight_kind, n_away, float(np.mean(psnrs)), found / max(expected, 1),
                                        expected, frames / seconds, nbytes, picks))
    return rows


def format_model_table(rows: list[ModelRevisitRow]) -> str:
    lines = ["| flight | memory | revisit PSNR (dB) | objects restored | FPS (whole flight) | memory bytes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        flight = r.flight if r.flight == "two-pass" else f"{r.flight}, {r.away} chunks away"
        lines.append(f"| {flight} | {r.memory} | {r.psnr:.1f} | {r.objects:.1%} of {r.objects_expected} | "
                     f"{r.fps:.1f} | {r.memory_bytes:,} |")
    return "\n".join(lines)


def memory_speed(pipe, *, memories: tuple[str, ...] = ("coverage", "none"), frames: int = 300, rounds: int = 3,
                 cache: str | None = None, weave: str = "encoder", controller_every: int = 1) -> dict[str, list[float]]:
    """Frames per second of a camera stream per memory option over a ``frames``-frame flight (a pan that turns every
    few chunks, so the pool keeps filling and evicting), the options interleaved round by round: {memory: [fps per
    round]}. Time every option in one run on a quiet machine and compare medians."""
    chunk = int(pipe.config.chunk_frames)
    rng = random.Random(7)
    world = sample_map(map_seed("heldout", 0))
    path, x, y = [], 128.0, 128.0
    velocity = (2, 0)
    for k in range(frames):
        if k % (4 * chunk) == 0:
            velocity = rng.choice([(2, 0), (-2, 0), (0, 2), (0, -2)])
        path.append(CameraState(x, y))
        x, y = x + velocity[0], y + velocity[1]
    poses = torch.stack([s.camera_to_world() for s in path])
    # Weaving through a controller or the cache is timed against the plain model too: the camera encoder with no
    # memory (the FIFO of 4) under the pipeline's own cache, the "rolling" of the speed bar.
    runs = [(name, name, weave, cache) for name in memories]
    if weave != "encoder":
        runs.append((PLAIN_MODEL, "none", "encoder", None))
    out: dict[str, list[float]] = {label: [] for label, *_ in runs}
    for _ in range(rounds):
        for label, name, run_weave, run_cache in runs:
            track = _model_track(name, default_intrinsics(), poses, run_weave, controller_every)
            stream = pipe.stream(world.caption, camera=track, num_frames=frames, cache=run_cache,
                                 generator=torch.Generator().manual_seed(0))
            began = time.perf_counter()
            count = sum(c.frames.shape[1] for c in stream)
            out[label].append(count / (time.perf_counter() - began))
    return out
