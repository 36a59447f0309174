"""The files that ship inside the package: cache presets (``streamgen/presets/*.yaml``) and pipeline folders
(``streamgen/pipelines/<name>/``), found through :mod:`importlib.resources` so a wheel or a non-editable install
has them as well as a checkout.

A user's own preset (a YAML path) or pipeline (a folder) never goes through here: the loaders take paths directly.
Nothing heavy is imported, so the command line's ``--help`` can list the presets cheaply.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

# The embedded default: the trained ShapeWorld model, else the random-weights test pipeline (a trimmed install).
DEFAULT_PIPELINES = ("shapeworld-tiny", "tiny-random")


def _data_dir(name: str) -> Path:
    # A real folder on disk: from_pretrained and yaml need paths, and setuptools installs package data unzipped.
    return Path(str(files("streamgen") / name))


def preset_dir() -> Path:
    """The folder of the shipped cache presets."""
    return _data_dir("presets")


def preset_names() -> list[str]:
    """The shipped cache presets, by name (``rolling``, ``self-forcing``, ...)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of the shipped preset ``name``."""
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown cache preset {name!r}; shipped: {', '.join(preset_names())}")
    return path


def pipeline_names(with_weights: bool = False) -> list[str]:
    """The shipped pipeline folders, by name; ``with_weights``: only those that can generate (``wan2.1-1.3b`` holds
    configs only, for ``bench speed --random-weights``)."""
    folders = [p for p in _data_dir("pipelines").iterdir() if (p / "model_index.json").is_file()]
    if with_weights:
        folders = [p for p in folders if any(p.glob("transformer/*.safetensors"))]
    return sorted(p.name for p in folders)


def pipeline_path(name: str) -> Path:
    """The shipped pipeline folder ``name``."""
    path = _data_dir("pipelines") / name
    if not (path / "model_index.json").is_file():
        raise ValueError(f"unknown shipped pipeline {name!r}; shipped: {', '.join(pipeline_names())}")
    return path


def default_pipeline() -> Path:
    """The embedded pipeline the commands use without ``--pipeline``."""
    for name in DEFAULT_PIPELINES:
        if name in pipeline_names(with_weights=True):
            return pipeline_path(name)
    raise ValueError(f"no embedded pipeline ({' or '.join(DEFAULT_PIPELINES)}) in this install; pass --pipeline DIR")


def find_pipeline(folder_or_name: str | Path | None = None) -> Path:
    """What ``--pipeline`` names: a folder on disk, else a shipped pipeline's name; None: the embedded default."""
    if folder_or_name is None:
        return default_pipeline()
    text = str(folder_or_name)
    if Path(text).is_dir() or "/" in text or os.sep in text:  # a path (even a wrong one) is never taken for a name
        return Path(text)
    if text in pipeline_names():
        return pipeline_path(text)
    raise ValueError(f"{text!r} is neither a folder nor a shipped pipeline; shipped: {', '.join(pipeline_names())}")
