"""Training of streamgen's causal video models: ``streamgen train --config configs/train/shapeworld-tiny.yaml``.

``register_cli`` is light; the rest is imported on first use, so that building the ``streamgen`` parser does not
import torch.
"""

import importlib

from .cli import register_cli

_EXPORTS = {
    "TrainConfig": "config", "config_from_dict": "config", "load_config": "config",
    "CaptionEncoder": "data", "ClipSource": "data", "FolderVideoClips": "data",
    "Trainer": "trainer", "build_transformer": "trainer", "sample_sigmas": "trainer", "train": "trainer",
}

__all__ = ["register_cli", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
