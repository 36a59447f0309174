"""The quality suites: one :class:`Suite` record each, registered in :data:`SUITES`.

A suite is a function that plays videos through a :class:`~.harness.Runner` and returns a JSON-able dict, plus the
function that picks its headline rows for the markdown table. Its videos come from held-out ShapeWorld scenes and
generator seeds drawn from (the run's seed, the suite's ``seed_id``): a suite's videos never depend on which other
suites exist, so registering a new one changes no number of the others. To add one, see CONTRIBUTING.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...world.oracle import FrameReadout, estimate_motion, read_segment
from ...world.render import SMOOTH_FRAMES
from ...world.scenes import (
    BACKGROUNDS, DECORATION_PX, DIRECTIONS, OBJECT_COLORS, RESOLUTION, SHAPES, SIZES, SPEEDS, Draws, Scene,
    _splitmix64, distinct_attributes, first_seeds, sample_details, sample_scene,
)
from .harness import (
    APPEARANCE, Layout, Runner, Video, appearance_hits, mean, mean_curves, per_chunk, rounded, scene_ids,
)

Row = tuple[str, "float | None", str]  # (metric, value, kind): kind "pct", "num", "fps" or "mb"

# held_out_scenes starts each (seed, suite) at scene stream seed * SEED_IDS + seed_id: ids 1..15 never collide.
SEED_IDS = 16
SWITCH_FIELDS = ("background", "color", "shape", "direction")  # a switch changes all of these
RECALL_CHANCE_DRAWS = 256
_RECALL_CHANCE_KEY = 99  # the recall suite's chance draws: a key no suite's seed_id can take


@dataclass(frozen=True)
class Suite:
    """One quality suite.

    name      what ``--suites`` and the result's ``suites`` call it
    seed_id   fixes the suite's videos (scenes and generator seeds); unique, 1..15, never changed once published
    run       plays the suite's videos through a Runner and returns its JSON-able result (and writes its plot to
              ``run.plot_path(name)`` when that is not None)
    rows      (metric, value, kind) headline rows for the markdown table, from a whole run's result
    """

    name: str
    seed_id: int
    run: Callable[[Runner], dict]
    rows: Callable[[dict], list[Row]]


# The six suites below keep the ids they had as places in the first released suite tuple (single = 1, ...,
# continuation = 6), so every number measured since stays reproducible.
SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Add ``suite`` to :data:`SUITES` (runs in registration order); its name and seed id must be new."""
    if suite.name in SUITES:
        raise ValueError(f"a bench suite named {suite.name!r} is already registered")
    taken = {s.seed_id: s.name for s in SUITES.values()}
    if suite.seed_id in taken or not 1 <= suite.seed_id < SEED_IDS:
        raise ValueError(f"suite {suite.name!r}: seed_id must be a free id in 1..{SEED_IDS - 1}, got {suite.seed_id}"
                         + (f" (taken by {taken[suite.seed_id]!r})" if suite.seed_id in taken else ""))
    SUITES[suite.name] = suite
    return suite


# -----------------------------------------------------------------------------
# Videos: held-out scenes and seeds per (run seed, suite)


def _seed(base: int, *key: int) -> int:
    return Draws(base, *key).next64() >> 1


def video_seed(run: Runner, suite: str, *key: int) -> int:
    """The generator seed of video ``key`` of ``suite`` in this run."""
    return _seed(run.seed, SUITES[suite].seed_id, *key)


def held_out_scenes(run: Runner, suite: str, count: int) -> list[Scene]:
    """``count`` held-out scenes for ``suite`` in this run."""
    start = _splitmix64(run.seed * SEED_IDS + SUITES[suite].seed_id) >> 36  # a 28-bit starting point per (seed, suite)
    return [sample_scene(s) for s in first_seeds("heldout", count, start)]


def partner(run: Runner, a: Scene, suite: str, i: int) -> Scene:
    """A held-out scene for the second prompt of video ``i``, differing from ``a`` in every SWITCH_FIELDS attribute."""
    seed_id = SUITES[suite].seed_id
    attributes = distinct_attributes(a.attributes, Draws(run.seed, seed_id, i, 7), SWITCH_FIELDS)
    start = _splitmix64(_seed(run.seed, seed_id, i, 8)) >> 36
    return sample_scene(first_seeds("heldout", 1, start)[0], attributes)


# -----------------------------------------------------------------------------
# single


def single_videos(run: Runner) -> list[Video]:
    """The single suite's videos (the temporal suite scores the same ones)."""
    s = run.sizes
    return [Video(((scene, s.single_chunks, "cut"),), video_seed(run, "single", i))
            for i, scene in enumerate(held_out_scenes(run, "single", s.single_videos))]


def single(run: Runner) -> dict:
    """One prompt per video: ``single_videos`` held-out (caption, seed) pairs of ``single_chunks`` chunks.

    Per-frame accuracy of background, object colour and shape; per-video direction and speed (median frame-to-frame
    motion); ``all`` = every attribute of the video right. Chance = a uniform guess. ``per_chunk``: found / colour /
    shape of chunk 0, 1, ...: how fast a free run loses what the prompt asked for."""
    per_attr = {name: [] for name in (*APPEARANCE, "direction", "speed", "all")}
    found, curves, chunk_curves = [], [], []
    for video in single_videos(run):
        generated, r = run.play(video)
        scene = video.parts[0][0]
        ids = scene_ids(scene)
        hits = appearance_hits(r, scene)
        chunk_curves.append(per_chunk({"found": r.found, "color": hits["color"], "shape": hits["shape"]},
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
    accuracy = {k: rounded(mean(v)) for k, v in per_attr.items()}
    curve = np.mean(np.stack(curves), 0)
    path = run.plot_path("single")
    if path is not None:
        from ..quality_plot import line_chart

        line_chart(path, {"bg+colour+shape": (np.arange(len(curve)), curve)},
                   title=f"single [{run.label}]: per-frame agreement with the prompt",
                   xlabel="frame", ylabel="fraction of videos")
    return {"videos": len(curves), "frames_per_video": len(curve), "accuracy": accuracy,
            "chance": {k: rounded(v) for k, v in chance.items()}, "found": rounded(mean(found)),
            "per_frame_all": [rounded(v, 3) for v in curve], "per_chunk": mean_curves(chunk_curves)}


def single_rows(result: dict) -> list[Row]:
    s = result["suites"]["single"]
    rows = [(f"single: {name} (chance {s['chance'][name]:.1%})", s["accuracy"][name], "pct")
            for name in ("background", "color", "shape", "direction", "speed", "all")]
    if "per_chunk" in s:  # results written before the per-chunk curve existed lack it
        shape = s["per_chunk"]["shape"]
        rows += [("single: shape in chunk 0", shape[0], "pct"), ("single: shape in the last chunk", shape[-1], "pct")]
    return rows


register_suite(Suite("single", 1, single, single_rows))


# -----------------------------------------------------------------------------
# switch


def switch(run: Runner) -> dict:
    """A -> B, B differing from A in background, colour, shape and direction; every other switch is a cut, the
    others smooth.

    For chunks 1, 2, 3 after the switch: fraction of frames whose background, colour and shape all match B (``new``)
    and all still match A (``old``, leftovers), each attribute on its own too (``new_color``, ``old_background``, ...),
    and whether the direction read over the chunk is B's. A smooth switch is a cross-fade of SMOOTH_FRAMES frames in
    the reference world, so the reference's own smooth chunk 1 is below 100% by design: it is the target profile, not
    an error."""
    s = run.sizes
    scenes = held_out_scenes(run, "switch", s.switch_pairs)
    chunks_reported = min(3, s.switch_chunks_after)
    records = {"cut": [], "smooth": []}
    offsets_curves = {"cut": [], "smooth": []}
    for i, a in enumerate(scenes):
        mode = "cut" if i % 2 == 0 else "smooth"
        b = partner(run, a, "switch", i)
        video = Video(((a, s.switch_chunks_before, "cut"), (b, s.switch_chunks_after, mode)),
                      video_seed(run, "switch", i))
        generated, r = run.play(video)
        new, old = appearance_hits(r, b), appearance_hits(r, a)
        switch_frame = int(np.flatnonzero(generated.segment == 1)[0])
        first_chunk = int(generated.chunk[switch_frame])
        rec = {}
        for k in range(1, chunks_reported + 1):
            frames = np.flatnonzero(generated.chunk == first_chunk + k - 1)
            m = estimate_motion(r.centroid[frames], r.found[frames], r.resolution)
            rec[k] = {"new": float(new["all"][frames].mean()), "old": float(old["all"][frames].mean()),
                      **{f"new_{n}": float(new[n][frames].mean()) for n in APPEARANCE},
                      **{f"old_{n}": float(old[n][frames].mean()) for n in APPEARANCE},
                      "new_direction": float(m.direction == scene_ids(b)["direction"])}
        before = np.flatnonzero(generated.chunk == first_chunk - 1)
        rec[0] = {"old": float(old["all"][before].mean())}
        records[mode].append(rec)
        window = np.arange(switch_frame - 2 * (switch_frame - int(before[0])), len(r))
        window = window[window >= 0]
        offsets_curves[mode].append((window - switch_frame, new["all"][window], old["all"][window]))

    def summarise(recs):
        if not recs:
            return None
        out = {"switches": len(recs), "old_before": rounded(mean([x[0]["old"] for x in recs]))}
        for key in ("new", "old", "new_background", "new_color", "new_shape", "new_direction",
                    "old_background", "old_color", "old_shape"):
            out[key] = {f"chunk{k}": rounded(mean([x[k][key] for x in recs])) for k in range(1, chunks_reported + 1)}
        return out

    result = {mode: summarise(recs) for mode, recs in records.items()}
    both = records["cut"] + records["smooth"]
    result["all"] = summarise(both)
    result = {"smooth_frames_in_reference": SMOOTH_FRAMES, **result}
    path = run.plot_path("switch")
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
        line_chart(path, series, title=f"switch [{run.label}]: frames matching the new / old prompt",
                   xlabel="frames after the switch", ylabel="fraction of switches", markers=[0])
    return result


def switch_rows(result: dict) -> list[Row]:
    sw, rows = result["suites"]["switch"], []
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
    return rows


register_suite(Suite("switch", 2, switch, switch_rows))


# -----------------------------------------------------------------------------
# long


def long(run: Runner) -> dict:
    """One prompt, one stream of ``long_frames``: accuracy in the early and the late window (per-frame appearance;
    motion over sub-windows of ``motion_window`` frames), the stream's memory in each window; the FPS of each window
    goes to ``timing``."""
    s, layout = run.sizes, run.layout
    chunks = max(1, math.ceil(_latent_for_frame(layout, s.long_frames) / layout.chunk_frames))
    scene = held_out_scenes(run, "long", 1)[0]
    video = Video(((scene, chunks, "cut"),), video_seed(run, "long"))
    generated, r = run.play(video)
    hits = appearance_hits(r, scene)
    ids = scene_ids(scene)
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
            **{n: rounded(hits[n][frames].mean()) for n in (*APPEARANCE, "all")},
            "direction": rounded(mean(motion_dir)), "speed": rounded(mean(motion_speed)),
            "found": rounded(r.found[frames].mean()),
        }
        chunks = np.unique(generated.chunk[frames])
        if generated.memory_bytes:  # the most the stream held in the window: equal windows = bounded memory
            windows[name]["memory_bytes"] = max(generated.memory_bytes[c] for c in chunks)
        chunk_frames = sum(int((generated.chunk == c).sum()) for c in chunks)
        seconds = sum(generated.chunk_seconds[c] for c in chunks)
        fps[name] = round(chunk_frames / seconds, 2) if seconds > 0 else None
        series[f"frames {a}-{b}"] = (frames - a, _smooth(hits["all"][frames].astype(float), 9))
    run.timing["long_fps"] = fps
    path = run.plot_path("long")
    if path is not None:
        from ..quality_plot import line_chart

        line_chart(path, series, title=f"long [{run.label}]: per-frame agreement (9-frame mean)",
                   xlabel="frame within window", ylabel="fraction")
    return {"frames": len(r), "windows": windows}


def long_rows(result: dict) -> list[Row]:
    rows = []
    for name, w in result["suites"]["long"]["windows"].items():
        span = name.replace("frames_", "").replace("_", "-")
        rows.append((f"long {span}: bg+colour+shape per frame", w["all"], "pct"))
        rows.append((f"long {span}: direction", w["direction"], "pct"))
        if "memory_bytes" in w:
            rows.append((f"long {span}: stream memory (MB)", w["memory_bytes"] / 2**20, "mb"))
    for name, value in result.get("timing", {}).get("long_fps", {}).items():
        rows.append((f"long {name.replace('frames_', '').replace('_', '-')}: FPS (timing)", value, "fps"))
    return rows


register_suite(Suite("long", 3, long, long_rows))


# -----------------------------------------------------------------------------
# recall


def recall(run: Runner) -> dict:
    """A -> B -> A (recall): do the recalled A's unprompted details (size class, decoration colour, decoration
    position within 1 px) match the first A's, as measured by the oracle on the generated video? Chance: how often a
    fresh draw of the world's details for A's attributes would match the first A."""
    s = run.sizes
    scenes = held_out_scenes(run, "recall", s.recall_triples)
    tol = max(1, round(run.layout.resolution / RESOLUTION))
    matches = {k: [] for k in ("size", "decoration_color", "decoration_position", "all_details")}
    chances = {k: [] for k in matches}
    prompted = []
    for i, a in enumerate(scenes):
        b = partner(run, a, "recall", i)
        video = Video(((a, s.recall_chunks, "cut"), (b, s.recall_chunks, "cut"), (a, s.recall_chunks, "recall")),
                      video_seed(run, "recall", i))
        generated, r = run.play(video)
        first = np.flatnonzero(generated.segment == 0)
        again = np.flatnonzero(generated.segment == 2)
        s1 = read_segment(r, int(first[0]), int(first[-1]) + 1)
        s2 = read_segment(r, int(again[0]), int(again[-1]) + 1)
        m = _detail_match(s1.size_class, s1.decoration_color, s1.decoration_xy,
                          s2.size_class, s2.decoration_color, s2.decoration_xy, r.resolution, tol)
        for k in matches:
            matches[k].append(m[k])
        ids = scene_ids(a)
        prompted.append(float(s2.ids() == tuple(ids[n] for n in ("background", "color", "shape", "direction",
                                                                  "speed"))))
        # chance: fresh details for A's attributes vs what the first A showed
        draws = [sample_details(a.attributes, Draws(_seed(run.seed, _RECALL_CHANCE_KEY, i), j))
                 for j in range(RECALL_CHANCE_DRAWS)]
        scale = r.resolution / RESOLUTION
        fresh = [_detail_match(s1.size_class, s1.decoration_color, s1.decoration_xy,
                               SIZES.index(d.size), OBJECT_COLORS.index(d.decoration_color),
                               (round(d.decoration[0] * scale) % r.resolution,
                                round(d.decoration[1] * scale) % r.resolution), r.resolution, tol)
                 for d in draws]
        for k in chances:
            chances[k].append(float(np.mean([f[k] for f in fresh])))
    result = {"triples": len(scenes), "match": {k: rounded(mean(v)) for k, v in matches.items()},
              "chance": {k: rounded(mean(v)) for k, v in chances.items()},
              "recalled_prompt_all_attributes": rounded(mean(prompted)), "position_tolerance_px": tol}
    path = run.plot_path("recall")
    if path is not None:
        from ..quality_plot import bar_chart

        short = {"size": "size", "decoration_color": "deco colour", "decoration_position": "deco position",
                 "all_details": "all details"}
        bar_chart(path, {short[k]: {"match": result["match"][k]} for k in matches},
                  chance={short[k]: v for k, v in result["chance"].items()},
                  title=f"recall [{run.label}]: recalled A's details = first A's",
                  ylabel="fraction of recalls")
    return result


def recall_rows(result: dict) -> list[Row]:
    rc, rows = result["suites"]["recall"], []
    for key in ("size", "decoration_color", "decoration_position", "all_details"):
        rows.append((f"recall: {key.replace('_', ' ')} matches", rc["match"][key], "pct"))
        rows.append((f"recall: {key.replace('_', ' ')} chance", rc["chance"][key], "pct"))
    return rows


register_suite(Suite("recall", 4, recall, recall_rows))


# -----------------------------------------------------------------------------
# temporal


def temporal(run: Runner) -> dict:
    """Flicker on the single suite's first ``temporal_videos`` videos (the same videos, generated once): frame-to-frame
    change of background pixels and of the measured background colour, of the object's colour and area, and label
    flip rates."""
    videos = single_videos(run)[: run.sizes.temporal_videos]
    stats = {k: [] for k in ("background_pixel_flicker", "background_color_flicker", "object_color_flicker",
                             "object_area_flicker", "background_flips", "color_flips", "shape_flips")}
    curves_bg, curves_obj = [], []
    for video in videos:
        generated, r = run.play(video)
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
    result = {"videos": len(videos), **{k: rounded(mean(v)) for k, v in stats.items()},
              "units": {"background_pixel_flicker": "mean |RGB change| of pixels that are neither object nor "
                                                    "decoration in both frames, 0-255",
                        "background_color_flicker": "RGB distance between consecutive measured backgrounds",
                        "object_color_flicker": "RGB distance between consecutive measured object colours",
                        "object_area_flicker": "relative change of the object's area",
                        "background_flips": "fraction of frame pairs whose class changes"}}
    path = run.plot_path("temporal")
    if path is not None:
        from ..quality_plot import line_chart

        n = min(len(c) for c in curves_bg)
        xs = np.arange(1, n + 1)
        line_chart(path, {"background pixels": (xs, np.mean([c[:n] for c in curves_bg], 0)),
                          "object colour": (xs, np.nanmean([c[:n] for c in curves_obj], 0)
                                            if np.isfinite(np.concatenate(curves_obj)).any() else
                                            np.full(n, np.nan))},
                   title=f"temporal [{run.label}]: frame-to-frame change", xlabel="frame",
                   ylabel="RGB units", y_range=None)
    return result


def temporal_rows(result: dict) -> list[Row]:
    t = result["suites"]["temporal"]
    return ([(f"temporal: {key.replace('_', ' ')}", t[key], "num") for key in
             ("background_pixel_flicker", "background_color_flicker", "object_color_flicker", "object_area_flicker")]
            + [(f"temporal: {key.replace('_', ' ')}", t[key], "pct") for key in
               ("background_flips", "color_flips", "shape_flips")])


register_suite(Suite("temporal", 5, temporal, temporal_rows))


# -----------------------------------------------------------------------------
# continuation


def continuation(run: Runner) -> dict:
    """Can the model continue a scene it is shown? ``continuation_videos`` held-out scenes play
    ``continuation_context_chunks`` chunks of TRUE frames (the renderer's, given as ``video=`` context), then the model
    generates ``continuation_chunks`` chunks under the same prompt.

    Per generated chunk: object found, colour, shape, and the centroid's distance from where the true continuation has
    it (px at 32x32); over all generated frames: direction and speed. The next frame is fully determined by the
    context, so a model that has learned the world is at ~100% from the first chunk on; a blurry or frozen object
    shows here first."""
    s, layout = run.sizes, run.layout
    chunk_scores, motion = [], {"direction": [], "speed": []}
    for i, scene in enumerate(held_out_scenes(run, "continuation", s.continuation_videos)):
        video = Video(((scene, s.continuation_chunks, "cut"),), video_seed(run, "continuation", i),
                      context=s.continuation_context_chunks)
        generated, r = run.play(video)
        truth = video.truth(layout)
        true_xy = truth.centroid[video.context_frames(layout):]
        hits = appearance_hits(r, scene)
        scale = RESOLUTION / r.resolution
        d = np.abs(_wrap_delta(r.centroid - true_xy, r.resolution))
        error = np.where(r.found, np.hypot(d[:, 0], d[:, 1]) * scale, np.nan)
        chunk_scores.append(per_chunk({"found": r.found, "color": hits["color"], "shape": hits["shape"],
                                        "centroid_error_px": error}, generated.chunk))
        m = estimate_motion(r.centroid, r.found, r.resolution)
        ids = scene_ids(scene)
        motion["direction"].append(float(m.direction == ids["direction"]))
        motion["speed"].append(float(m.speed == ids["speed"]))
    curves = mean_curves(chunk_scores)
    first = {k: v[0] for k, v in curves.items()}
    path = run.plot_path("continuation")
    if path is not None:
        from ..quality_plot import line_chart

        xs = np.arange(len(curves["found"]))
        line_chart(path, {k: (xs, np.array([np.nan if v is None else v for v in curves[k]], float))
                          for k in ("found", "color", "shape")},
                   title=f"continuation [{run.label}]: after true frames, per generated chunk",
                   xlabel="generated chunk", ylabel="fraction of frames")
    return {"videos": len(chunk_scores), "context_frames": layout.frames_for_latents(
                layout.chunk_latents(s.continuation_context_chunks)),
            "generated_frames": layout.frames_for_latents(layout.chunk_latents(s.continuation_chunks)),
            "first_chunk": first, "per_chunk": curves,
            **{k: rounded(mean(v)) for k, v in motion.items()}}


def continuation_rows(result: dict) -> list[Row]:
    c = result["suites"]["continuation"]
    head = f"continuation ({c['context_frames']} true frames)"
    rows = [(f"{head}: first chunk {what}", c["first_chunk"][key], "pct")
            for key, what in (("found", "object found"), ("color", "colour"), ("shape", "shape"))]
    rows.append((f"{head}: first chunk centroid error (px)", c["first_chunk"]["centroid_error_px"], "num"))
    rows.append((f"{head}: direction over {c['generated_frames']} frames", c["direction"], "pct"))
    rows.append((f"{head}: last chunk shape", c["per_chunk"]["shape"][-1], "pct"))
    return rows


register_suite(Suite("continuation", 6, continuation, continuation_rows))


# -----------------------------------------------------------------------------
# Helpers of one suite each


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


# The erasure suite (seed id 8) lives in its own module; importing it registers it after the six above.
from . import erasure as _erasure  # noqa: E402,F401
