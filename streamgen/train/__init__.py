"""Training of streamgen's causal video models: ``streamgen train --config configs/train/shapeworld-tiny.yaml``."""

from .cli import register_cli
from .config import TrainConfig, config_from_dict, load_config
from .data import CaptionEncoder, ClipSource, FolderVideoClips
from .trainer import Trainer, build_transformer, sample_sigmas, train

__all__ = ["register_cli", "TrainConfig", "config_from_dict", "load_config", "CaptionEncoder", "ClipSource",
           "FolderVideoClips", "Trainer", "build_transformer", "sample_sigmas", "train"]
