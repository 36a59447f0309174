"""``streamgen bench revisit`` and ``streamgen bench camera``: the camera world's benchmarks on the command line
(building the parser imports neither torch nor the benches)."""

from __future__ import annotations

__all__ = ["register_cli", "cmd_revisit", "cmd_camera", "METHOD_NAMES"]

# streamgen.bench.revisit.METHODS, named here for --help without importing torch (a test keeps the two equal)
METHOD_NAMES = ("coverage", "greedy", "fov", "recency", "fused", "none", "truth")
MODEL_MEMORY_NAMES = ("coverage", "greedy", "fov", "recency", "fused", "none")  # streamgen.bench.revisit.MODEL_MEMORIES


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--away must be chunk counts separated by commas, e.g. 4,8,16; got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 256:
        raise ValueError(f"--away counts must be 1..256, got {text!r}")
    return values


def _depth_note(args) -> str:
    note = f"; depth off by a per-frame scale error, sigma {args.depth_error:g}" if args.depth_error else ""
    note += f"; depth warped within each frame, sigma {args.depth_warp:g}" if args.depth_warp else ""
    return note + ("; each frame's depth aligned to the pool's scale" if args.align_depth else "")


def cmd_revisit(args) -> int:
    from ..geometry.depth_error import DepthError
    from .revisit import METHODS, format_table, run_revisit, write_json

    DepthError(args.depth_error, warp=args.depth_warp)  # a bad sigma is refused before anything runs
    if args.pipeline is not None:
        return _model_revisit(args)
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    if not 1 <= args.trials <= 1000 or not 2 <= args.capacity <= 4096 or not 1 <= args.k <= 16:
        raise ValueError("--trials must be 1..1000, --capacity 2..4096 and --k 1..16")
    rows = run_revisit(away=_int_list(args.away), trials=args.trials, capacity=args.capacity, k=args.k,
                       methods=methods, seed=args.seed, depth_error=args.depth_error, depth_warp=args.depth_warp,
                       align_depth=args.align_depth)
    print("memory only: the pool holds the true frames, each revisit view is rebuilt from its anchors alone "
          f"({args.trials} flights per row, pool {args.capacity} frames, k={args.k}{_depth_note(args)})")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def _model_revisit(args) -> int:
    import dataclasses
    import json

    from ..loading import open_pipeline
    from .revisit import MODEL_MEMORIES, format_model_table, memory_speed, run_model_revisit

    memories = tuple(args.methods.split(",")) if args.methods else tuple(MODEL_MEMORIES)
    unknown = [m for m in memories if m not in MODEL_MEMORIES]
    if unknown:
        raise ValueError(f"unknown memory {unknown[0]!r} for a camera model; choose from {', '.join(MODEL_MEMORIES)}")
    if not 1 <= args.trials <= 1000:
        raise ValueError("--trials must be 1..1000")
    away = _int_list(args.away)
    pipe = open_pipeline(args.pipeline)
    if args.weave == "controller" and pipe.controller is None:
        raise ValueError(f"{args.pipeline}: --weave controller needs a pipeline with a weaving controller")
    if args.weave != "encoder" and "fused" in memories:
        raise ValueError(f"--weave {args.weave} takes the retrieved frames one by one: leave 'fused' out of --methods")
    if args.weave == "context" and args.cache is None:
        args.cache = "camera-context"
    if args.weave == "encoder" and (pipe.camera_encoder is None or not pipe.camera_encoder.takes_anchors):
        raise ValueError(f"{args.pipeline}: the revisit with a model needs a camera model that takes anchors")
    rows = run_model_revisit(pipe, away=away, trials=args.trials, memories=memories, cache=args.cache,
                             seed=args.seed, weave=args.weave, controller_every=args.controller_every,
                             depth_error=args.depth_error, depth_warp=args.depth_warp, align_depth=args.align_depth)
    every = f", run every {args.controller_every} passes" if args.weave == "controller" else ""
    print(f"revisit with {args.pipeline} (memory through the {args.weave}{every}): 9 true frames of a place, then the model flies on under the camera; the "
          "last chunk, back over ground the flight has seen, is scored against the true frames "
          f"({args.trials} held-out flights per row; straight: away N chunks and back; two-pass: the place's band "
          f"between two parallel passes{_depth_note(args)})")
    print(format_model_table(rows))
    result = {"rows": [dataclasses.asdict(r) for r in rows]}
    if args.speed:
        import statistics

        if not 30 <= args.speed <= 100_000:
            raise ValueError("--speed must be 30..100000 frames")
        fps = memory_speed(pipe, memories=memories, frames=args.speed, rounds=3, cache=args.cache, weave=args.weave,
                           controller_every=args.controller_every)
        from .revisit import PLAIN_MODEL

        reference = PLAIN_MODEL if PLAIN_MODEL in fps else "none"
        base = statistics.median(fps[reference]) if reference in fps else None
        print(f"\nspeed: a {args.speed}-frame flight per memory option, 3 interleaved rounds, median FPS")
        print(f"| memory | FPS (median) | rounds | against {reference} |")
        print("| --- | --- | --- | --- |")
        for name, values in fps.items():
            median = statistics.median(values)
            ratio = f"{median / base - 1:+.1%}" if base else "-"
            print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {ratio} |")
        result["speed"] = fps
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def cmd_camera(args) -> int:
    from .camera_follow import follow_camera
    from ..loading import open_pipeline

    if not 1 <= args.trials <= 1000 or not 1 <= args.chunks <= 256 or not 1 <= args.context <= 256:
        raise ValueError("--trials must be 1..1000, --chunks 1..256 and --context 1..256")
    pipe = open_pipeline(args.pipeline)
    if pipe.camera_encoder is None:
        raise ValueError(f"{args.pipeline or 'the default pipeline'} has no camera_encoder: give a camera-trained "
                         "pipeline folder")
    results = follow_camera(pipe, trials=args.trials, context=args.context, chunks=args.chunks, cache=args.cache,
                            seed=args.seed)
    print(f"camera following: {args.trials} held-out flights, {args.context} true frames, then {args.chunks} "
          "chunks under the camera")
    print("| video | shift error (px) | within 0.5 px | frames measured | objects in place | PSNR (dB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r.shift_error_px:.2f} | {r.within_half_px:.1%} | {r.scored:.1%} | {r.objects:.1%} | "
              f"{r.psnr:.1f} |")
    if args.json:
        import dataclasses
        import json

        with open(args.json, "w") as f:
            json.dump({k: dataclasses.asdict(v) for k, v in results.items()}, f, indent=1)
    return 0


def register_cli(bench) -> None:
    p = bench.add_parser("revisit", help="what each geometric memory option brings back of a revisited place",
                         description="Fly over a camera-world place, away for N chunks and back along the same "
                                     "poses; rebuild each revisit view from the memory's anchors (true frames in "
                                     "the pool, no model) and score coverage, PSNR and the oracle's objects.")
    p.add_argument("--pipeline", help="a camera model that takes anchors: run it in the loop (without: the memory "
                   "alone, on true frames)")
    p.add_argument("--cache", help="with --pipeline: cache preset (default: the pipeline's)")
    p.add_argument("--weave", choices=("encoder", "controller", "context"), default="encoder",
                   help="with --pipeline: the memory reaches the model through the camera encoder's anchor input "
                        "(default), the pipeline's weaving controller (AnchorWeave's), or the retrieved frames' K/V in "
                        "the cache (context-as-memory; cache preset camera-context unless --cache names another)")
    p.add_argument("--controller-every", type=int, default=1, metavar="N",
                   help="with --weave controller: run the controller every N passes of a chunk and reuse its "
                        "injections between (default 1: every pass, as AnchorWeave)")
    p.add_argument("--speed", type=int, metavar="FRAMES", help="with --pipeline: also time each memory option over "
                   "a FRAMES-frame flight (3 interleaved rounds; run with --threads 1 on a quiet machine)")
    p.add_argument("--away", default="4,8,16", help="chunks flown away before the revisit (default: 4,8,16)")
    p.add_argument("--trials", type=int, default=16, help="flights per distance (default: 16)")
    p.add_argument("--capacity", type=int, default=32, help="memory pool frames (default: 32)")
    p.add_argument("--k", type=int, default=4, help="anchors per chunk, the first frame included (default: 4)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHOD_NAMES)} (with --pipeline: of "
                   f"{','.join(MODEL_MEMORY_NAMES)}; default: all)")
    p.add_argument("--depth-error", type=float, default=0.0, metavar="SIGMA",
                   help="the memory's depth is the true depth times a per-frame scale error exp(N(0, SIGMA)), as a "
                        "monocular estimator's would be (default 0: exact)")
    p.add_argument("--depth-warp", type=float, default=0.0, metavar="SIGMA",
                   help="also warp each frame's depth within the frame by exp of a smooth N(0, SIGMA) field (4 x 4 "
                        "cells, bilinear), an estimator's error no rescaling removes (default 0)")
    p.add_argument("--align-depth", action="store_true",
                   help="the memory rescales each frame's depth to the pool's scale as it takes the frame in "
                        "(streamgen's; AnchorWeave does not)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.set_defaults(func=cmd_revisit)

    c = bench.add_parser("camera", help="does a camera model follow its camera (camera world, oracle-read)",
                         description="Continue true camera-world flights under their camera track and measure the "
                                     "generated frames' shift against the commanded one, the objects kept in place, "
                                     "and PSNR, beside a video that holds the last true frame and the truth.")
    c.add_argument("--pipeline", help="a pipeline folder with a camera_encoder")
    c.add_argument("--trials", type=int, default=8, help="flights (default: 8)")
    c.add_argument("--context", type=int, default=9, help="true frames before generating (default: 9)")
    c.add_argument("--chunks", type=int, default=6, help="chunks generated per flight (default: 6)")
    c.add_argument("--cache", help="cache preset (default: the pipeline's)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", help="write the results here")
    c.set_defaults(func=cmd_camera)
