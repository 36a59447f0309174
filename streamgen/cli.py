"""The ``streamgen`` command: generate, demo, info, bench, convert, train.

Building the parser imports nothing heavy (no torch, no diffusers), so ``streamgen --help`` answers at once; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .loading import DTYPES, open_pipeline
from .progress import quiet_loading
from .resources import find_pipeline, pipeline_names, pipeline_path, preset_names

DESCRIPTION = "Interactive streaming video generation: a causal video model streams chunk by chunk while you switch " \
              "prompts."
EPILOG = "Run 'streamgen COMMAND -h' for a command's options. Without --pipeline, commands use the embedded " \
         "ShapeWorld model."


def int_list(text: str) -> list[int]:
    """argparse type for comma-separated integers, e.g. LongLive's switch frame indices."""
    return [int(x) for x in text.split(",")]


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
    if not 0 <= args.index < len(schedules):
        raise SystemExit(f"--index {args.index}: {args.prompts} holds {len(schedules)} schedule(s)")
    return schedules[args.index]


def cmd_generate(args) -> int:
    import torch

    from .video_io import Mp4StreamWriter

    schedule = _schedule(args)
    pipe = open_pipeline(args.pipeline, args.device, args.dtype)
    generator = torch.Generator(pipe.transformer.device).manual_seed(args.seed)
    stream = pipe.stream(
        schedule=schedule, num_frames=args.frames, cache=args.cache, switch=args.switch, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance_scale, generator=generator,
        image=args.init_image, video=args.init_video,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    # Each chunk is on disk before the next is generated: killing the process leaves a playable file.
    with Mp4StreamWriter(out, fps=pipe.config.fps) as writer:
        for chunk in stream:
            frames = chunk.frames[0]
            writer.write(frames)
            written += len(frames)
            print(
                f"chunk {chunk.index}: latent frames {chunk.latent_start}-{chunk.latent_start + chunk.latents.shape[2] - 1}"
                f", {written} video frames written | {chunk.prompt}",
                file=sys.stderr, flush=True,
            )
    print(f"wrote {out} ({written} frames, {pipe.config.fps:g} fps)")
    return 0


def cmd_info(args) -> int:
    pipe = open_pipeline(args.pipeline)
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
    ]
    width_ = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width_}}  {value}")
    return 0


def cmd_bench_speed(args) -> int:
    import torch

    from .bench.speed import run_speed_benchmark, summarize, write_json

    if args.preset:
        folder = pipeline_path(args.preset)
        if not args.random_weights:
            raise SystemExit("--preset is a configs-only folder: add --random-weights (speed does not depend on weights)")
        from .tiny import random_pipeline_from_configs

        pipe = random_pipeline_from_configs(folder, device=args.device, dtype=getattr(torch, DTYPES[args.dtype]))
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = open_pipeline(args.pipeline, args.device, args.dtype)
    if args.attention:
        pipe.transformer.set_attention_backend(args.attention)
    if args.compile:
        pipe.transformer.compile_blocks()
    result = run_speed_benchmark(
        pipe, prompt=args.prompt, num_frames=args.frames, cache=args.cache, seed=args.seed,
        height=args.height, width=args.width, num_inference_steps=args.steps,
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamgen", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--threads", type=int, help="torch CPU threads (small models on a busy CPU: try 1)")
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
    gen.add_argument("--prompts", help="schedule file: .yaml/.json, LongLive .jsonl or Echo-Forcing .txt")
    gen.add_argument("--index", type=int, default=0, help="which schedule of a multi-line file (default 0)")
    gen.add_argument("--switch-frame-indices", type=int_list,
                     help="LongLive JSONL switch points in latent frames, comma-separated")
    gen.add_argument("--switch", help="switch strategy override (default: the preset's)").late_help = \
        _switch_strategies
    gen.add_argument("--steps", type=int, help="Euler sampler steps (default: the pipeline's sampler)")
    gen.add_argument("--guidance-scale", type=float,
                     help="classifier-free guidance scale (default: the pipeline's; 1 = off)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--init-image", help="continue this picture: it becomes the stream's first frame(s) of context")
    gen.add_argument("--init-video", help="continue this clip (read with decord, resized/cropped to the model size)")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    gen.add_argument("--out", default="out.mp4")
    gen.set_defaults(func=cmd_generate)

    from .bench.quality import register_cli as register_quality
    from .convert import register_cli as register_convert
    from .demo import register_cli as register_demo
    from .train import register_cli as register_train

    register_demo(sub)

    info = sub.add_parser("info", help="model size, tokens per frame and cache budget of a pipeline",
                          description="Print a pipeline's size, tokens per latent frame and a cache preset's memory.")
    common(info, 81)
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
    speed.add_argument("--json", help="write the full result here")
    speed.set_defaults(func=cmd_bench_speed)

    register_quality(bench)
    register_convert(sub)
    register_train(sub)
    _add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with quiet_loading(not args.verbose):
            return args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
