"""Several concept LoRAs made one: by adding their deltas (``sum``), or by MACE's closed-form refinement of the
cross-attention keys and values (``closed-form``; "MACE: Mass Concept Erasure in Diffusion Models", Lu et al.,
CVPR 2024, its integration of several LoRAs; ANT fuses its per-concept LoRAs so too).

The closed form. A projection that reads the prompt's text states (a cross-attention ``to_k`` / ``to_v``; its input
vectors are the text encoder's states after the transformer's text embedder) gets the weight

    W = argmin  sum_i ||W E_i - (W0 + dW_i) E_i||^2  +  lam ||W E_p - W0 E_p||^2  +  rho ||W - W0||^2
      = W0 + (sum_i dW_i G_i) (sum_i G_i + lam G_p + rho I)^-1,          G = E E^T

with ``E_i`` [d, n_i] the input vectors of concept i's prompts (its training paraphrases), ``dW_i`` its LoRA's delta,
``E_p`` the anchors' (prompts without any of the concepts, whose keys and values must stay put) and ``rho`` a ridge
for directions no prompt reaches. Each concept's prompts then get the keys and values its own LoRA gives them, not
the sum of every LoRA's change; the anchors get the original ones. W0 cancels out of the delta, so the base weights
never enter the solve: the result is a weight *delta*, computed in float64.

Scaling. Every Gram is the *mean* outer product of its group's vectors (``G_i = E_i E_i^T / n_i``): each concept
weighs the same whatever its prompt count, and ``lam`` = 1 weighs the anchors as much as one concept. ``rho`` =
``ridge`` times the mean eigenvalue of ``sum_i G_i + lam G_p``.

Tokens. ``tokens="all"`` (default) fits every text position the cross-attention reads, padding included (the
pipeline zeroes states past a prompt's end, and the text embedder maps that zero to one fixed vector that every
prompt's keys carry); ``"prompt"`` only the prompt's own tokens (the padding vector is then held only by the ridge).

Output: one LoRA in diffusers' layout whose delta is the fused one, factored exactly by an SVD (``rank`` = the
projection's full rank unless truncated), unmasked, so ``pipe.load_lora_weights(folder)`` or any diffusers LoRA
loader applies it; ``concept.json`` beside it lists the concepts and records how it was made (method, settings, the
source LoRAs' sha256, the prompts' counts, and how well each concept's own delta is reproduced on its prompts).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .concepts import DEFAULT_PARAPHRASES, Concept, Paraphrases, attributes_with, concept_caption
from .lora import CONCEPT_FILE, LoraWeights, load_lora, lora_file, save_lora, target_linears

FUSE_METHODS = ("sum", "closed-form")
TOKENS = ("all", "prompt")
SINGULAR = 1e-12  # smallest eigenvalue of the solve's Gram relative to its largest


@dataclass(frozen=True)
class FusionConfig:
    """``preserve_weight``: lam, the anchors' weight (1: as much as one concept); ``ridge``: rho relative to the
    mean eigenvalue of the Gram; ``prompts_per_concept`` training-template captions per concept (scenes without the
    other concepts) and ``anchors`` anchor captions (scenes without any), plus, with ``neutral_anchors``, every
    concept caption's neutral twin (the same words, the concept's slot made neutral); ``tokens``: ``all`` or
    ``prompt`` (see the module docstring); ``rank``: truncate the fused delta's SVD (None: exact)."""

    preserve_weight: float = 1.0
    ridge: float = 1e-3
    prompts_per_concept: int = 64
    anchors: int = 64
    neutral_anchors: bool = True
    tokens: str = "all"
    rank: int | None = None
    seed: int = 0
    batch: int = 32  # prompts encoded at once

    def __post_init__(self):
        for name in ("preserve_weight", "ridge"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("prompts_per_concept", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.anchors < 0:
            raise ValueError(f"anchors must be >= 0, got {self.anchors}")
        if self.tokens not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS}, got {self.tokens!r}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1 (or None: exact), got {self.rank}")


# ---- the closed form ---------------------------------------------------------------------------------------------
def _check_inputs(name: str, x: torch.Tensor, d: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != d:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected input vectors as rows [n, {d}], got {shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: holds no input vector")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: holds NaN or inf")
    return x.double()


def closed_form_delta(grams: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor | None],
                      weights: Sequence[float], ridge: float = 0.0) -> torch.Tensor:
    """``D = (sum_g w_g dW_g G_g) (sum_g w_g G_g + ridge I)^-1`` in float64: the change of W minimising
    ``sum_g w_g ||(W0 + D) x - (W0 + dW_g) x||^2`` over each group's vectors (Gram ``G_g`` [d, d]) plus
    ``ridge ||D||^2``; a group whose delta is None is an anchor group (its target is W0: ``dW_g = 0``)."""
    if not grams or len(grams) != len(deltas) or len(grams) != len(weights):
        raise ValueError("closed form: one Gram, one delta (or None) and one weight per group, at least one group")
    d = grams[0].shape[-1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=grams[0].device)
    rhs = None
    for g, delta, w in zip(grams, deltas, weights):
        if tuple(g.shape) != (d, d):
            raise ValueError(f"closed form: Gram of shape {tuple(g.shape)}, expected {(d, d)}")
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"closed form: group weight must be a finite number >= 0, got {w}")
        gram += w * g.double()
        if delta is not None:
            if delta.dim() != 2 or delta.shape[1] != d:
                raise ValueError(f"closed form: delta of shape {tuple(delta.shape)} for inputs of size {d}")
            term = w * (delta.double() @ g.double())
            rhs = term if rhs is None else rhs + term
    if rhs is None:
        raise ValueError("closed form: no group has a LoRA delta to reproduce")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"closed form: ridge must be a finite number >= 0, got {ridge}")
    gram = gram + ridge * torch.eye(d, dtype=torch.float64, device=gram.device)
    eigenvalues = torch.linalg.eigvalsh(gram)  # symmetric, positive semi-definite
    if not float(eigenvalues[0]) > SINGULAR * float(eigenvalues[-1]):
        raise ValueError("closed form: the Gram of the prompts' inputs is singular (they do not span the input "
                         "space); give a ridge > 0")
    # D M = R with M symmetric: M D^T = R^T.
    return torch.linalg.solve(gram, rhs.T).T


def closed_form_weight(w0: torch.Tensor, concept_inputs: Sequence[torch.Tensor],
                       concept_deltas: Sequence[torch.Tensor], anchor_inputs: torch.Tensor | None = None,
                       preserve_weight: float = 1.0, ridge: float = 0.0) -> torch.Tensor:
    """The fused weight of one projection, as the module docstring's formula reads (no normalisation): ``w0``
    [out, d], ``concept_inputs[i]`` [n_i, d] (rows: input vectors of concept i's prompts), ``concept_deltas[i]``
    [out, d], ``anchor_inputs`` [n_p, d]. Returns W [out, d] in float64."""
    if not isinstance(w0, torch.Tensor) or w0.dim() != 2:
        raise ValueError(f"w0: expected a weight [out, in], got {getattr(w0, 'shape', type(w0).__name__)}")
    out, d = w0.shape
    if len(concept_inputs) != len(concept_deltas) or not concept_inputs:
        raise ValueError(f"one delta per concept's inputs, at least one: got {len(concept_inputs)} inputs and "
                         f"{len(concept_deltas)} deltas")
    grams, deltas = [], []
    for i, (x, delta) in enumerate(zip(concept_inputs, concept_deltas)):
        x = _check_inputs(f"concept {i}'s inputs", x, d)
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (out, d):
            raise ValueError(f"concept {i}'s delta: expected shape {(out, d)}, got "
                             f"{getattr(delta, 'shape', type(delta).__name__)}")
        if not bool(torch.isfinite(delta).all()):
            raise ValueError(f"concept {i}'s delta holds NaN or inf")
        grams.append(x.T @ x)
        deltas.append(delta)
    weights = [1.0] * len(grams)
    if anchor_inputs is not None:
        x = _check_inputs("anchor inputs", anchor_inputs, d)
        grams.append(x.T @ x)
        deltas.append(None)
        weights.append(float(preserve_weight))
    return w0.double() + closed_form_delta(grams, deltas, weights, ridge)


# ---- prompts and their input vectors -----------------------------------------------------------------------------
def fusion_prompts(concepts: Sequence[Concept], paraphrases: Paraphrases = DEFAULT_PARAPHRASES,
                   config: FusionConfig = FusionConfig()) -> tuple[dict[str, list[str]], list[str]]:
    """({concept name: its captions}, anchor captions): each concept's captions are training templates (in turn)
    over random scenes holding it and none of the other concepts; the anchors are scenes holding none of them (the
    erase driver's default anchors) and, with ``neutral_anchors``, the concept captions' neutral twins."""
    from ..world.scenes import Draws
    from .driver import default_anchors

    concepts = list(concepts)
    by_concept, neutrals = {}, []
    for ci, concept in enumerate(concepts):
        others = [c for c in concepts if c != concept]
        captions = []
        for k in range(config.prompts_per_concept):
            draws = Draws(config.seed, 0xF05E, ci, k)
            template = paraphrases.train[k % len(paraphrases.train)]
            caption, neutral = concept_caption(template, attributes_with([concept], draws, avoid=others), draws,
                                               concept)
            captions.append(caption)
            neutrals.append(neutral)
        by_concept[concept.name] = captions
    anchors = default_anchors(concepts, paraphrases, config.anchors, config.seed) if config.anchors else []
    if config.neutral_anchors:
        anchors += neutrals
    return by_concept, list(dict.fromkeys(anchors))


@torch.no_grad()
def text_inputs(pipe, modules: Sequence[str], prompts: Sequence[str], tokens: str = "all",
                batch: int = 32) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """({module: Gram [d, d] (float64, the sum of x x^T)}, {module: number of vectors}) of the input vectors
    ``modules`` read when the transformer computes the prompts' cross-attention K/V (hooks on the modules inside
    ``encode_prompt_kv``; ``tokens`` as :class:`FusionConfig`'s). A module that does not read the text states there is
    refused."""
    transformer = pipe.transformer
    linears = target_linears(transformer, ("*",))
    missing = [m for m in modules if m not in linears]
    if missing:
        raise ValueError(f"module {missing[0]!r} is no Linear layer of this transformer")
    seen: dict[str, torch.Tensor] = {}
    hooks = [linears[m].register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0]))
             for m in modules]
    grams: dict[str, torch.Tensor] = {}
    counts = {m: 0 for m in modules}
    try:
        for start in range(0, len(prompts), batch):
            states = pipe.encode_prompt(list(prompts[start: start + batch]))
            seen.clear()
            transformer.encode_prompt_kv(states)
            keep = (states != 0).any(-1) if tokens == "prompt" else torch.ones(states.shape[:2], dtype=torch.bool,
                                                                              device=states.device)
            unread = [m for m in modules if m not in seen]
            if unread:
                raise ValueError(f"closed-form fusion refines the projections that read the prompt's text states "
                                 f"(cross-attention K/V): {unread[0]!r} does not; fuse such a LoRA by 'sum'")
            done: dict[int, tuple[torch.Tensor, int]] = {}  # modules fed one tensor (every block's K, V): one Gram
            for m in modules:
                x = seen[m]
                if id(x) not in done:
                    if tuple(x.shape[:2]) != tuple(keep.shape):
                        raise ValueError(f"{m!r} reads inputs of shape {tuple(x.shape)}, not one vector per text "
                                         f"token {tuple(keep.shape)}")
                    v = x[keep].double()
                    done[id(x)] = (v.T @ v, v.shape[0])
                gram, n = done[id(x)]
                grams[m] = gram if m not in grams else grams[m] + gram
                counts[m] += n
    finally:
        for hook in hooks:
            hook.remove()
    return grams, counts


# ---- fusing LoRAs ------------------------------------------------------------------------------------------------
@dataclass
class FusedLora:
    """The fused LoRA (``weights``), the concepts it erases and how it was made (``record``)."""

    weights: LoraWeights
    concepts: list[Concept]
    record: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.concepts)


def _factor(deltas: Mapping[str, torch.Tensor], rank: int | None) -> tuple[LoraWeights, dict[str, float]]:
    """An unmasked LoRA whose modules' deltas are ``deltas`` (up = U S, down = V^T of an SVD; alpha = rank, so no
    scaling), and each module's relative truncation error."""
    full = min(min(d.shape) for d in deltas.values())
    r = full if rank is None else min(rank, full)
    down, up, residual = {}, {}, {}
    for module, delta in deltas.items():
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        down[module] = vh[:r].float().contiguous()
        up[module] = (u[:, :r] * s[:r]).float().contiguous()
        norm = float(s.norm())
        residual[module] = float(s[r:].norm()) / norm if norm > 0 else 0.0
    return LoraWeights(r, float(r), down, up), residual


def _checked_loras(loras: Sequence[tuple[Concept, LoraWeights]]) -> list[str]:
    if len(loras) < 1:
        raise ValueError("fusion needs at least one LoRA")
    names = [c.name for c, _ in loras]
    if len(set(names)) != len(names):
        raise ValueError(f"fusion: concept {sorted(n for n in names if names.count(n) > 1)[0]!r} is given twice")
    return sorted({m for _, w in loras for m in w.down})


def fuse_sum(loras: Sequence[tuple[Concept, LoraWeights]], rank: int | None = None) -> FusedLora:
    """One LoRA whose delta is the sum of the LoRAs' deltas (what loading them one after another does)."""
    modules = _checked_loras(loras)
    deltas = {}
    for module in modules:
        parts = [w.delta(module).double() for _, w in loras if module in w.down]
        deltas[module] = torch.stack(parts).sum(0)
    weights, residual = _factor(deltas, rank)
    return FusedLora(weights, [c for c, _ in loras], {"method": "sum", "rank": weights.rank,
                                                      "svd_residual_max": max(residual.values())})


def _ratio(a: torch.Tensor, b: torch.Tensor, gram: torch.Tensor) -> float:
    """||a E|| / ||b E|| from the Gram E E^T."""
    num = float(torch.einsum("oi,ij,oj->", a, gram, a).clamp_min(0)) ** 0.5
    den = float(torch.einsum("oi,ij,oj->", b, gram, b).clamp_min(0)) ** 0.5
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def fuse_closed_form(pipe, loras: Sequence[tuple[Concept, LoraWeights]],
                     paraphrases: Paraphrases = DEFAULT_PARAPHRASES, config: FusionConfig = FusionConfig(),
                     prompts: Mapping[str, Sequence[str]] | None = None,
                     anchors: Sequence[str] | None = None) -> FusedLora:
    """MACE's closed-form fusion of ``loras`` (one per concept) for ``pipe``'s transformer, whose current weights
    are W0 (load no other LoRA first). ``prompts`` {concept name: captions} and ``anchors`` replace the ones drawn
    by :func:`fusion_prompts`. Every LoRA must adapt only projections that read the text states."""
    modules = _checked_loras(loras)
    if getattr(pipe, "lora_adapters", None):
        raise ValueError(f"the pipeline has LoRAs loaded ({', '.join(pipe.lora_adapters)}): unload them first, "
                         "the closed form starts from the original weights")
    concepts = [c for c, _ in loras]
    drawn_prompts, drawn_anchors = fusion_prompts(concepts, paraphrases, config)
    prompts = {c.name: list((prompts or {}).get(c.name) or drawn_prompts[c.name]) for c in concepts}
    anchors = list(drawn_anchors if anchors is None else anchors)
    groups = [(c.name, prompts[c.name]) for c in concepts] + ([("anchors", anchors)] if anchors else [])
    if not anchors and config.preserve_weight > 0:
        raise ValueError("closed-form fusion with preserve_weight > 0 needs anchor prompts")
    grams = {name: text_inputs(pipe, modules, texts, config.tokens, config.batch) for name, texts in groups}
    linears = target_linears(pipe.transformer, tuple(modules))
    deltas, fit = {}, {}
    for module in modules:
        w0 = linears[module].weight.detach().double()
        gs = [grams[name][0][module] / grams[name][1][module] for name, _ in groups]
        ds = [w.delta(module).double().to(w0.device) if module in w.down else torch.zeros_like(w0)
              for _, w in loras] + ([None] if anchors else [])
        ws = [1.0] * len(loras) + ([float(config.preserve_weight)] if anchors else [])
        total = sum(w * g for w, g in zip(ws, gs))
        rho = config.ridge * float(torch.trace(total)) / total.shape[0]
        delta = closed_form_delta(gs, ds, ws, rho)
        deltas[module] = delta
        summed = sum(ds[: len(loras)])
        fit[module] = {}
        for (c, _), d, g in zip(loras, ds, gs):
            fit[module][f"{c.name}: own delta, relative error"] = round(_ratio(delta - d, d, g), 5)
            fit[module][f"{c.name}: summed deltas, relative error"] = round(_ratio(summed - d, d, g), 5)
        if anchors:
            # ||D E_p|| / ||W0 E_p||: how far the anchors' K/V move (the bias is the same before and after)
            fit[module]["anchors: change / original"] = round(_ratio(delta, w0, gs[-1]), 5)
            fit[module]["anchors: summed change / original"] = round(_ratio(summed, w0, gs[-1]), 5)
    weights, residual = _factor(deltas, config.rank)
    record = {"method": "closed-form", "config": asdict(config), "rank": weights.rank,
              "svd_residual_max": max(residual.values()), "paraphrases": paraphrases.as_dict(),
              "prompts": {name: len(texts) for name, texts in groups}, "fit": fit}
    return FusedLora(weights, concepts, record)


# ---- folders -----------------------------------------------------------------------------------------------------
def read_concepts(folder: str | Path) -> list[Concept]:
    """The concepts a LoRA folder erases, from its ``concept.json``: one (``attribute`` / ``value``, as ``streamgen
    erase`` writes it) or several (``concepts``: a fused LoRA). One ValueError line naming the folder otherwise."""
    path = Path(folder) / CONCEPT_FILE
    try:
        data = json.loads(path.read_text())
        items = data["concepts"] if isinstance(data, dict) and "concepts" in data else [data]
        concepts = [Concept(item["attribute"], item["value"]) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder}: not a LoRA folder written by 'streamgen erase' (its {CONCEPT_FILE}: "
                         f"{err})".replace("\n", " ")) from None
    if not concepts:
        raise ValueError(f"{folder}: its {CONCEPT_FILE} names no concept")
    return concepts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_concept_loras(folders: Sequence[str | Path], transformer) -> list[tuple[Concept, LoraWeights]]:
    """(concept, LoRA) of each folder written by ``streamgen erase`` (one concept each), validated."""
    out = []
    for folder in folders:
        concepts = read_concepts(folder)
        if len(concepts) != 1:
            raise ValueError(f"{folder}: a fused LoRA ({', '.join(c.name for c in concepts)}) cannot be fused again: "
                             "fuse the single-concept LoRAs")
        out.append((concepts[0], load_lora(folder, transformer)))
    return out


def fuse_folders(pipe, folders: Sequence[str | Path], method: str = "closed-form",
                 paraphrases: Paraphrases = DEFAULT_PARAPHRASES, config: FusionConfig = FusionConfig(),
                 anchors: Sequence[str] | None = None) -> FusedLora:
    """Fuse the LoRA folders (one concept each) by ``method`` (:data:`FUSE_METHODS`); the record names them.
    ``anchors``: the closed form's anchor captions (None: drawn, see :func:`fusion_prompts`)."""
    if method not in FUSE_METHODS:
        raise ValueError(f"fusion method must be one of {FUSE_METHODS}, got {method!r}")
    loras = load_concept_loras(folders, pipe.transformer)
    fused = (fuse_closed_form(pipe, loras, paraphrases, config, anchors=anchors) if method == "closed-form"
             else fuse_sum(loras, config.rank))
    fused.record["sources"] = [{"concept": c.name, "lora": str(Path(f)),
                                "sha256": _sha256(lora_file(f))} for (c, _), f in zip(loras, folders)]
    return fused


def save_fused(fused: FusedLora, folder: str | Path) -> Path:
    """Write the fused LoRA (``pytorch_lora_weights.safetensors``, diffusers layout) and ``concept.json`` (its
    concepts and record) into ``folder``; returns the folder. ``bench quality --erasure FOLDER`` measures it."""
    folder = Path(folder)
    save_lora(fused.weights, folder)
    data = {"name": fused.name, "concepts": [c.as_dict() for c in fused.concepts], "fusion": fused.record}
    (folder / CONCEPT_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return folder
