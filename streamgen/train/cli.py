"""``streamgen train --config FILE [--out DIR] [--max-steps N] [--resume [STATE] | --init PIPELINE]``."""

from __future__ import annotations

import shutil
from pathlib import Path


def _seed_checkpoint(state: Path, out: Path) -> None:
    """Copy the state file ``state`` (new or legacy format, checked to load safely first) into ``out``'s fresh
    checkpoint folder."""
    from .checkpoint import find_state, load_state, state_file_name
    from .trainer import CHECKPOINT

    if not state.is_file():
        raise SystemExit(f"--resume {state}: no such checkpoint file")
    if find_state(out / CHECKPOINT) is not None:
        raise SystemExit(f"--resume {state}: {out} already holds a checkpoint; pass --resume alone, or another --out")
    load_state(state)  # a file that is not a training state, or would run code, is refused before anything is written
    target = out / CHECKPOINT / state_file_name(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(state, target)


def cmd_train(args) -> int:
    from .config import load_config
    from .trainer import train

    config = load_config(args.config)
    if args.out:
        config.output_dir = args.out
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    if getattr(args, "threads", None) is not None:  # streamgen --threads N train ...: wins over torch_threads
        config.torch_threads = args.threads
    if args.init and args.resume:
        raise SystemExit("--init and --resume exclude each other: --resume continues a checkpoint, --init starts anew")
    if isinstance(args.resume, str):  # a state file from elsewhere (another run, another machine)
        from ..process_group import process_state

        state = process_state(config.device)  # a launched run's processes: the main one copies, the others wait
        if state.is_main_process:
            _seed_checkpoint(Path(args.resume), Path(config.output_dir))
        state.wait_for_everyone()
    out = train(config, resume=bool(args.resume), init=args.init)
    from ..process_group import process_state

    if process_state(config.device).is_main_process:
        print(f"trained to step {config.max_steps}: {out} (pipeline: {out / 'pipeline'})")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a causal video model (chunk-causal flow matching) from a YAML config",
        description="Train a causal video model by chunk-causal flow matching, as a YAML config says (data, model, "
                    "noise, optimizer); the output folder gets a loss log, resumable checkpoints and an exported "
                    "pipeline folder.",
    )
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/train/shapeworld-tiny.yaml)")
    p.add_argument("--out", help="output folder (overrides output_dir): log, checkpoint, exported pipeline")
    p.add_argument("--max-steps", type=int, help="override max_steps (also the length of the LR schedule)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="STATE",
                   help="continue from the output folder's latest checkpoint, or from STATE (a state.safetensors or a "
                        "legacy state.pt) copied into a fresh "
                        "output folder")
    p.add_argument("--init", metavar="PIPELINE",
                   help="start from a pipeline folder's transformer weights (model and EMA), with a fresh optimizer "
                        "and LR schedule: fine-tune the embedded model (streamgen/pipelines/shapeworld-tiny)")
    p.set_defaults(func=cmd_train)
