"""The whole erasure of one concept from a pipeline, resumable: streaming-rollout states, saliency masks, the masked
LoRA fine-tune, checkpoints, the LoRA file. :mod:`streamgen.erasure.cli` (``streamgen erase``) runs it per concept.

Per concept, into ``out/<attribute>-<value>/``:

1. **states** (:class:`StatePool`): the frozen pipeline plays streaming rollouts with guidance 3 (:mod:`.rollout`),
   prompted with *training* paraphrases of the concept (:mod:`.concepts`): the concept from the first chunk, a cut
   and a smooth switch into it after ``switch_after`` chunks of another scene, and a long stream whose later chunks
   are recorded. Every sampler step of the concept's chunks is a state, with the clean frames before it as context.
2. **saliency** (:func:`~streamgen.erasure.saliency.saliency_masks`): one augmentation per training template (its
   rollouts only), ``saliency_iterations`` batches each; each tensor's top half, intersected.
3. **fine-tune**: masked LoRA (:func:`~streamgen.erasure.lora.add_lora`), AdamW, the ANT objective with the
   concept's *neutral* captions as ∅ (``unconditional="neutral"``, default) or the empty prompt (``"empty"``,
   ANT as published), anchor prompts (captions without any concept being erased) preserved at every state.
4. **files**: ``state.safetensors`` (LoRA factors, masks, AdamW moments, step, losses; written atomically every
   ``save_every`` steps: never a pickle), then ``pytorch_lora_weights.safetensors`` (the diffusers-layout LoRA)
   and ``concept.json``.

Everything is drawn from ``seed``: a resumed run regenerates the same rollouts, masks and batches, so it continues
exactly where the state file stops.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..world.scenes import Draws
from .concepts import Concept, Paraphrases, attributes_with, concept_caption
from .finetune import EraseConfig, erase
from .lora import (CONCEPT_FILE, DEFAULT_TARGETS, LORA_WEIGHT_NAME, LoraConfig, LoraLinear, LoraWeights, add_lora,
                   save_lora, target_weights)
from .objective import ChunkCausalPredictor as ChunkCausalFlow
from .objective import ErasurePrompts, ErasureStates, ObjectiveConfig, erasure_loss, preservation_loss
from .processes import Processes
from .rollout import ChunkRecord, Rollout, play_rollout, states_at
from .saliency import SaliencyConfig, saliency_masks
from .states import ANT_GUIDANCE_SCALE

STATE_FILE = "state.safetensors"
UNCONDITIONAL = ("neutral", "empty")
# Which Linear layers a concept's LoRA adapts: every attention and feed-forward one, the cross-attention, or only the
# cross-attention's key / value projections of the text (what MACE and UCE edit; a change there acts through the
# prompt's tokens alone).
TARGET_SETS = {"all": DEFAULT_TARGETS, "cross": ("blocks.*.attn2.to_q", "blocks.*.attn2.to_k", "blocks.*.attn2.to_v",
                                                  "blocks.*.attn2.to_out.0"),
               "cross-kv": ("blocks.*.attn2.to_k", "blocks.*.attn2.to_v")}


@dataclass(frozen=True)
class EraseSettings:
    """Everything that decides an erasure run (recorded in its state file; a resume must match, ``steps`` and
    ``save_every`` excepted)."""

    steps: int = 200
    lr: float = 1e-3
    rank: int = 4
    alpha: float = 4.0
    batch: int = 2
    anchors_per_step: int = 1
    anchors: int = 24  # anchor captions drawn when none are given
    rollouts_per_kind: int = 4  # direct, cut, smooth, long: this many streams each
    chunks: int = 3  # concept chunks recorded per direct / switch rollout
    switch_after: int = 4  # chunks of another scene before a switch into the concept
    long_chunks: int = 16  # length of the long rollout (its last ``chunks`` chunks are recorded)
    max_context: int = 6  # clean latent frames kept before a recorded chunk (a multiple of the chunk size)
    guidance_scale: float = ANT_GUIDANCE_SCALE
    unconditional: str = "neutral"
    saliency_iterations: int = 4
    saliency_keep: float = 0.5
    masked: bool = True
    eta: float = 1.0
    switch_progress: float = ObjectiveConfig().switch_progress  # ANT: 7 of 50 steps keep the direction
    # Only states drawn at trajectory progress <= max_progress train (1: all, ANT). A few-step model that predicts
    # x0 settles a global attribute in its first step: afterwards e*(z, c) = e*(z, ∅) and the state says nothing.
    max_progress: float = 1.0
    # The anchors' own trajectories: this many anchor streams (``chunks`` chunks each, every sampler step recorded);
    # ``preserve_batch`` of their states per step keep the model's anchor predictions at the frozen ones.
    targets: str = "all"  # the Linear layers adapted: TARGET_SETS
    anchor_rollouts: int = 0
    anchor_chunks: int = 6
    anchor_guidance: float | None = None  # None: the pipeline's own guidance, the one its videos are made with
    preserve_batch: int = 2
    preserve_weight: float = 1.0
    anchor_weight: float = 1.0
    cache: str | None = None
    seed: int = 0
    save_every: int = 25

    def __post_init__(self):
        if self.unconditional not in UNCONDITIONAL:
            raise ValueError(f"unconditional must be one of {UNCONDITIONAL}, got {self.unconditional!r}")
        for name in ("steps", "batch", "rollouts_per_kind", "chunks", "switch_after", "long_chunks", "save_every",
                     "saliency_iterations", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_context < 0 or self.anchors_per_step < 0:
            raise ValueError("max_context and anchors_per_step must be >= 0")
        if self.targets not in TARGET_SETS:
            raise ValueError(f"targets must be one of {sorted(TARGET_SETS)}, got {self.targets!r}")
        if not 0.0 <= self.max_progress <= 1.0:
            raise ValueError(f"max_progress must be in [0, 1], got {self.max_progress}")

    def fingerprint(self) -> str:
        """What a resume must match: every setting but ``steps`` and ``save_every``."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("steps", "save_every")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---- states ------------------------------------------------------------------------------------------------------
@dataclass
class PoolEntry:
    record: ChunkRecord
    caption: str
    neutral: str
    template: int


class StatePool:
    """The recorded rollout chunks of one concept and the batches drawn from them (deterministic per step)."""

    def __init__(self, entries: list[PoolEntry], encode: Callable[[str], torch.Tensor], anchors: list[str],
                 settings: EraseSettings, context_timestep: float):
        if not entries:
            raise ValueError("the rollouts recorded no chunk of the concept")
        self.entries, self.encode, self.anchors, self.settings = entries, encode, anchors, settings
        self.context_timestep = context_timestep
        self.buckets: dict[tuple, list[int]] = {}  # one batch: one context length and one set of positions
        for i, entry in enumerate(entries):
            self.buckets.setdefault((entry.record.context_frames, entry.record.position_key), []).append(i)

    @property
    def templates(self) -> list[int]:
        return sorted({e.template for e in self.entries})

    def batch(self, step: int, template: int | None = None, rows: slice = slice(None)
              ) -> tuple[ErasureStates, ErasurePrompts]:
        """The states and prompts of ``step`` (from the entries of one ``template`` if given): ``rows`` of the batch
        (one process's share of a launched run's; every draw is made for the whole batch)."""
        draws = Draws(self.settings.seed, 0xE5A5E, step, -1 if template is None else template)
        buckets = {k: [i for i in v if template is None or self.entries[i].template == template]
                   for k, v in self.buckets.items()}
        buckets = {k: v for k, v in buckets.items() if v}
        sizes = sorted(buckets)
        pick = draws.integer(sum(len(buckets[k]) for k in sizes))
        for k in sizes:
            if pick < len(buckets[k]):
                break
            pick -= len(buckets[k])
        entries = [self.entries[draws.choice(buckets[k])] for _ in range(self.settings.batch)]
        chosen = []
        for entry in entries:  # each entry's sampler step, drawn for the whole batch before its rows are kept
            n = len(entry.record.states)
            chosen.append((entry, draws.integer(min(n, int(self.settings.max_progress * n) + 1))))
        chosen = chosen[rows]
        states = states_at([(entry.record, i) for entry, i in chosen], self.context_timestep)
        captions, neutrals = [], []
        for entry, _ in chosen:
            rows_of_entry = entry.record.states.shape[1]
            captions += [entry.caption] * rows_of_entry
            neutrals += [entry.neutral if self.settings.unconditional == "neutral" else ""] * rows_of_entry
        anchors = [draws.choice(self.anchors) for _ in range(self.settings.anchors_per_step)] if self.anchors else []
        like = self.encode(captions[0])
        prompts = ErasurePrompts(
            torch.cat([self.encode(c) for c in captions]),
            torch.cat([self.encode(c) for c in neutrals]) if self.settings.unconditional == "neutral"
            else self.encode(""),
            torch.cat([self.encode(a) for a in anchors]) if anchors else like.new_zeros(0, *like.shape[1:]),
        )
        return states, prompts


def rollouts_for(concept: Concept, others: list[Concept], paraphrases: Paraphrases,
                 settings: EraseSettings) -> list[tuple[Rollout, str, str, int]]:
    """(rollout, caption, neutral, template) for every training rollout of ``concept``: direct, cut, smooth, long,
    ``rollouts_per_kind`` each, each with its own training template (in turn), attributes and seed."""
    s, out = settings, []
    for kind_index, kind in enumerate(("direct", "cut", "smooth", "long")):
        for i in range(s.rollouts_per_kind):
            draws = Draws(s.seed, 0xC0C, kind_index, i)
            template = (kind_index + i) % len(paraphrases.train)
            caption, neutral = concept_caption(paraphrases.train[template], attributes_with([concept], draws),
                                               draws, concept)
            seed = draws.next64() >> 33
            if kind == "direct":
                parts, record = ((caption, s.chunks, "cut"),), None
            elif kind == "long":
                parts, record = ((caption, s.long_chunks, "cut"),), tuple(range(s.long_chunks - s.chunks,
                                                                                s.long_chunks))
            else:
                other, _ = concept_caption(paraphrases.train[template],
                                           attributes_with([], draws, avoid=[concept, *others]), draws)
                parts, record = ((other, s.switch_after, "cut"), (caption, s.chunks, kind)), None
            out.append((Rollout(parts, seed, (caption,), record, tag=kind), caption, neutral, template))
    return out


def default_anchors(concepts: list[Concept], paraphrases: Paraphrases, count: int, seed: int) -> list[str]:
    """``count`` training-template captions of scenes holding none of ``concepts``."""
    anchors = []
    for i in range(count):
        draws = Draws(seed, 0xA7C, i)
        template = paraphrases.train[i % len(paraphrases.train)]
        anchors.append(concept_caption(template, attributes_with([], draws, avoid=concepts), draws)[0])
    return anchors


def build_pool(pipe, concept: Concept, others: list[Concept], paraphrases: Paraphrases, anchors: list[str],
               settings: EraseSettings, encode: Callable[[str], torch.Tensor], progress: bool = True,
               procs: Processes = Processes()) -> StatePool:
    """Play every training rollout of ``concept`` (split between ``procs``) and keep its recorded chunks."""
    plan = rollouts_for(concept, others, paraphrases, settings)
    done = {}
    for j in tqdm(procs.mine(len(plan)), desc=f"rollouts {concept.name}", disable=not progress):
        rollout, caption, neutral, template = plan[j]
        done[j] = [PoolEntry(record, caption, neutral, template)
                   for record in play_rollout(pipe, rollout, cache=settings.cache,
                                              guidance_scale=settings.guidance_scale, max_context=settings.max_context)]
    entries = [entry for played in procs.gather(done, len(plan)) for entry in played]
    return StatePool(entries, encode, anchors, settings, float(pipe.config.context_timestep))


class AnchorPool:
    """States of the anchors' own rollouts (any sampler step), for :func:`preservation_loss`."""

    def __init__(self, entries: list[tuple[ChunkRecord, str]], encode: Callable[[str], torch.Tensor],
                 settings: EraseSettings, context_timestep: float):
        self.entries, self.encode, self.settings = entries, encode, settings
        self.context_timestep = context_timestep
        self.buckets: dict[tuple, list[int]] = {}  # one batch: one context length and one set of positions
        for i, (record, _) in enumerate(entries):
            self.buckets.setdefault((record.context_frames, record.position_key), []).append(i)

    def batch(self, step: int, rows: slice = slice(None)) -> tuple[ErasureStates, torch.Tensor]:
        """The states and text of ``step``: ``rows`` of the batch, every draw made for the whole batch."""
        draws = Draws(self.settings.seed, 0xA11C, step)
        sizes = sorted(self.buckets)
        k = sizes[draws.integer(len(sizes))]
        chosen = []
        for _ in range(self.settings.preserve_batch):
            record, caption = self.entries[draws.choice(self.buckets[k])]
            chosen.append((record, caption, draws.integer(record.states.shape[0])))
        chosen = chosen[rows]
        states = states_at([(record, i) for record, _, i in chosen], self.context_timestep)
        return states, torch.cat([self.encode(caption).expand(record.states.shape[1], -1, -1)
                                  for record, caption, _ in chosen])


def plays_anchor_rollouts(settings: EraseSettings, anchors: list[str]) -> bool:
    """Whether the anchors are preserved along their own rollouts too (:func:`build_anchor_pool`)."""
    return settings.anchor_rollouts >= 1 and bool(anchors)


def build_anchor_pool(pipe, anchors: list[str], settings: EraseSettings, encode: Callable[[str], torch.Tensor],
                      progress: bool = True, procs: Processes = Processes()) -> AnchorPool | None:
    """Play ``anchor_rollouts`` streams of anchor captions (in turn; split between ``procs``) and keep every
    chunk's states."""
    if not plays_anchor_rollouts(settings, anchors):
        return None
    done = {}
    for i in tqdm(procs.mine(settings.anchor_rollouts), desc="anchor rollouts", disable=not progress):
        caption = anchors[i % len(anchors)]
        seed = Draws(settings.seed, 0xA7C0, i).next64() >> 33
        rollout = Rollout(((caption, settings.anchor_chunks, "cut"),), seed, (caption,), tag="anchor")
        guidance = settings.anchor_guidance
        guidance = float(pipe.config.guidance_scale) if guidance is None else guidance
        done[i] = [(record, caption) for record in play_rollout(pipe, rollout, cache=settings.cache,
                                                                 guidance_scale=guidance,
                                                                 max_context=settings.max_context)]
    entries = [entry for played in procs.gather(done, settings.anchor_rollouts) for entry in played]
    return AnchorPool(entries, encode, settings, float(pipe.config.context_timestep))


# ---- state files -------------------------------------------------------------------------------------------------
def _adapters(model: torch.nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def save_state(path: Path, adapters: dict[str, LoraLinear], optimizer: torch.optim.Optimizer, step: int,
               losses: list[float], meta: dict) -> None:
    """Write the training state atomically (safetensors: tensors + JSON metadata)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, adapter in adapters.items():
        tensors[f"lora.{name}.A"] = adapter.lora_A.weight.detach().cpu().contiguous()
        tensors[f"lora.{name}.B"] = adapter.lora_B.weight.detach().cpu().contiguous()
        if adapter.mask is not None:
            tensors[f"mask.{name}"] = adapter.mask.cpu().to(torch.uint8).contiguous()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"adam.{i}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1 if key == "step" else
                                                                                        value.shape).contiguous()
    metadata = {"format": "streamgen-erase-state", "step": str(step), "losses": json.dumps(losses),
                "meta": json.dumps(meta, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], int, list[float], dict]:
    """(tensors, step, losses, meta) of a state file; one ValueError line naming the file otherwise."""
    from safetensors import safe_open

    from ..weights import safetensors_problem

    problem = safetensors_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != "streamgen-erase-state":
            raise ValueError(f"{path}: not an erase training state (metadata 'format' is {metadata.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        return tensors, int(metadata["step"]), json.loads(metadata["losses"]), json.loads(metadata["meta"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: damaged erase state metadata ({err})") from None


def _restore(tensors: dict[str, torch.Tensor], adapters: dict[str, LoraLinear], optimizer: torch.optim.Optimizer,
             path: Path) -> None:
    with torch.no_grad():
        for name, adapter in adapters.items():
            for part, param in (("A", adapter.lora_A.weight), ("B", adapter.lora_B.weight)):
                key = f"lora.{name}.{part}"
                if key not in tensors or tuple(tensors[key].shape) != tuple(param.shape):
                    raise ValueError(f"{path}: key {key!r} is missing or has the wrong shape")
                param.copy_(tensors[key])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, p in enumerate(params):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if f"adam.{i}.{key}" in tensors:
                value = tensors[f"adam.{i}.{key}"]
                entry[key] = value.reshape(()) if key == "step" else value.to(p.device)
        if entry:
            state[i] = entry
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# ---- one concept -------------------------------------------------------------------------------------------------
def erase_concept(pipe, concept: Concept, others: list[Concept], paraphrases: Paraphrases, anchors: list[str],
                  settings: EraseSettings, out: Path, resume: bool = False, progress: bool = True,
                  log: Callable[[str], None] = lambda _: None, procs: Processes = Processes()) -> dict:
    """Erase ``concept`` from ``pipe``'s transformer into a LoRA under ``out / concept.name`` (the pipeline's own
    weights are not changed). Returns the run's summary (steps, losses, seconds, files). ``procs``: a launched
    run's processes, which share the rollouts and every step's batch and get one process's LoRA
    (:mod:`.processes`); the main one writes."""
    folder = out / concept.name
    state_path = folder / STATE_FILE
    lora_path = folder / LORA_WEIGHT_NAME
    meta = {"concept": concept.as_dict(), "settings": asdict(settings), "fingerprint": settings.fingerprint(),
            "paraphrases": paraphrases.as_dict(), "anchors": anchors}
    saved = None
    if state_path.exists():
        if not resume:
            raise ValueError(f"{state_path} exists: pass --resume to continue it, or another --out")
        saved = read_state(state_path)
        for key in ("fingerprint", "concept", "paraphrases", "anchors"):
            if saved[3].get(key) != meta[key]:
                raise ValueError(f"{state_path}: was started with other {'settings' if key == 'fingerprint' else key}"
                                 " (use the same options and files: only --steps may change; or another --out)")
    rows = procs.rows(settings.batch, "--batch")
    preserve_rows = (procs.rows(settings.preserve_batch, "--preserve-batch") if plays_anchor_rollouts(settings, anchors)
                     else None)
    procs.barrier()  # every process has read the state file before the main one writes it again
    start = time.perf_counter()
    if procs.main:
        folder.mkdir(parents=True, exist_ok=True)
    if saved is not None and saved[1] >= settings.steps and lora_path.exists():
        log(f"{concept.name}: done at step {saved[1]} ({state_path}); nothing to do")
        return {"concept": concept.as_dict(), "steps": saved[1], "resumed_from": saved[1], "losses": saved[2],
                "seconds": 0.0, "lora": str(lora_path), "state": str(state_path)}

    cache: dict[str, torch.Tensor] = {}

    def encode(text: str) -> torch.Tensor:
        if text not in cache:
            cache[text] = pipe.encode_prompt(text)
        return cache[text]

    chunk = int(pipe.config.chunk_frames)
    pool = build_pool(pipe, concept, others, paraphrases, anchors, settings, encode, progress, procs)
    anchor_pool = build_anchor_pool(pipe, anchors, settings, encode, progress, procs)
    frozen = ChunkCausalFlow(pipe.transformer, chunk)
    transformer = copy.deepcopy(pipe.transformer)
    model = ChunkCausalFlow(transformer, chunk)
    objective = ObjectiveConfig(eta=settings.eta, switch_progress=settings.switch_progress,
                                anchor=settings.anchor_weight)
    pipe.transformer.requires_grad_(False)

    if saved is not None:
        tensors = saved[0]
        masks = {f"{k[len('mask.'):]}.weight": v.bool() for k, v in tensors.items() if k.startswith("mask.")}
        masks = masks or None
    elif settings.masked:
        log(f"{concept.name}: saliency over {len(pool.templates)} training templates x "
            f"{settings.saliency_iterations} batches")

        def augmentation(template: int):
            def loss(i: int) -> torch.Tensor:
                states, prompts = pool.batch(-1 - i, template)
                return erasure_loss(model, frozen, states, prompts, objective)  # the concept's gradient only
            return loss

        masks = saliency_masks(target_weights(transformer, TARGET_SETS[settings.targets]),
                               [augmentation(t) for t in pool.templates],
                               SaliencyConfig(settings.saliency_iterations, settings.saliency_keep))
    else:
        masks = None
    adapters = add_lora(transformer, LoraConfig(rank=settings.rank, alpha=settings.alpha,
                                                 targets=TARGET_SETS[settings.targets], init_seed=settings.seed), masks)
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.0)
    losses: list[float] = []
    first = 0
    if saved is not None:
        _restore(saved[0], adapters, optimizer, state_path)
        first, losses = saved[1], list(saved[2])
        log(f"{concept.name}: resuming at step {first} of {settings.steps}")
    elif procs.main:
        save_state(state_path, adapters, optimizer, 0, [], meta)

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if procs.main and ((step + 1) % settings.save_every == 0 or step + 1 == settings.steps):
            save_state(state_path, adapters, optimizer, step + 1, losses, meta)

    def preserve(step: int) -> torch.Tensor:
        states, text = anchor_pool.batch(step, preserve_rows)
        return settings.preserve_weight * preservation_loss(model, frozen, states, text)

    preserve = preserve if anchor_pool is not None else None
    if first < settings.steps:
        erase(model, frozen, lambda step: pool.batch(step, rows=rows), None,
              EraseConfig(steps=settings.steps, lr=settings.lr, objective=objective), optimizer,
              progress and procs.main, start_step=first, on_step=on_step, desc=f"erase {concept.name}",
              extra_loss=preserve, average=procs.average)
    if procs.main:
        save_lora(LoraWeights.from_adapters(adapters), lora_path)
        (folder / CONCEPT_FILE).write_text(json.dumps({**concept.as_dict(), "settings": asdict(settings),
                                                       "steps": settings.steps}, indent=2) + "\n")
    procs.barrier()  # the LoRA is on disk for every process
    return {"concept": concept.as_dict(), "steps": settings.steps, "resumed_from": first, "losses": losses,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "states": len(pool.entries), "masked_fraction": _masked_fraction(adapters),
            "seconds": round(time.perf_counter() - start, 1), "lora": str(lora_path), "state": str(state_path)}


def _masked_fraction(adapters: dict[str, LoraLinear]) -> float | None:
    masks = [a.mask for a in adapters.values() if a.mask is not None]
    if not masks:
        return None
    return round(sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks), 4)
