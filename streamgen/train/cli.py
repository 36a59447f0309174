"""``streamgen train --config FILE [--out DIR] [--max-steps N] [--resume]``."""

from __future__ import annotations


def cmd_train(args) -> int:
    from .config import load_config
    from .trainer import train

    config = load_config(args.config)
    if args.out:
        config.output_dir = args.out
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    out = train(config, resume=args.resume)
    print(f"trained to step {config.max_steps}: {out} (pipeline: {out / 'pipeline'})")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a causal video model (chunk-causal flow matching) from a YAML config")
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/train/shapeworld-tiny.yaml)")
    p.add_argument("--out", help="output folder (overrides output_dir): log, checkpoint, exported pipeline")
    p.add_argument("--max-steps", type=int, help="override max_steps (also the length of the LR schedule)")
    p.add_argument("--resume", action="store_true", help="continue from the output folder's latest checkpoint")
    p.set_defaults(func=cmd_train)
