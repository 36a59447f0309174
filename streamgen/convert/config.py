"""The diffusers ``WanTransformer3DModel`` config of a converted checkpoint: read off the tensors, from a pipeline's
``transformer/config.json``, or from overrides, and checked against each other."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping

from .errors import ConversionError, listing
from .keys import describe

# Wan's published sizes all use heads of 128 channels: 1.3B (dim 1536, 12 heads), 14B (5120, 40), 2.2 5B (3072, 24).
KNOWN_HEADS = {1536: 12, 5120: 40, 3072: 24}
WAN_HEAD_DIM = 128

DEFAULTS: dict[str, Any] = {
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}

# The original Wan ``config.json`` (``WanModel``) -> diffusers names.
_ORIGINAL_CONFIG_NAMES = {
    "num_heads": "num_attention_heads",
    "in_dim": "in_channels",
    "out_dim": "out_channels",
}
_DERIVED = (
    "patch_size", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm",
)


def _init_parameters() -> set[str]:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    return {p for p in inspect.signature(WanTransformer3DModel.__init__).parameters if p != "self"}


def load_config_source(config: Mapping | str | Path | None, what: str) -> dict:
    """A config given as a dict or a JSON file, in diffusers or original-Wan naming, as diffusers keys."""
    if config is None:
        return {}
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConversionError(f"cannot read the {what} {path}: {err}") from None
        if not isinstance(config, dict):
            raise ConversionError(f"the {what} {path} is not a JSON object")
    known = _init_parameters()
    out: dict[str, Any] = {}
    dim = config.get("dim")
    for key, value in config.items():
        key = _ORIGINAL_CONFIG_NAMES.get(key, key)
        if key == "qk_norm" and value is True:
            value = "rms_norm_across_heads"
        if key in known:
            out[key] = list(value) if key == "patch_size" else value
    if dim is not None and "num_attention_heads" in out and "attention_head_dim" not in out:
        out["attention_head_dim"] = int(dim) // int(out["num_attention_heads"])
    return out


def _shape(sd: Mapping, name: str, ndim: int, original_layout: bool) -> tuple[int, ...]:
    shape = tuple(sd[name].shape)
    if len(shape) != ndim:
        raise ConversionError(
            f"{describe(name, original_layout)} has shape {list(shape)}, a Wan transformer has a {ndim}-d tensor there"
        )
    return shape


def tensor_config(sd: Mapping, original_layout: bool) -> dict[str, Any]:
    """Everything the tensors themselves say about the architecture (diffusers names in ``sd``)."""
    required = [
        "patch_embedding.weight",
        "proj_out.weight",
        "condition_embedder.text_embedder.linear_1.weight",
        "condition_embedder.time_embedder.linear_1.weight",
        "blocks.0.ffn.net.0.proj.weight",
    ]
    missing = [describe(n, original_layout) for n in required if n not in sd]
    if missing:
        raise ConversionError(
            f"the checkpoint lacks tensors every Wan transformer has ({listing(missing)}); it is not a Wan "
            f"transformer checkpoint in the expected layout"
        )
    inner, in_channels, *patch = _shape(sd, "patch_embedding.weight", 5, original_layout)
    out_features, _ = _shape(sd, "proj_out.weight", 2, original_layout)
    patch_volume = patch[0] * patch[1] * patch[2]
    blocks = {int(n.split(".")[1]) for n in sd if n.startswith("blocks.") and n.split(".")[1].isdigit()}
    return {
        "inner_dim": inner,
        "patch_size": list(patch),
        "in_channels": in_channels,
        "out_channels": out_features // patch_volume,
        "text_dim": _shape(sd, "condition_embedder.text_embedder.linear_1.weight", 2, original_layout)[1],
        "freq_dim": _shape(sd, "condition_embedder.time_embedder.linear_1.weight", 2, original_layout)[1],
        "ffn_dim": _shape(sd, "blocks.0.ffn.net.0.proj.weight", 2, original_layout)[0],
        "num_layers": max(blocks) + 1,
        "cross_attn_norm": any(n.startswith("blocks.") and n.endswith(".norm2.weight") for n in sd),
    }


def resolve_config(derived: dict[str, Any], source: dict[str, Any], source_name: str) -> dict[str, Any]:
    """The full diffusers config: ``source`` (base pipeline and/or overrides) where given, the tensors elsewhere;
    any disagreement between the two is an error."""
    inner = derived["inner_dim"]
    config = dict(DEFAULTS)
    config.update(source)
    if "num_attention_heads" in source:
        heads = int(source["num_attention_heads"])
        head_dim = int(source.get("attention_head_dim", inner // heads if heads else 0))
    elif "attention_head_dim" in source:
        head_dim = int(source["attention_head_dim"])
        heads = inner // head_dim if head_dim else 0
    elif inner in KNOWN_HEADS:
        heads, head_dim = KNOWN_HEADS[inner], inner // KNOWN_HEADS[inner]
    elif inner % WAN_HEAD_DIM == 0:
        heads, head_dim = inner // WAN_HEAD_DIM, WAN_HEAD_DIM
    else:
        raise ConversionError(
            f"cannot tell the number of attention heads of a transformer of width {inner} (Wan models use heads of "
            f"{WAN_HEAD_DIM} channels, which do not divide it): pass --num-heads N, or --base-pipeline with a "
            f"matching transformer/config.json"
        )
    mismatches = []
    if heads <= 0 or heads * head_dim != inner:
        mismatches.append(f"{heads} heads x {head_dim} channels = {heads * head_dim} but the tensors are {inner} wide")
    for key in _DERIVED:
        if key in source and source[key] is not None and _normal(source[key]) != _normal(derived[key]):
            mismatches.append(f"{key}: checkpoint {derived[key]}, config {source[key]}")
        config[key] = derived[key]
    if mismatches:
        raise ConversionError(f"the checkpoint does not match {source_name}: {'; '.join(mismatches)}")
    config.update(num_attention_heads=heads, attention_head_dim=head_dim)
    return config


def _normal(value):
    return list(value) if isinstance(value, (list, tuple)) else value
