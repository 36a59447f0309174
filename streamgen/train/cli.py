"""``streamgen train --config FILE [--out DIR] [--max-steps N] [--resume [STATE] | --init PIPELINE]``.

A config without a ``trainer:`` key trains the causal video model (:mod:`streamgen.train.trainer`,
:class:`~streamgen.train.config.TrainConfig`). ``trainer: NAME`` picks another trainer from :data:`TRAINERS`, whose
config dataclass takes the file's other keys (``extends:`` works as for the main trainer's).
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any, NamedTuple


class TrainerEntry(NamedTuple):
    """A trainer that ``trainer: NAME`` selects, imported on use (the parser stays free of torch): in ``module``, the
    config dataclass ``config`` (fields ``init``, ``out``, ``steps``, ``threads``, ``device``, which ``--init``,
    ``--out``, ``--max-steps`` and ``--threads`` set; a ``validate()`` returning it) and the entry point ``train``:
    ``train(config, resume=bool, init=PIPELINE or None) -> output folder``."""

    module: str
    config: str
    train: str = "train"


TRAINERS: dict[str, TrainerEntry] = {
    "camera": TrainerEntry("streamgen.train.camera", "CameraTrainConfig"),
    "weave": TrainerEntry("streamgen.train.weave", "WeaveTrainConfig"),
}


def load_trainer_config(path: str | Path) -> tuple[str | None, Any]:
    """(trainer name, its config) of a training YAML: (None, a :class:`TrainConfig`) without a ``trainer:`` key, else
    the named trainer's config dataclass built from the other keys; an unknown key is a one-line ValueError naming it
    and the file."""
    from .config import _read, checked, config_from_dict

    values = _read(Path(path))
    if "trainer" not in values:
        return None, config_from_dict(values, str(path))
    name = values.pop("trainer")
    if name not in TRAINERS:
        raise ValueError(f"{path}: trainer {name!r} is not one of {sorted(TRAINERS)} (or no trainer: key for the "
                         "causal video model)")
    entry = TRAINERS[name]
    return name, checked(getattr(importlib.import_module(entry.module), entry.config), values, str(path))


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


def _train_other(name: str, config, args) -> int:
    """``streamgen train`` for a config with ``trainer: NAME``."""
    entry = TRAINERS[name]
    if args.out:
        config.out = args.out
    if args.max_steps is not None:
        config.steps = args.max_steps
    if getattr(args, "threads", None) is not None:  # streamgen --threads N train ...: wins over the config's
        config.threads = args.threads
    if args.init and args.resume:
        raise SystemExit("--init and --resume exclude each other: --resume continues a checkpoint, --init starts anew")
    config.validate()
    from ..process_group import barrier, process_state

    state = process_state(config.device)
    if isinstance(args.resume, str):  # a state file from elsewhere: the main process copies it, the others wait
        if state.is_main_process:
            _seed_checkpoint(Path(args.resume), Path(config.out))
        barrier(state)
    train = getattr(importlib.import_module(entry.module), entry.train)
    out = Path(train(config, resume=bool(args.resume), init=args.init))
    if state.is_main_process:
        print(f"trained to step {config.steps}: {out} (pipeline: {out / 'pipeline'})")
    return 0


def cmd_train(args) -> int:
    from .trainer import train

    name, config = load_trainer_config(args.config)
    if name is not None:
        return _train_other(name, config, args)
    if args.out:
        config.output_dir = args.out
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    if getattr(args, "threads", None) is not None:  # streamgen --threads N train ...: wins over torch_threads
        config.torch_threads = args.threads
    if args.init and args.resume:
        raise SystemExit("--init and --resume exclude each other: --resume continues a checkpoint, --init starts anew")
    if isinstance(args.resume, str):  # a state file from elsewhere (another run, another machine)
        from ..process_group import barrier, process_state

        state = process_state(config.device)  # a launched run's processes: the main one copies, the others wait
        if state.is_main_process:
            _seed_checkpoint(Path(args.resume), Path(config.output_dir))
        barrier(state)
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
                    "pipeline folder. A config with 'trainer: camera' trains a camera model instead "
                    "(configs/train/shapeworld-cam-tiny.yaml), 'trainer: weave' a weaving controller over a frozen "
                    "camera model (configs/train/shapeworld-cam-weave.yaml).",
    )
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/train/shapeworld-tiny.yaml)")
    p.add_argument("--out", help="output folder (overrides output_dir, or out): log, checkpoint, exported pipeline")
    p.add_argument("--max-steps", type=int,
                   help="override max_steps (also the length of the LR schedule), or a trainer: config's steps")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="STATE",
                   help="continue from the output folder's latest checkpoint, or from STATE (a state.safetensors or a "
                        "legacy state.pt) copied into a fresh "
                        "output folder")
    p.add_argument("--init", metavar="PIPELINE",
                   help="start from a pipeline folder's transformer weights (model and EMA), with a fresh optimizer "
                        "and LR schedule: fine-tune the embedded model (streamgen/pipelines/shapeworld-tiny)")
    p.set_defaults(func=cmd_train)
