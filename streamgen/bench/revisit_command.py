"""The ``streamgen bench revisit`` command line (building the parser imports neither torch nor the bench)."""

from __future__ import annotations

__all__ = ["register_cli", "cmd_revisit", "METHOD_NAMES"]

# streamgen.bench.revisit.METHODS, named here for --help without importing torch (a test keeps the two equal)
METHOD_NAMES = ("coverage", "greedy", "fov", "recency", "fused", "none", "truth")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--away must be chunk counts separated by commas, e.g. 4,8,16; got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 256:
        raise ValueError(f"--away counts must be 1..256, got {text!r}")
    return values


def cmd_revisit(args) -> int:
    from .revisit import METHODS, format_table, run_revisit, write_json

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    if not 1 <= args.trials <= 1000 or not 2 <= args.capacity <= 4096 or not 1 <= args.k <= 16:
        raise ValueError("--trials must be 1..1000, --capacity 2..4096 and --k 1..16")
    rows = run_revisit(away=_int_list(args.away), trials=args.trials, capacity=args.capacity, k=args.k,
                       methods=methods, seed=args.seed)
    print("memory only: the pool holds the true frames, each revisit view is rebuilt from its anchors alone "
          f"({args.trials} flights per row, pool {args.capacity} frames, k={args.k})")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def register_cli(bench) -> None:
    p = bench.add_parser("revisit", help="what each geometric memory option brings back of a revisited place",
                         description="Fly over a camera-world place, away for N chunks and back along the same "
                                     "poses; rebuild each revisit view from the memory's anchors (true frames in "
                                     "the pool, no model) and score coverage, PSNR and the oracle's objects.")
    p.add_argument("--away", default="4,8,16", help="chunks flown away before the revisit (default: 4,8,16)")
    p.add_argument("--trials", type=int, default=16, help="flights per distance (default: 16)")
    p.add_argument("--capacity", type=int, default=32, help="memory pool frames (default: 32)")
    p.add_argument("--k", type=int, default=4, help="anchors per chunk, the first frame included (default: 4)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHOD_NAMES)} (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.set_defaults(func=cmd_revisit)
