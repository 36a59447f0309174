"""The ``streamgen`` command: generate, demo, info, bench, convert, train.

Building the parser imports nothing heavy (no torch, no diffusers), so ``streamgen --help`` answers at once; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .loading import DTYPES, int_list, open_pipeline
from .progress import quiet_loading
from .resources import find_pipeline, pipeline_names, pipeline_path, preset_names
from .threads import use_default_threads

DEFAULT_OUT = "out.mp4"
SNAPSHOT_EVERY = 10  # chunks between a run's snapshots (a snapshot costs about one cache's worth of disk writes)
DESCRIPTION = "Interactive streaming video generation: a causal video model streams chunk by chunk while you switch " \
              "prompts."
EPILOG = "Run 'streamgen COMMAND -h' for a command's options. Without --pipeline, commands use the embedded " \
         "ShapeWorld model."


def _schedule(args):
    from .schedule import Schedule, ScheduleError, load_schedules

    if (args.prompt is None) == (args.prompts is None):
        raise SystemExit("pass exactly one of --prompt TEXT or --prompts FILE")
    if args.prompt is not None:
        return Schedule.single(args.prompt)
    try:
        schedules = load_schedules(args.prompts, switch_frame_indices=args.switch_frame_indices)
    except ScheduleError as err:
        raise SystemExit(f"error: {err}") from None
    if args.index is None:  # every line: None says so when there are several
        return schedules[0] if len(schedules) == 1 else None
    if not 0 <= args.index < len(schedules):
        raise SystemExit(f"--index {args.index}: {args.prompts} holds {len(schedules)} schedule(s)")
    return schedules[args.index]


def _generate_every_line(args) -> int:
    """A multi-line prompt file without --index: one video per line into the folder --out names (out.mp4 -> out/),
    as ``python -m streamgen.batch`` makes them (resumable, with a manifest)."""
    from .batch import main as batch

    one_video = [flag for flag, value in (("--switch", args.switch), ("--steps", args.steps),
                                          ("--guidance-scale", args.guidance_scale), ("--height", args.height),
                                          ("--width", args.width), ("--init-image", args.init_image),
                                          ("--init-video", args.init_video), ("--camera", args.camera))
                 if value is not None]
    if one_video or args.dtype != "fp32":
        raise ValueError(f"{', '.join(one_video) or '--dtype'}: not for a whole prompt file ({args.prompts} holds "
                         "several lines); give --index N for one line's video")
    out = Path(args.out or DEFAULT_OUT)
    argv = ["--prompts", args.prompts, "--out-dir", str(out.with_suffix("") if out.suffix else out),
            "--frames", str(args.frames)]
    for flag, value in (("--pipeline", args.pipeline), ("--cache", args.cache), ("--seed", args.seed),
                        ("--switch-frame-indices", args.switch_frame_indices)):
        if value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return batch(argv + (["--cpu"] if args.device == "cpu" else []))


def _pipeline_config(folder: Path) -> dict:
    """A pipeline folder's model_index.json (what can be known before loading), {} if it has none."""
    try:
        return json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}


def _check_numbers(args) -> None:
    """Numbers a command can refuse before loading anything."""
    for flag in ("frames", "height", "width", "steps"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be at least 1, got {value}")
    guidance = getattr(args, "guidance_scale", None)
    if guidance is not None and not (math.isfinite(guidance) and guidance > 0):
        raise ValueError(f"--guidance-scale must be a positive number, got {guidance}")
    seed = getattr(args, "seed", None) or 0
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"--seed must fit in 64 bits, got {seed}")


class GenerationFailed(RuntimeError):
    """A run that failed after writing frames: the message says where they are."""


def cmd_generate(args) -> int:
    from .prompts import MAX_PROMPT_CHARS, check_prompt_length
    from .signals import StopSignals
    from .video_io import check_free_space, check_output_path

    if args.resume is not None:
        return _resume_generate(args)
    # Everything that can be refused without the model is refused before it loads: numbers, the schedule, prompt
    # lengths (the limit is in model_index.json) and the output path.
    _check_numbers(args)
    schedule = _schedule(args)
    if schedule is None:
        return _generate_every_line(args)
    folder = find_pipeline(args.pipeline)
    config = _pipeline_config(folder)
    limit = int(config.get("max_prompt_chars", MAX_PROMPT_CHARS))
    for i, segment in enumerate(schedule.segments):
        check_prompt_length(segment.prompt, limit, "--prompt" if args.prompt is not None else f"{args.prompts}: "
                                                                                              f"segment {i}'s prompt")
    camera = _camera_track(args)
    if camera is not None and args.weave == "context" and args.cache is None:
        args.cache = "camera-context"
    out = Path(args.out or DEFAULT_OUT)
    partial = check_output_path(out)
    with StopSignals() as stops:
        import torch

        pipe = open_pipeline(folder, args.device, args.dtype)
        if args.threads is None:
            use_default_threads(pipe)
        # --seed wins; else the schedule's own (a JSONL line's "seed"), else 0. It seeds the stream once.
        seed = args.seed if args.seed is not None else schedule.seed if schedule.seed is not None else 0
        generator = torch.Generator().manual_seed(seed)
        stream = pipe.stream(
            schedule=schedule, num_frames=args.frames, cache=args.cache, switch=args.switch, height=args.height,
            width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
            generator=generator, image=args.init_image, video=args.init_video, camera=camera,
        )
        # Free space is judged once the model has accepted the size (a size it refuses is the error to report).
        default_height, default_width = pipe.default_size()
        height, width = args.height or default_height, args.width or default_width
        check_free_space(out, estimated_bytes=args.frames * height * width * 3 // 8)  # ~1/8 of raw RGB
        snapshots = None
        if args.snapshot is not None:
            from .resumable_run import RunRecord, Snapshotter

            every = args.snapshot_every or SNAPSHOT_EVERY
            record = RunRecord(str(folder), args.device, args.dtype, str(out.resolve()), 0, every)
            snapshots = Snapshotter(Path(args.snapshot), record)
        return _write_stream(pipe, stream, out, partial, stops, snapshots)


def _camera_track(args):
    """The CameraTrack of ``--camera FILE`` with its ``--weave`` and depth (``--depth-model``, else the camera world's
    ground), or None without ``--camera``."""
    if args.camera is None:
        if args.weave != "encoder" or args.depth_model is not None:
            flag = "--weave" if args.weave != "encoder" else "--depth-model"
            raise ValueError(f"{flag} is for a camera stream: give --camera FILE")
        return None
    from .camera_control import CameraTrack

    camera = CameraTrack.from_json(args.camera)
    if args.depth_model is not None:  # real footage: each frame's depth from a depth model
        from .geometry.estimators import TransformersDepth

        camera.depth_estimator = TransformersDepth(args.depth_model, output=args.depth_output, scale=args.depth_scale,
                                                   device=args.device)
    else:  # a camera file has no depth: an anchor model's memory takes the camera world's ground
        from .world.camera import ground_depth

        camera.depth_fn = ground_depth
    camera.weave = args.weave
    camera.__post_init__()  # re-checks the weave against the file's retrieval
    return camera


def _resume_generate(args) -> int:
    """``generate --resume DIR``: go on from the run's snapshot, keeping the video's frames up to it (a camera run
    takes its ``--camera FILE`` and depth options again: the depth source is not in the snapshot)."""
    from .resumable_run import Snapshotter, keep_frames_before, open_resume
    from .signals import StopSignals
    from .video_io import check_output_path

    given = [flag for flag, value in (("--prompt", args.prompt), ("--prompts", args.prompts), ("--cache", args.cache),
                                      ("--init-image", args.init_image), ("--init-video", args.init_video))
             if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: a resumed run goes on with its snapshot's schedule and preset")
    directory = Path(args.resume)
    snapshot, record, out = open_resume(directory, args.out)
    partial = check_output_path(out)
    with StopSignals() as stops:
        pipe = open_pipeline(Path(record.pipeline), record.device, record.dtype)
        if args.threads is None:
            use_default_threads(pipe)
        stream = pipe.resume(snapshot, camera=_camera_track(args))
        record = keep_frames_before(directory, record, out, args.snapshot_every)
        print(f"resumed {snapshot} at chunk {stream.chunks}: {record.prefix_frames} video frames kept in "
              f"{directory / record.prefix}", file=sys.stderr)
        snapshots = Snapshotter(Path(args.snapshot or directory), record)
        return _write_stream(pipe, stream, out, partial, stops, snapshots)


def _write_stream(pipe, stream, out: Path, partial: Path, stops, snapshots) -> int:
    """Generate ``stream`` into ``out``: frames go to out.mp4.partial, each chunk on disk before the next is
    generated (a killed run leaves it playable, and an earlier out.mp4 whole); it replaces out.mp4 when the run ends
    as asked or is stopped. ``snapshots`` (or None) writes the run's snapshot every few chunks."""
    from .prompts import shorten
    from .signals import Stopped
    from .video_io import Mp4StreamWriter

    writer = Mp4StreamWriter(partial, fps=pipe.config.fps)
    try:
        for chunk in stream:
            frames = chunk.frames[0]
            with stops.deferred():  # a Ctrl-C lands between chunks, never inside a frame or a snapshot
                writer.write(frames)
                if snapshots is not None:
                    snapshots.after_chunk(stream, writer.frames_written)
            last = chunk.latent_start + chunk.latents.shape[2] - 1
            print(f"chunk {chunk.index}: latent frames {chunk.latent_start}-{last}, {writer.frames_written} "
                  f"video frames written | {shorten(chunk.prompt)}", file=sys.stderr, flush=True)
    except Stopped as stop:
        kept = _finish(writer, partial, out, stops, snapshots)
        print(f"stopped: {kept} frames kept in {out if kept else partial}", file=sys.stderr)
        return stop.exit_code
    except Exception as err:  # NaN output, a full disk, ffmpeg gone: keep what is decodable, say where
        raise GenerationFailed(f"{_failure(err, partial)}; {_salvage(writer, partial, out, stops)}") from err
    kept = _finish(writer, partial, out, stops, snapshots)
    print(f"wrote {out} ({kept} frames, {pipe.config.fps:g} fps)")
    return 0


def _finish(writer, partial: Path, out: Path, stops, snapshots=None) -> int:
    """Close the video and move it onto ``out`` (atomically: ``out`` is the old or the new video, never half),
    after the frames a resumed run kept from before its snapshot; the number of frames ``out`` holds."""
    from .resumable_run import finish_video

    with stops.ignored():
        try:
            writer.close()
        except Exception as err:
            raise GenerationFailed(f"{_failure(err, partial)}; {_salvage(writer, partial, out, stops)}") from err
        if snapshots is not None:
            return finish_video(snapshots.directory, snapshots.record, partial, out, writer.frames_written)
        if writer.frames_written:
            os.replace(partial, out)
    return writer.frames_written


def _salvage(writer, partial: Path, out: Path, stops) -> str:
    """After a failure: cut ``partial`` after its last whole frame and say how many frames it keeps; ``out`` (an
    earlier video, if any) is left as it was."""
    from .video_io import mp4_complete_prefix

    with stops.ignored():
        try:
            writer.close()
        except Exception:
            pass  # the failure being reported is the one that matters
        if not partial.is_file():
            return "no frames were written"
        with open(partial, "r+b") as f:
            end, frames = mp4_complete_prefix(f)
            f.truncate(end)
    earlier = f"; {out} is unchanged" if out.exists() else ""
    return f"{frames} decodable frames kept in {partial}{earlier}"


def _failure(err: BaseException, partial: Path) -> str:
    from .video_io import FfmpegError

    return f"writing {partial} failed ({err.reason})" if isinstance(err, FfmpegError) else _one_line(err)


def _one_line(err: BaseException, limit: int = 1000) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def _configs_only(folder: Path) -> bool:
    """A pipeline folder of configs without weights (e.g. the shipped wan2.1-1.3b)."""
    return not any(f.suffix in (".safetensors", ".bin") for f in (folder / "transformer").glob("*"))


def _snapshot_size(sizes, preset, num_latent_frames: int, height: int, width: int) -> str:
    from .snapshot import stream_snapshot_bytes

    try:
        count = stream_snapshot_bytes(sizes, preset, num_latent_frames, height, width)
    except ValueError:
        return "- (generate would refuse this stream: see the warning below)"
    except (TypeError, RuntimeError, OverflowError):  # sizes past what a tensor can have
        return "- (too large for any tensor)"
    when = (f"for the whole stream of {num_latent_frames:,} latent frames (this preset keeps them all)"
            if preset.needs_stream_length else "the same at every frame")
    return f"{count:,} bytes of tensors, {when} (cache, latent history, mechanisms, prompt K/V, decoder state)"


def cmd_info(args) -> int:
    import torch

    from .tiny import random_pipeline_from_configs

    _check_numbers(args)
    folder = find_pipeline(args.pipeline)
    dtype = getattr(torch, DTYPES[args.dtype])
    configs_only = _configs_only(folder)
    pipe = random_pipeline_from_configs(folder, device="meta", dtype=dtype) if configs_only else \
        open_pipeline(folder, dtype=args.dtype)
    # Sizes are counted on a meta-device copy: nothing is allocated, whatever the model and preset.
    sizes = pipe if configs_only else random_pipeline_from_configs(folder, device="meta", dtype=dtype)
    t = pipe.transformer
    height, width = args.height or pipe.config.height, args.width or pipe.config.width
    spatial = pipe.vae_scale_factor_spatial
    tpf = t.tokens_per_frame(height // spatial, width // spatial)
    preset = pipe.cache_preset(args.cache)
    frames = preset.layout(pipe.num_latent_frames(args.frames) if preset.needs_stream_length else None).num_slots
    itemsize = t.dtype.itemsize
    cache_bytes = 2 * len(t.blocks) * frames * tpf * t.num_heads * t.head_dim * itemsize
    params = sum(p.numel() for p in t.parameters())
    rows = [
        ("pipeline", str(find_pipeline(args.pipeline))),
        ("transformer parameters", f"{params:,}"),
        ("layers / heads / head dim", f"{len(t.blocks)} / {t.num_heads} / {t.head_dim}"),
        ("video size", f"{height}x{width}, {pipe.config.fps:g} fps"),
        ("tokens per latent frame", str(tpf)),
        ("chunk", f"{pipe.config.chunk_frames} latent frames"),
        ("cache preset", f"{preset.name}: " + ", ".join(f"{r.name} {r.frames or 'auto'}" for r in preset.regions)),
        ("cache budget", f"{cache_bytes:,} bytes ({frames} latent frames, batch 1, {t.dtype})"),
        ("snapshot", _snapshot_size(sizes, preset, pipe.num_latent_frames(args.frames), height, width)),
    ]
    parts = [(what, getattr(pipe, name, None)) for name, what in (("camera_encoder", "camera encoder"),
                                                                   ("controller", "weaving controller"))]
    rows[2:2] = [(f"{what} parameters", f"{sum(p.numel() for p in module.parameters()):,}")
                 for what, module in parts if module is not None]  # a camera model's parts (docs/camera-world.md)
    if configs_only:
        rows[0] = ("pipeline", f"{folder} (configs only: sizes without weights)")
    width_ = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width_}}  {value}")
    try:  # the thresholds at which generate refuses the stream
        pipe.check_memory(preset, pipe.num_latent_frames(args.frames), height, width)
    except ValueError as err:
        print(f"warning: {err}", file=sys.stderr)
    for flag, value in (("height", height), ("width", width)):
        if value > pipe.max_size():
            print(f"warning: --{flag} {value} is more than this model's largest size, {pipe.max_size()}; generate "
                  "refuses it", file=sys.stderr)
    return 0


def cmd_bench_speed(args) -> int:
    import torch

    from .bench.speed import compare, compare_table, run_speed_benchmark, summarize, write_json

    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    caches = [name.strip() for name in args.compare.split(",")] if args.compare else None
    if caches is not None and not all(caches):
        raise ValueError(f"--compare {args.compare!r}: a comma-separated list of cache presets")

    if args.preset:
        folder = pipeline_path(args.preset)
        if not args.random_weights:
            raise SystemExit("--preset is a configs-only folder: add --random-weights (speed does not depend on weights)")
        from .tiny import random_pipeline_from_configs

        pipe = random_pipeline_from_configs(folder, device=args.device, dtype=getattr(torch, DTYPES[args.dtype]))
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = open_pipeline(args.pipeline, args.device, args.dtype)
    if args.threads is None:
        use_default_threads(pipe)
    if args.attention:
        pipe.transformer.set_attention_backend(args.attention)
    if args.compile:
        pipe.transformer.compile_blocks()
    stream = dict(prompt=args.prompt, num_frames=args.frames, seed=args.seed, height=args.height, width=args.width,
                  num_inference_steps=args.steps)
    if caches or args.repeat > 1 or args.baseline:
        if caches and args.cache:
            raise ValueError("--cache and --compare: give the presets to --compare only")
        rows = compare(pipe, caches or [args.cache], repeat=args.repeat, baseline=args.baseline, **stream)
        print(compare_table(rows))
        if args.json:
            write_json({"attention": args.attention or "native", "compiled": args.compile, "preset": args.preset,
                        "rows": rows}, args.json)
        return 0
    result = run_speed_benchmark(pipe, cache=args.cache, **stream)
    result.update(attention=args.attention or "native", compiled=args.compile, preset=args.preset)
    print(summarize(result))
    if args.json:
        write_json(result, args.json)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser where an option's help may end in a list that costs a heavy import (the switch strategies
    live behind torch): the action's ``late_help`` function runs only when help is printed."""

    def format_help(self) -> str:
        for action in self._actions:
            if getattr(action, "late_help", None):
                action.help, action.late_help = action.help + action.late_help(), None
        return super().format_help()


def _switch_strategies() -> str:
    from .cache import SWITCH_STRATEGIES

    return ": " + " | ".join(SWITCH_STRATEGIES)


def _add_verbose(parser: argparse.ArgumentParser, default=False) -> None:
    """``-v`` before or after the command name: the subcommands' copies default to SUPPRESS so that they never
    overwrite the top-level value."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show diffusers' / transformers' loading progress bars")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                _add_verbose(subparser, argparse.SUPPRESS)


def _add_threads(parser: argparse.ArgumentParser, default=None) -> None:
    """``--threads`` before or after the command name (``streamgen bench speed --threads 1``), as ``-v``."""
    parser.add_argument("--threads", type=int, default=default,
                        help="torch CPU threads (default: the pipeline's torch_threads, else 1 for a model under "
                             "100M parameters and the physical cores for a larger one)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                _add_threads(subparser, argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamgen", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, frames_default):
        shipped = ", ".join(pipeline_names(with_weights=True))
        p.add_argument("--pipeline", help=f"pipeline folder, or a shipped one by name ({shipped}; "
                                          "default: the embedded model)")
        p.add_argument("--frames", type=int, default=frames_default, help="number of video frames")
        p.add_argument("--cache", help="cache preset: a YAML path or a shipped preset "
                                       f"({', '.join(preset_names())}; default: the pipeline's)")
        p.add_argument("--height", type=int)
        p.add_argument("--width", type=int)

    gen = sub.add_parser("generate", help="generate a video, written to mp4 chunk by chunk",
                         description="Generate a video from a prompt or a prompt schedule; each chunk is written "
                                     "to the mp4 as soon as it is generated.")
    common(gen, 48)
    gen.add_argument("--prompt", help="one prompt for the whole video")
    gen.add_argument("--prompts", help="schedule file: .yaml/.json, LongLive .jsonl, or .txt (Echo-Forcing lines, or "
                     "one plain prompt per line)")
    gen.add_argument("--index", type=int, help="which schedule of a multi-line file (default: every line, one "
                     "video each, into the folder --out names: out.mp4 -> out/, resumable as streamgen.batch)")
    gen.add_argument("--switch-frame-indices", type=int_list,
                     help="LongLive JSONL switch points in latent frames, comma-separated")
    gen.add_argument("--switch", help="switch strategy override (default: the preset's)").late_help = \
        _switch_strategies
    gen.add_argument("--steps", type=int, help="Euler sampler steps (default: the pipeline's sampler)")
    gen.add_argument("--guidance-scale", type=float,
                     help="classifier-free guidance scale (default: the pipeline's; 1 = off)")
    gen.add_argument("--seed", type=int, help="seeds the video once (default: the schedule's own seed, e.g. a JSONL "
                     "line's \"seed\", else 0; --seed wins over it)")
    gen.add_argument("--init-image", help="continue this picture: it becomes the stream's first frame(s) of context")
    gen.add_argument("--init-video", help="continue this clip (read with decord, resized/cropped to the model size)")
    gen.add_argument("--camera", metavar="FILE", help="camera poses, JSON {\"intrinsics\": {fx, fy, cx, cy, width, "
                     "height}, \"poses\": [4x4 camera_to_world per latent frame, init clip first]}; needs a pipeline "
                     "with a camera_encoder (past the poses the camera holds still)")
    gen.add_argument("--weave", choices=("encoder", "controller", "context"), default="encoder",
                     help="with --camera: how the geometric memory reaches the model: the camera encoder's anchors "
                          "(default), the pipeline's weaving controller, or the retrieved frames' K/V in the cache "
                          "(cache preset camera-context unless --cache names another)")
    gen.add_argument("--depth-model", metavar="FOLDER",
                     help="with --camera: the geometric memory's depth estimated from each frame by this transformers "
                          "depth-estimation model (a local folder, safetensors; default: the camera world's ground)")
    gen.add_argument("--depth-output", choices=("metric", "disparity"), default="metric",
                     help="with --depth-model: its prediction is depth (default) or relative inverse depth")
    gen.add_argument("--depth-scale", type=float, default=1.0,
                     help="with --depth-model: depth = scale x prediction, or scale / prediction for disparity")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    gen.add_argument("--out", help=f"the video (default: {DEFAULT_OUT}; with --resume, the snapshot's run's)")
    gen.add_argument("--snapshot", metavar="DIR", help="keep the stream's snapshot in DIR (every --snapshot-every "
                     "chunks), so that --resume DIR can go on from it after a crash")
    gen.add_argument("--snapshot-every", type=int, metavar="N",
                     help=f"chunks between snapshots (default: {SNAPSHOT_EVERY}; a resumed run: as before)")
    gen.add_argument("--resume", metavar="DIR", help="go on from the snapshot in DIR, keeping the video's frames "
                     "up to it (same pipeline, schedule and preset; the video is joined without re-encoding)")
    gen.set_defaults(func=cmd_generate)

    from .bench.quality import register_cli as register_quality
    from .bench.quality.erase_command import register_cli as register_erase
    from .bench.camera_command import register_cli as register_camera_benches
    from .convert import register_cli as register_convert
    from .demo import register_cli as register_demo
    from .train import register_cli as register_train

    register_demo(sub)

    info = sub.add_parser("info", help="model size, tokens per frame and cache budget of a pipeline",
                          description="Print a pipeline's size, tokens per latent frame and a cache preset's memory.")
    common(info, 81)
    info.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights' dtype the sizes are for")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="benchmarks: speed (FPS, latency, memory) and quality (oracle scores)",
                           description="Benchmarks of a pipeline: 'speed' times one long stream, 'quality' reads "
                                       "generated ShapeWorld videos back with the oracle.")
    bench = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    speed = bench.add_parser("speed", help="FPS, latency, memory and overhead of one stream",
                             description="FPS, first-chunk and per-chunk latency, memory and pipeline overhead of "
                                         "one long stream.")
    common(speed, 300)
    speed.add_argument("--prompt", default="a red circle drifting left over a blue backdrop")
    speed.add_argument("--steps", type=int, help="Euler steps (default: the pipeline's sampler)")
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--device", default="cpu")
    speed.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    speed.add_argument("--preset", help="a shipped configs-only pipeline, e.g. wan2.1-1.3b (with --random-weights)")
    speed.add_argument("--random-weights", action="store_true", help="build the --preset model with random weights")
    speed.add_argument("--attention", help="diffusers attention backend: native, flash, _native_flash, xformers, ...")
    speed.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks' feed-forwards")
    speed.add_argument("--repeat", type=int, default=1, help="rounds; with more than 1, a table of medians and spreads")
    speed.add_argument("--compare", metavar="PRESET,...", help="cache presets timed in one run, interleaved round by "
                       "round, printed as one table")
    speed.add_argument("--baseline", choices=["recompute"], help="add a row for the same model with no cache, "
                       "re-running the whole window the (first) preset's cache holds at every step")
    speed.add_argument("--json", help="write the full result here")
    speed.set_defaults(func=cmd_bench_speed)

    register_quality(bench)
    register_camera_benches(bench)
    register_convert(sub)
    register_train(sub)
    register_erase(sub)
    _add_verbose(parser)
    _add_threads(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure is one ``error:`` line on stderr (2: bad input, 1: a failure while running),
    Ctrl-C / SIGTERM one ``stopped`` line (exit 130 / 143), never a traceback."""
    from .signals import Stopped

    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        with quiet_loading(not args.verbose):
            return args.func(args)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"stopped ({stop})", file=sys.stderr)
        return stop.exit_code
    except ValueError as err:  # bad input
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, MemoryError) as err:  # failed while running: loading, writing, the model
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
