"""Parameter names: training-wrapper prefixes, and the original Wan layout <-> diffusers' ``WanTransformer3DModel``.

The original Wan code (``WanModel``, and the ``CausalWanModel`` of Self-Forcing / LongLive / Anchor Forcing / Echo
Forcing, which keeps its parameter names) names parameters like this; on the right, diffusers' names::

    patch_embedding.{weight,bias}              patch_embedding.{weight,bias}
    text_embedding.0 / .2                      condition_embedder.text_embedder.linear_1 / linear_2
    time_embedding.0 / .2                      condition_embedder.time_embedder.linear_1 / linear_2
    time_projection.1                          condition_embedder.time_proj
    blocks.N.self_attn.{q,k,v,o}               blocks.N.attn1.{to_q,to_k,to_v,to_out.0}
    blocks.N.self_attn.norm_{q,k}              blocks.N.attn1.norm_{q,k}
    blocks.N.cross_attn.*                      blocks.N.attn2.*              (same renames as self_attn)
    blocks.N.norm3  (affine, before cross-attn) blocks.N.norm2
    blocks.N.norm2  (FFN norm, no parameters)  blocks.N.norm3               (norm1 stays norm1, no parameters)
    blocks.N.ffn.0 / .2                        blocks.N.ffn.net.0.proj / ffn.net.2
    blocks.N.modulation                        blocks.N.scale_shift_table
    head.head                                  proj_out
    head.modulation                            scale_shift_table

Renames are exact (whole dot-separated module paths), never substring replacements, so a name that is not in this
table is reported instead of being silently half-renamed. Image-conditioning weights (``img_emb``, ``k_img``, ...)
are deliberately not mapped: the streaming model is text-to-video only.
"""

from __future__ import annotations

import re

# Training wrappers that insert a path segment anywhere in a name (FSDP1 nesting wraps every block).
WRAPPER_SEGMENTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
# Containers that prefix the model's own names: DDP (``module.``), Self-Forcing's WanDiffusionWrapper
# (``model.``), PEFT (``base_model.model.``), ComfyUI-style files (``model.diffusion_model.``), diffusers LoRAs
# (``transformer.``). None of these is a top-level module name of Wan in either layout.
LEADING_SEGMENTS = frozenset({"module", "model", "base_model", "diffusion_model", "transformer"})

_TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
_TOP_PARAMETERS = {"head.modulation": "scale_shift_table"}

_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
_BLOCK_MODULES = {
    **{f"self_attn.{a}": f"attn1.{b}" for a, b in _ATTENTION.items()},
    **{f"cross_attn.{a}": f"attn2.{b}" for a, b in _ATTENTION.items()},
    "norm1": "norm1",
    "norm3": "norm2",  # the affine LayerNorm in front of cross-attention
    "norm2": "norm3",  # the FFN's LayerNorm (no parameters in Wan)
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMETERS = {"modulation": "scale_shift_table"}

_INV_TOP_MODULES = {v: k for k, v in _TOP_MODULES.items()}
_INV_TOP_PARAMETERS = {v: k for k, v in _TOP_PARAMETERS.items()}
_INV_BLOCK_MODULES = {v: k for k, v in _BLOCK_MODULES.items()}
_INV_BLOCK_PARAMETERS = {v: k for k, v in _BLOCK_PARAMETERS.items()}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
PARAMETER_SUFFIXES = ("weight", "bias")


def strip_wrappers(name: str) -> str:
    """Drop training-wrapper segments anywhere and container prefixes at the front of a parameter name."""
    parts = [p for p in name.split(".") if p not in WRAPPER_SEGMENTS]
    while len(parts) > 1 and parts[0] in LEADING_SEGMENTS:
        parts.pop(0)
    return ".".join(parts)


def _rename(name: str, modules: dict, parameters: dict, block_modules: dict, block_parameters: dict) -> str | None:
    match = _BLOCK.match(name)
    prefix, rest = (f"blocks.{match.group(1)}.", match.group(2)) if match else ("", name)
    mods, params = (block_modules, block_parameters) if match else (modules, parameters)
    if rest in params:
        return prefix + params[rest]
    if rest in mods:  # a module path (LoRA targets)
        return prefix + mods[rest]
    module, _, leaf = rest.rpartition(".")
    if leaf in PARAMETER_SUFFIXES and module in mods:
        return f"{prefix}{mods[module]}.{leaf}"
    return None


def to_diffusers(name: str) -> str | None:
    """Diffusers name of an original-layout parameter or module path (wrappers already stripped); None if unknown."""
    return _rename(name, _TOP_MODULES, _TOP_PARAMETERS, _BLOCK_MODULES, _BLOCK_PARAMETERS)


def to_original(name: str) -> str | None:
    """Inverse of :func:`to_diffusers`."""
    return _rename(name, _INV_TOP_MODULES, _INV_TOP_PARAMETERS, _INV_BLOCK_MODULES, _INV_BLOCK_PARAMETERS)


def is_diffusers_layout(names) -> bool:
    """True when a state dict already uses diffusers' names (e.g. a ``transformer/`` folder's weights)."""
    return any(n.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in n for n in names)


def describe(diffusers_name: str, original_layout: bool) -> str:
    """A name for error messages, in the layout the user's file uses."""
    if original_layout:
        original = to_original(diffusers_name)
        if original is not None:
            return original
    return diffusers_name
