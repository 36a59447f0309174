"""LoRA adapters on the transformer's attention and feed-forward Linear layers, optionally limited to salient
weights; saved and loaded in diffusers' LoRA layout; fused into the weights (several at once for several concepts).

Masked adapters: a Linear's effective weight is ``W + (alpha / rank) (B A) ⊙ M`` with ``M`` the saliency mask, so
only masked entries can ever change, whatever the optimizer does (a mask on the factors' gradients could not
promise that: every entry of ``B A`` depends on whole rows and columns). The product is low-rank before masking,
so the trained factors stay small; the mask itself is saved bit-packed beside them.

File layout (diffusers / peft): ``transformer.<module path>.lora_A.weight`` [rank, in],
``transformer.<module path>.lora_B.weight`` [out, rank], and streamgen's ``transformer.<module path>.lora_mask``
(uint8, the bool mask packed 8 entries to a byte, row-major) for masked adapters; metadata ``format: pt`` and
``lora_adapter_metadata`` (JSON with ``transformer.r``, ``transformer.lora_alpha``, ``transformer.target_modules``),
as ``save_lora_weights`` of diffusers writes them. An unmasked file is an ordinary diffusers Wan LoRA; peft-based
loaders do not know ``lora_mask``, so masked files are for :class:`LoraLoaderMixin`.

Loading reads safetensors only (never a pickle), checks the file's framing before reading it, and checks every key
and shape against the model from the header before any tensor is read: a file can name only modules the model has,
at their shapes, so its size is bounded by the model's. Every problem is one ``ValueError`` line naming the file
and the key.
"""

from __future__ import annotations

import fnmatch
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..weights import MAX_ABS_WEIGHT, safetensors_problem

PREFIX = "transformer."
DOWN, UP, MASK = "lora_A.weight", "lora_B.weight", "lora_mask"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name inside a LoRA folder
CONCEPT_FILE = "concept.json"  # beside it in a folder written by `streamgen erase`: the concept(s) it erases
METADATA_KEY = "lora_adapter_metadata"
# Every Linear of Wan's self-attention, cross-attention and feed-forward, in diffusers' module names.
DEFAULT_TARGETS = (
    "blocks.*.attn1.to_q", "blocks.*.attn1.to_k", "blocks.*.attn1.to_v", "blocks.*.attn1.to_out.0",
    "blocks.*.attn2.to_q", "blocks.*.attn2.to_k", "blocks.*.attn2.to_v", "blocks.*.attn2.to_out.0",
    "blocks.*.ffn.net.0.proj", "blocks.*.ffn.net.2",
)


@dataclass(frozen=True)
class LoraConfig:
    """``rank`` of each adapter; ``alpha``: the delta is scaled by ``alpha / rank`` (peft's convention; alpha =
    rank: no scaling); ``targets``: glob patterns over the transformer's module names selecting the Linear layers to
    adapt (default: every attention and feed-forward Linear of every block); ``init_seed`` seeds the down
    projections (the up projections start at zero, so a new adapter changes nothing)."""

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init_seed: int = 0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {self.alpha}")
        if not self.targets:
            raise ValueError("targets must name at least one module pattern")


class LoraLinear(nn.Module):
    """``base(x) + (alpha / rank) B(A(x))``, or with ``mask`` a Linear of weight ``W + (alpha / rank) (B A) ⊙ M``.
    The base layer is kept as ``base`` (frozen); ``lora_A`` / ``lora_B`` are the factors, named as peft names them."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if mask is not None and tuple(mask.shape) != tuple(base.weight.shape):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(base.weight.shape)}")
        self.base = base
        self.rank, self.alpha = rank, alpha
        # Initialised on the CPU (where ``generator`` lives), as peft does: A as a default Linear, B zero.
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, dtype=torch.float32)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.register_buffer("mask", None if mask is None else mask.to(base.weight.device, torch.bool))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The effective change of the base weight [out, in] (float32)."""
        delta = self.scale * (self.lora_B.weight @ self.lora_A.weight)
        return delta if self.mask is None else delta * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return self.base(x) + (self.scale * self.lora_B(self.lora_A(x.float()))).to(x.dtype)
        return F.linear(x, self.base.weight + self.delta().to(self.base.weight.dtype), self.base.bias)


def target_linears(transformer: nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, nn.Linear]:
    """{module name: Linear} of the modules matching any pattern (adapters already in place: their base layers)."""
    found = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLinear) and any(fnmatch.fnmatchcase(name, t) for t in targets):
            found[name] = module.base
        elif isinstance(module, nn.Linear) and not name.endswith((".base", ".lora_A", ".lora_B")):
            if any(fnmatch.fnmatchcase(name, t) for t in targets):
                found[name] = module
    if not found:
        raise ValueError(f"no Linear layer of the transformer matches the LoRA targets {list(targets)}")
    return found


def target_weights(transformer: nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, nn.Parameter]:
    """{"<module>.weight": weight} of the target Linear layers: the tensors a saliency mask is computed for."""
    return {f"{name}.weight": linear.weight for name, linear in target_linears(transformer, targets).items()}


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def add_lora(transformer: nn.Module, config: LoraConfig = LoraConfig(),
             masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, LoraLinear]:
    """Wrap every target Linear in a :class:`LoraLinear` (masked where ``masks``, keyed ``"<module>.weight"`` as
    :func:`target_weights` and the saliency builder name them, has an entry) and freeze everything else: afterwards
    only the adapters' factors train. Returns {module name: adapter}."""
    if any(isinstance(m, LoraLinear) for m in transformer.modules()):
        raise ValueError("the transformer already has LoRA adapters: save and remove (or fuse) them first")
    linears = target_linears(transformer, config.targets)
    unknown = sorted(set(masks or {}) - {f"{name}.weight" for name in linears})
    if unknown:
        raise ValueError(f"mask for {unknown[0]!r}, which is not a LoRA target weight")
    transformer.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.init_seed)
    adapters = {}
    for name, linear in linears.items():
        mask = (masks or {}).get(f"{name}.weight")
        adapters[name] = LoraLinear(linear, config.rank, config.alpha, mask, generator)
        _set_module(transformer, name, adapters[name])
    return adapters


def remove_lora(transformer: nn.Module) -> None:
    """Put every adapted Linear's base layer back (the adapters' weights are dropped: save or fuse them first)."""
    wrapped = [(name, m) for name, m in transformer.named_modules() if isinstance(m, LoraLinear)]
    for name, adapter in wrapped:
        _set_module(transformer, name, adapter.base)


@dataclass
class LoraWeights:
    """One LoRA: ``down`` {module: A [rank, in]}, ``up`` {module: B [out, rank]}, ``masks`` {module: bool [out, in]}
    for masked modules; the delta of a module is ``(alpha / rank) (B A) ⊙ M``."""

    rank: int
    alpha: float
    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_adapters(cls, adapters: Mapping[str, LoraLinear]) -> "LoraWeights":
        """A detached copy of trained adapters (one rank and alpha for all of them)."""
        ranks = {(a.rank, a.alpha) for a in adapters.values()}
        if len(ranks) != 1:
            raise ValueError(f"adapters of one LoRA must share rank and alpha, got {sorted(ranks)}")
        (rank, alpha), = ranks
        return cls(rank, alpha,
                   {n: a.lora_A.weight.detach().clone() for n, a in adapters.items()},
                   {n: a.lora_B.weight.detach().clone() for n, a in adapters.items()},
                   {n: a.mask.clone() for n, a in adapters.items() if a.mask is not None})

    def delta(self, module: str) -> torch.Tensor:
        delta = (self.alpha / self.rank) * (self.up[module].float() @ self.down[module].float())
        mask = self.masks.get(module)
        return delta if mask is None else delta * mask.to(delta.device)


# ---- files ------------------------------------------------------------------------------------------------------
def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [out, in] -> uint8 [ceil(out * in / 8)], 8 entries a byte, most significant bit first."""
    bits = mask.flatten().to(torch.uint8)
    bits = F.pad(bits, (0, -bits.numel() % 8)).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (bits * weights).sum(1, dtype=torch.uint8)


def _unpack_mask(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    bits = (packed[:, None] >> shifts) & 1
    return bits.flatten()[: math.prod(shape)].view(shape).bool()


def save_lora(weights: LoraWeights, path: str | Path) -> Path:
    """Write ``weights`` as a diffusers LoRA file (see the module docstring); ``path`` a ``.safetensors`` file, or
    a folder that receives ``pytorch_lora_weights.safetensors``. Returns the file written."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / LORA_WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module in sorted(weights.down):
        tensors[f"{PREFIX}{module}.{DOWN}"] = weights.down[module].detach().float().cpu().contiguous()
        tensors[f"{PREFIX}{module}.{UP}"] = weights.up[module].detach().float().cpu().contiguous()
        if module in weights.masks:
            tensors[f"{PREFIX}{module}.{MASK}"] = _pack_mask(weights.masks[module].cpu())
    adapter = {"transformer.r": weights.rank, "transformer.lora_alpha": weights.alpha,
               "transformer.target_modules": sorted(weights.down)}
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(adapter, sort_keys=True)})
    return path


def _rank_and_alpha(path: Path, metadata: dict[str, str] | None, rank: int) -> tuple[int, float]:
    """(rank, alpha) from the file's adapter metadata; without it alpha = rank (diffusers' default)."""
    if not metadata or METADATA_KEY not in metadata:
        return rank, float(rank)
    try:
        adapter = json.loads(metadata[METADATA_KEY])
        declared, alpha = int(adapter.get("transformer.r", rank)), float(adapter.get("transformer.lora_alpha", rank))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: metadata {METADATA_KEY!r} is not valid LoRA metadata ({err})") from None
    if declared != rank:
        raise ValueError(f"{path}: metadata {METADATA_KEY!r} declares rank {declared}, its tensors have rank {rank}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{path}: metadata {METADATA_KEY!r} declares lora_alpha {alpha}, not a positive number")
    return rank, alpha


def _parse_key(path: Path, key: str, linears: Mapping[str, nn.Linear]) -> tuple[str, str]:
    """(module, part) of a key ``transformer.<module>.<part>``; ValueError naming the key otherwise."""
    for part in (DOWN, UP, MASK):
        suffix = "." + part
        if key.startswith(PREFIX) and key.endswith(suffix):
            module = key[len(PREFIX): -len(suffix)]
            if module in linears:
                return module, part
            raise ValueError(f"{path}: key {key!r} names no adaptable Linear layer of this transformer")
    raise ValueError(f"{path}: key {key!r} is not a LoRA key (expected transformer.<module>.lora_A.weight, "
                     f".lora_B.weight or .lora_mask)")


def _expected_shape(part: str, linear: nn.Linear, rank: int) -> tuple[int, ...]:
    if part == DOWN:
        return (rank, linear.in_features)
    if part == UP:
        return (linear.out_features, rank)
    return (math.ceil(linear.out_features * linear.in_features / 8),)


def lora_file(path: str | Path) -> Path:
    """The LoRA file at ``path`` (a folder: its ``pytorch_lora_weights.safetensors``), checked to be a well-framed
    safetensors file before anything reads it; ValueError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise ValueError(f"{path}: no such LoRA file")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: LoRA files are read as .safetensors only (a pickle could run code)")
    problem = safetensors_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return path


def lora_modules(path: str | Path) -> list[str]:
    """The module names a LoRA file or folder adapts, from its safetensors header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(lora_file(path)), framework="pt") as f:
        return sorted(k[len(PREFIX): -len(DOWN) - 1] for k in f.keys() if k.startswith(PREFIX) and k.endswith(DOWN))


def load_lora(path: str | Path, transformer: nn.Module) -> LoraWeights:
    """Read and validate a LoRA file (or folder holding ``pytorch_lora_weights.safetensors``) for ``transformer``.
    Framing, key names, ranks and shapes are checked before any tensor is read; values after."""
    from safetensors import safe_open

    path = lora_file(path)
    linears = target_linears(transformer, ("*",))
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        if not keys:
            raise ValueError(f"{path}: holds no tensors")
        parsed = {key: _parse_key(path, key, linears) for key in keys}
        ranks = {f.get_slice(k).get_shape()[0] for k, (_, part) in parsed.items() if part == DOWN}
        if len(ranks) != 1:
            raise ValueError(f"{path}: its lora_A tensors have ranks {sorted(ranks) or 'none'}, expected one rank")
        rank, alpha = _rank_and_alpha(path, f.metadata(), ranks.pop())
        modules = {module for module, _ in parsed.values()}
        for module in sorted(modules):
            for key in (f"{PREFIX}{module}.{DOWN}", f"{PREFIX}{module}.{UP}"):
                if key not in parsed:
                    raise ValueError(f"{path}: key {key!r} is missing (lora_A and lora_B come in pairs)")
        for key, (module, part) in parsed.items():
            linear = linears[module]
            if part != MASK and not 0 < rank <= min(linear.in_features, linear.out_features):
                raise ValueError(f"{path}: key {key!r}: rank {rank} is outside 1..{min(linear.weight.shape)}")
            shape, expected = tuple(f.get_slice(key).get_shape()), _expected_shape(part, linear, rank)
            if shape != expected:
                raise ValueError(f"{path}: key {key!r} has shape {shape}, this transformer needs {expected}")
        tensors = {key: f.get_tensor(key) for key in keys}
    weights = LoraWeights(rank, alpha, {}, {})
    for key, tensor in tensors.items():
        module, part = parsed[key]
        if part == MASK:
            if tensor.dtype != torch.uint8:
                raise ValueError(f"{path}: key {key!r} is {tensor.dtype}, a packed mask is uint8")
            weights.masks[module] = _unpack_mask(tensor, linears[module].weight.shape)
            continue
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: key {key!r} is {tensor.dtype}, LoRA factors are floating point")
        if not bool(torch.isfinite(tensor).all()) or float(tensor.abs().max()) > MAX_ABS_WEIGHT:
            raise ValueError(f"{path}: key {key!r} holds NaN/inf or values beyond {MAX_ABS_WEIGHT:g}; "
                             "the file is damaged")
        (weights.down if part == DOWN else weights.up)[module] = tensor
    return weights


def check_lora(weights: LoraWeights, transformer: nn.Module) -> None:
    """Every module of ``weights`` is a Linear of ``transformer`` and its factors (and mask) fit it."""
    linears = target_linears(transformer, ("*",))
    for module in sorted(set(weights.down) | set(weights.up) | set(weights.masks)):
        if module not in linears:
            raise ValueError(f"LoRA module {module!r} names no adaptable Linear layer of this transformer")
        if module not in weights.down or module not in weights.up:
            raise ValueError(f"LoRA module {module!r}: lora_A and lora_B come in pairs")
        linear = linears[module]
        for part, tensor in ((DOWN, weights.down[module]), (UP, weights.up[module])):
            if tuple(tensor.shape) != _expected_shape(part, linear, weights.rank):
                raise ValueError(f"LoRA module {module!r}: {part} has shape {tuple(tensor.shape)}, this transformer "
                                 f"needs {_expected_shape(part, linear, weights.rank)}")
        mask = weights.masks.get(module)
        if mask is not None and tuple(mask.shape) != tuple(linear.weight.shape):
            raise ValueError(f"LoRA module {module!r}: mask of shape {tuple(mask.shape)} for a weight of shape "
                             f"{tuple(linear.weight.shape)}")


# ---- fusing -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def fuse_lora(transformer: nn.Module, weights: LoraWeights, scale: float = 1.0) -> None:
    """Add ``scale`` times the LoRA's delta to the base weights in place. Several LoRAs (one per concept) fuse one
    after the other: the deltas add up. ``scale = -1`` takes a fused LoRA out again (:func:`unfuse_lora`)."""
    linears = target_linears(transformer, ("*",))
    for module in weights.down:
        weight = linears[module].weight
        weight.add_((scale * weights.delta(module)).to(weight.device, weight.dtype))


def unfuse_lora(transformer: nn.Module, weights: LoraWeights) -> None:
    """Subtract a fused LoRA's delta: the base weights come back up to the float rounding of their dtype."""
    fuse_lora(transformer, weights, scale=-1.0)


class LoraLoaderMixin:
    """``load_lora_weights`` / ``fuse_lora`` / ``unfuse_lora`` / ``unload_lora_weights`` for
    :class:`~streamgen.pipeline.StreamingVideoPipeline`, without peft (diffusers' ``WanLoraLoaderMixin`` needs it).

    Without peft there is no separate LoRA branch in the forward: a loaded LoRA acts by being fused into the
    transformer's weights, so ``load_lora_weights`` fuses it at once (the adapter is active on load, as in
    diffusers), ``unfuse_lora`` takes every fused LoRA out (they stay loaded) and ``fuse_lora`` puts them back.
    Every change of the weights empties the pipeline's prompt K/V cache (cross-attention K/V depend on them);
    streams already playing keep the K/V they computed. The host provides ``transformer``, ``_prompt_kv`` and
    ``_prompt_kv_lock``."""

    transformer: nn.Module
    _prompt_kv: dict
    _prompt_kv_lock: threading.Lock

    @property
    def lora_adapters(self) -> dict[str, bool]:
        """{adapter name: fused} of the loaded LoRAs, in load order."""
        return {name: fused for name, (_, fused) in self._loras().items()}

    def load_lora_weights(self, path: str | Path | LoraWeights, adapter_name: str | None = None) -> str:
        """Load a LoRA file or folder (see :func:`load_lora`), or take :class:`LoraWeights` made in this process
        (e.g. a fused LoRA: :mod:`streamgen.erasure.fusion`), and fuse it; returns the adapter's name."""
        loras = self._loras()
        name = adapter_name if adapter_name is not None else f"adapter_{len(loras)}"
        if name in loras:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        if isinstance(path, LoraWeights):
            weights = path
            check_lora(weights, self.transformer)
        else:
            weights = load_lora(path, self.transformer)
        fuse_lora(self.transformer, weights)
        loras[name] = (weights, True)
        self._weights_changed()
        return name

    def fuse_lora(self) -> None:
        """Fuse every loaded LoRA that is not fused (after :meth:`unfuse_lora`)."""
        loras = self._loras()
        for name, (weights, fused) in loras.items():
            if not fused:
                fuse_lora(self.transformer, weights)
                loras[name] = (weights, True)
        self._weights_changed()

    def unfuse_lora(self) -> None:
        """Take every fused LoRA out of the weights; they stay loaded."""
        loras = self._loras()
        for name, (weights, fused) in reversed(list(loras.items())):
            if fused:
                unfuse_lora(self.transformer, weights)
                loras[name] = (weights, False)
        self._weights_changed()

    def unload_lora_weights(self) -> None:
        """Unfuse and forget every loaded LoRA."""
        self.unfuse_lora()
        self._loras().clear()

    def _loras(self) -> dict[str, tuple[LoraWeights, bool]]:
        return self.__dict__.setdefault("_streamgen_loras", {})

    def _weights_changed(self) -> None:
        with self._prompt_kv_lock:
            self._prompt_kv.clear()
