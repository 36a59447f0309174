"""Merging a LoRA into converted weights: ``W <- W + scale * B @ A``, ``scale = alpha / rank``.

Layout (what LongLive and Anchor Forcing save: ``peft.get_peft_model_state_dict`` of the transformer wrapped by
``peft.get_peft_model``, stored as ``{"generator_lora": ..., "critic_lora": ..., "step": ...}`` or bare)::

    base_model.model.blocks.0.self_attn.q.lora_A.weight   [rank, in]
    base_model.model.blocks.0.self_attn.q.lora_B.weight   [out, rank]

Targets are every ``nn.Linear`` inside the attention blocks (``self_attn.{q,k,v,o}``, ``cross_attn.{q,k,v,o}``,
``ffn.0``, ``ffn.2``), named in the original Wan layout; they are renamed with the same table as the weights.
Also accepted: PEFT's un-filtered names (``lora_A.default.weight``), ``lora_down`` / ``lora_up`` with per-module
``.alpha`` tensors, targets already in diffusers naming, and a PEFT folder (``adapter_model.safetensors`` +
``adapter_config.json`` with ``r``, ``lora_alpha``, ``alpha_pattern``, ``use_rslora``).

LongLive's and Anchor Forcing's files carry no alpha: their configs set ``rank: 256, alpha: 256`` and their LoRA
code falls back to ``alpha = rank``, so for those formats a missing alpha means ``alpha = rank`` (scale 1).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .checkpoints import TRAINING_ENTRIES, is_lora_dict, read_file
from .errors import ConversionError, listing
from .keys import strip_wrappers, to_diffusers

_PAIR_KEY = re.compile(r"^(?P<target>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<target>.+)\.alpha$")
_KIND = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B"}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


@dataclass
class LoraFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    entry: str | None
    adapter_config: dict | None
    notes: list[str] = field(default_factory=list)


@dataclass
class LoraReport:
    """What was merged: pairs, ranks, scales and where alpha came from."""

    path: str
    pairs: int
    ranks: list[int]
    scales: list[float]
    alpha_source: str
    notes: list[str] = field(default_factory=list)


def read_lora(path: str | Path) -> LoraFile:
    path = Path(path)
    adapter_config_path = None
    if path.is_dir():
        files = [path / n for n in ADAPTER_FILES if (path / n).is_file()]
        if not files:
            raise ConversionError(f"the LoRA folder {path} holds none of {', '.join(ADAPTER_FILES)}")
        weights_path = files[0]
        adapter_config_path = path / "adapter_config.json"
    else:
        weights_path = path
        if path.name.startswith("adapter_model"):
            adapter_config_path = path.with_name("adapter_config.json")
    adapter_config = None
    if adapter_config_path is not None and adapter_config_path.is_file():
        try:
            adapter_config = json.loads(adapter_config_path.read_text())
        except ValueError as err:
            raise ConversionError(f"{adapter_config_path} is not valid JSON ({' '.join(str(err).split())})") from None
    obj = read_file(weights_path, "LoRA file")
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"the LoRA file {weights_path} holds a {type(obj).__name__}, not a LoRA state dict")
    notes = []
    if "generator_lora" in obj:
        entry, tensors = "generator_lora", obj["generator_lora"]
        if "critic_lora" in obj:
            notes.append("ignored the critic's LoRA (critic_lora)")
    elif is_lora_dict(obj):
        entry, tensors = None, obj
    else:
        found = [k for k in TRAINING_ENTRIES if k in obj]
        if found:
            raise ConversionError(
                f"the --lora file {weights_path} is a full model checkpoint (it holds {', '.join(found)}), not a LoRA: "
                f"pass it as --ckpt, and the LoRA (LongLive's lora.pt, Anchor Forcing's final.pt) as --lora"
            )
        raise ConversionError(
            f"the --lora file {weights_path} holds no LoRA weights (no lora_A / lora_B pairs); its entries are "
            f"{listing(map(str, obj))}"
        )
    if not isinstance(tensors, Mapping) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ConversionError(f"the {entry or 'LoRA'} entry of {weights_path} is not a state dict of tensors")
    return LoraFile(weights_path, dict(tensors), entry, adapter_config, notes)


def _pairs(lora: LoraFile) -> tuple[dict[str, dict], list[str]]:
    pairs: dict[str, dict] = {}
    unexpected, adapters = [], set()
    for key, tensor in lora.tensors.items():
        name = strip_wrappers(key)
        match = _PAIR_KEY.match(name)
        if match:
            pairs.setdefault(match["target"], {})[_KIND[match["kind"]]] = tensor
            if match["adapter"]:
                adapters.add(match["adapter"])
            continue
        match = _ALPHA_KEY.match(name)
        if match and tensor.numel() == 1:
            pairs.setdefault(match["target"], {})["alpha"] = float(tensor.float().item())
            continue
        unexpected.append(key)
    if unexpected:
        dora = any("lora_magnitude" in k for k in unexpected)
        raise ConversionError(
            f"the LoRA file {lora.path} holds entries that are not LoRA pairs: {listing(unexpected)}"
            + (" (DoRA magnitude vectors are not supported)" if dora else "")
        )
    if len(adapters) > 1:
        raise ConversionError(f"the LoRA file {lora.path} holds several adapters ({', '.join(sorted(adapters))})")
    incomplete = [
        f"{t} (no {'lora_B' if 'A' in p else 'lora_A'})" for t, p in pairs.items() if not ("A" in p and "B" in p)
    ]
    if incomplete:
        raise ConversionError(f"the LoRA file {lora.path} has incomplete pairs: {listing(incomplete)}")
    if not pairs:
        raise ConversionError(f"the LoRA file {lora.path} holds no LoRA pairs")
    return pairs, sorted(adapters)


def _pattern_value(patterns: Mapping, target: str):
    for pattern, value in (patterns or {}).items():
        if target == pattern or target.endswith("." + pattern) or re.fullmatch(pattern, target):
            return value
    return None


def merge_lora(
    sd: dict[str, torch.Tensor],
    lora: LoraFile,
    *,
    rank: int | None,
    alpha: float | None,
    alpha_defaults_to_rank: bool,
    format_name: str,
) -> LoraReport:
    """Merge ``lora`` into ``sd`` (diffusers names) in place. Every pair must land on a 2-d weight of ``sd``."""
    pairs, _ = _pairs(lora)
    config = lora.adapter_config or {}
    if config.get("use_dora"):
        raise ConversionError(f"{lora.path}: DoRA adapters (use_dora) are not supported")
    rslora = bool(config.get("use_rslora"))

    targets, missed, bad_shapes, rank_errors = {}, [], [], []
    for target, pair in pairs.items():
        module = to_diffusers(target)
        if module is None and f"{target}.weight" in sd:  # already in diffusers naming
            module = target
        if module is None or f"{module}.weight" not in sd:
            missed.append(target)
            continue
        weight, a, b = sd[f"{module}.weight"], pair["A"], pair["B"]
        if weight.ndim != 2 or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (
            (b.shape[0], a.shape[1]) != tuple(weight.shape)
        ):
            bad_shapes.append(
                f"{target}: A {list(a.shape)} / B {list(b.shape)} vs weight {list(weight.shape)}"
            )
            continue
        expected_rank = rank
        if expected_rank is None:
            expected_rank = _pattern_value(config.get("rank_pattern"), target) or config.get("r")
        if expected_rank is not None and int(expected_rank) != a.shape[0]:
            rank_errors.append((target, a.shape[0]))
        targets[target] = module
    if missed:
        raise ConversionError(
            f"{len(missed)} LoRA pair(s) in {lora.path} hit no weight of the model: {listing(missed)}; every pair must "
            f"target a linear layer of the transformer (a LoRA for another model or another model size?)"
        )
    if bad_shapes:
        raise ConversionError(f"LoRA pairs in {lora.path} do not fit their weights: {listing(bad_shapes)}")
    if rank_errors:
        wanted = rank if rank is not None else config.get("r")
        source = "--lora-rank" if rank is not None else "adapter_config.json"
        found = sorted({r for _, r in rank_errors})
        raise ConversionError(
            f"{source} says rank {wanted} but {len(rank_errors)} LoRA pair(s) in {lora.path} have rank "
            f"{', '.join(map(str, found))} (e.g. {rank_errors[0][0]})"
        )

    sources, ranks, scales = set(), set(), set()
    for target, module in targets.items():
        pair = pairs[target]
        r = pair["A"].shape[0]
        if alpha is not None:
            a, source = float(alpha), "--lora-alpha"
        elif "alpha" in pair:
            a, source = pair["alpha"], "the file's alpha tensors"
        elif _pattern_value(config.get("alpha_pattern"), target) is not None:
            a, source = float(_pattern_value(config["alpha_pattern"], target)), "adapter_config.json"
        elif config.get("lora_alpha") is not None:
            a, source = float(config["lora_alpha"]), "adapter_config.json"
        elif alpha_defaults_to_rank:
            a, source = float(r), f"alpha = rank ({format_name}'s released config and LoRA code)"
        else:
            raise ConversionError(
                f"the LoRA file {lora.path} does not say its alpha (no adapter_config.json, no alpha tensors): pass "
                f"--lora-alpha A (and --lora-rank R to check the rank); the merge uses scale = alpha / rank"
            )
        scale = a / math.sqrt(r) if rslora else a / r
        weight = sd[f"{module}.weight"]
        delta = pair["B"].to(torch.float32) @ pair["A"].to(torch.float32)
        sd[f"{module}.weight"] = (weight.to(torch.float32) + scale * delta).to(weight.dtype)
        sources.add(source)
        ranks.add(r)
        scales.add(scale)
    return LoraReport(
        path=str(lora.path),
        pairs=len(targets),
        ranks=sorted(ranks),
        scales=sorted(scales),
        alpha_source="; ".join(sorted(sources)),
        notes=list(lora.notes) + (["rsLoRA scaling (alpha / sqrt(rank))"] if rslora else []),
    )
