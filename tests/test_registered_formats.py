"""The shared battery of checkpoint formats: every registered format converts a tiny checkpoint written in its own
layout (its best weight entry beside the others, its LoRA if it takes one) into a pipeline folder that equals
diffusers' own conversion, names its default cache and generates. A new format is tested by registering it: nothing
here names one. The worked example of CONTRIBUTING.md ("Add a checkpoint format") runs through the same battery."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from streamgen import CausalWanTransformer3DModel, StreamingVideoPipeline
from streamgen.cache import load_preset
from streamgen.convert import FORMATS, ConversionError, convert
from test_convert import (  # noqa: F401  (wan_diffusers_folder is a fixture)
    assert_same_weights, original_weights, peft_lora, reference_model, wan_diffusers_folder, with_prefix,
)

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
LORA_RANK = 4


def write_checkpoint(fmt, folder: Path, seed: int) -> tuple[Path, dict]:
    """A checkpoint in ``fmt``'s layout; returns its path and the original-layout weights the generator must get."""
    weights = original_weights(seed)
    if not fmt.weight_entries:
        save_file(weights, folder / "model.safetensors")
        return folder / "model.safetensors", weights
    # Every entry the format knows, the others with other weights: the best one must be picked.
    checkpoint = {entry: with_prefix(original_weights(seed + 1 + k)) for k, entry in enumerate(fmt.weight_entries)}
    checkpoint[fmt.weight_entries[0]] = with_prefix(weights)
    torch.save(checkpoint, folder / "model.pt")
    return folder / "model.pt", weights


def check_format(fmt, folder: Path, base_pipeline: Path) -> None:
    ckpt, weights = write_checkpoint(fmt, folder, seed=40)
    lora, alpha, scale = None, None, None
    if fmt.accepts_lora:
        lora = peft_lora(50, rank=LORA_RANK)
        torch.save({"generator_lora": lora}, folder / "lora.pt")
        alpha = None if fmt.lora_alpha_is_rank else 2.0 * LORA_RANK  # the file says no alpha: the format's rule, or the flag
        scale = 1.0 if fmt.lora_alpha_is_rank else 2.0
    result = convert(fmt.name, ckpt, lora=folder / "lora.pt" if lora else None, lora_alpha=alpha,
                     base_pipeline=base_pipeline, out=folder / "out")
    assert result.format == fmt.name and result.pipeline
    assert result.source == (fmt.weight_entries[0] if fmt.weight_entries else "state dict")
    assert_same_weights(CausalWanTransformer3DModel.from_pretrained(folder / "out" / "transformer"),
                        reference_model(weights, lora, scale or 1.0))

    index = json.loads((folder / "out" / "model_index.json").read_text())
    assert index["default_cache"] == fmt.default_cache
    load_preset(fmt.default_cache)  # a shipped preset
    pipe = StreamingVideoPipeline.from_pretrained(folder / "out")
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle", num_frames=9, height=32, width=32, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()

    if not fmt.accepts_lora:
        torch.save({"generator_lora": peft_lora(51)}, folder / "lora.pt")
        with pytest.raises(ConversionError, match="no LoRA"):
            convert(fmt.name, ckpt, lora=folder / "lora.pt", out=folder / "refused")
    if fmt.released_lora:
        base_only = convert(fmt.name, ckpt, out=folder / "base-only", config={"num_attention_heads": 2})
        assert any(fmt.released_lora[1] in note for note in base_only.notes)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_registered_format_converts_its_own_layout_into_a_pipeline(name, tmp_path, wan_diffusers_folder):
    check_format(FORMATS[name], tmp_path, wan_diffusers_folder)


def guide_example(section: str) -> str:
    """The first ```python block of the CONTRIBUTING.md section ``section``."""
    text = CONTRIBUTING.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_guide_s_worked_example_registers_a_format_the_battery_converts(tmp_path, wan_diffusers_folder):
    before = dict(FORMATS)
    try:
        exec(guide_example("Add a checkpoint format"), {})
        (new,) = [FORMATS[name] for name in FORMATS if name not in before]
        check_format(new, tmp_path, wan_diffusers_folder)
    finally:
        FORMATS.clear()
        FORMATS.update(before)
