"""ANT's trajectory-aware erasure objective ("Set You Straight: auto-steering denoising trajectories to sidestep
unwanted concepts"), for the causal Wan transformer.

With ``e*`` the frozen model, ``c`` the concept prompt, ``∅`` the empty prompt and ``d = e*(z, c) - e*(z, ∅)`` the
classifier-free-guidance direction at a state ``z`` of the frozen model's own sampling trajectory, the fine-tuned
model's conditional prediction is pulled towards

- ``e*(z, ∅) + η d`` at early, high-noise steps: the guidance direction is kept, so the layout forms as before;
- ``e*(z, ∅) - η d`` at mid-to-late steps: the direction is reversed, so guidance towards ``c`` steers away from it.

Preservation: the unconditional prediction, and the prediction under each anchor prompt, are pulled towards the
frozen model's own. These terms must carry gradient (ANT's released code computes them under ``no_grad``, which
leaves them inert; here they are ordinary terms of the loss).

Loss weights (ANT's ``L3 + 0.5 L4 + 1 · (L1 + 0.5 L2)``, read as in ``RESEARCH.md``): ``L3`` the late conditional
term (``late_cond``, 1), ``L4`` the late unconditional term (``late_uncond``, 0.5), ``L1`` the early conditional
term (``early_cond``, 1 · 1), ``L2`` the early unconditional term (``early_uncond``, 1 · 0.5). ANT is anchor-free;
the anchor term (``anchor``) is streamgen's addition for the issue's "anchor prompts whose predictions must stay
put".

Output space: the targets are affine combinations of frozen predictions whose weights sum to 1 (``1 ± η`` and
``∓ η``). Every prediction type this model family uses is affine in the others at a fixed ``(x_t, σ)`` (the flow
``v = (x_t - x0) / σ`` of an x0 prediction), so the same combination holds in the model's native output space,
flow velocity (Wan) or x0 (the embedded ShapeWorld model); no conversion is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

ANT_SWITCH_STEP, ANT_NUM_STEPS = 7, 50  # ANT switches from kept to reversed guidance after 7 of 50 sampling steps


class Predictor(Protocol):
    """What the objective calls: a transformer with its training forward, e.g.
    ``streamgen.train.trainer.ChunkCausalFlow`` (chunk-causal, RoPE at ``positions``, prompt K/V computed from the
    text states by the model itself, so cross-attention K/V weights are trained too). Returns the prediction
    [B, C, F, H, W] for latents [B, C, F, H, W], per-frame timesteps [B, F] and text states [B, L, D]."""

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor,
                 positions: torch.Tensor | None = None) -> torch.Tensor: ...


class ChunkCausalPredictor(torch.nn.Module):
    """The :class:`Predictor` of a causal Wan transformer: the training forward (block-causal over chunks of
    ``chunk_frames``, RoPE at ``positions``, prompt K/V from the text states by the model itself), the same as
    ``streamgen.train.trainer.ChunkCausalFlow`` without the training package (the erasure hooks sit below the
    pipeline, which the trainer imports)."""

    def __init__(self, transformer, chunk_frames: int):
        super().__init__()
        self.transformer = transformer
        self.chunk_frames = chunk_frames

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        from ..models.causal_wan import block_causal_mask

        t = self.transformer
        _, _, frames, height, width = x_t.shape
        if positions is None:
            positions = torch.arange(frames)
        rotary = t.rotary(positions, positions, height, width)
        mask = block_causal_mask(frames, self.chunk_frames, t.tokens_per_frame(height, width), x_t.device)
        return t.forward_chunk(x_t, timesteps, t.encode_prompt_kv(text_states), None, rotary, attention_mask=mask)


@dataclass(frozen=True)
class ObjectiveConfig:
    """``eta``: strength η of the kept / reversed guidance direction (ANT: 1). ``switch_progress``: the fraction of
    the sampling trajectory after which the direction is reversed (ANT: 7 of 50 steps); a state drawn at step ``i``
    of ``N`` is early when ``i / N < switch_progress``. The weights are those of the module docstring."""

    eta: float = 1.0
    switch_progress: float = ANT_SWITCH_STEP / ANT_NUM_STEPS
    late_cond: float = 1.0
    late_uncond: float = 0.5
    early_cond: float = 1.0
    early_uncond: float = 0.5
    anchor: float = 1.0

    def __post_init__(self):
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.switch_progress <= 1.0:
            raise ValueError(f"switch_progress must be in [0, 1], got {self.switch_progress}")
        for name in ("late_cond", "late_uncond", "early_cond", "early_uncond", "anchor"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"weight {name} must be >= 0, got {getattr(self, name)}")


@dataclass
class ErasureStates:
    """A batch of states z of the frozen model's sampling trajectory.

    ``latents`` [B, C, F, H, W]: the noisy frames, optionally preceded by ``context_frames`` clean frames a stream
    had already played (they condition the prediction, the loss ignores them); ``timesteps`` [B, F] per frame;
    ``progress`` [B]: the fraction of the trajectory done when the state was drawn (step i of N: i / N);
    ``positions`` [F]: temporal RoPE positions (None: 0..F-1)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    progress: torch.Tensor
    context_frames: int = 0
    positions: torch.Tensor | None = None


@dataclass
class ErasurePrompts:
    """Text-encoder states [n, L, D] of the prompts: ``concept`` (n = 1, or one per state, e.g. paraphrases),
    ``empty`` (n = 1: the unconditional prompt, "" as the pipeline's negative prompt; or one per state: each
    concept prompt's *neutral* counterpart, the same caption without the concept's words, so that the guidance
    direction ``e*(z, c) - e*(z, ∅)`` is the concept's alone, see :mod:`streamgen.erasure.concepts`) and
    ``anchors`` (n >= 0)."""

    concept: torch.Tensor
    empty: torch.Tensor
    anchors: torch.Tensor

    def stacked(self, batch: int) -> torch.Tensor:
        """[(2 + A) * batch, L, D]: concept, empty, then each anchor, each repeated over the batch."""
        if self.concept.shape[0] not in (1, batch) or self.empty.shape[0] not in (1, batch):
            raise ValueError(f"concept and empty states must each hold 1 or {batch} prompts, got "
                             f"{self.concept.shape[0]} and {self.empty.shape[0]}")
        groups = [self.concept.expand(batch, -1, -1), self.empty.expand(batch, -1, -1)]
        groups += [anchor[None].expand(batch, -1, -1) for anchor in self.anchors]
        return torch.cat(groups)


def ant_targets(frozen_cond: torch.Tensor, frozen_uncond: torch.Tensor, early: torch.Tensor,
                eta: float) -> torch.Tensor:
    """The conditional target ``e*(z,∅) + s η (e*(z,c) - e*(z,∅))`` with ``s = +1`` for early states and ``-1``
    otherwise; ``early`` is bool [B], the predictions [B, ...]. The preservation targets are the frozen
    unconditional and anchor predictions themselves."""
    sign = torch.where(early, 1.0, -1.0).to(frozen_cond.dtype).reshape(-1, *[1] * (frozen_cond.dim() - 1))
    return frozen_uncond + sign * eta * (frozen_cond - frozen_uncond)


def _predict(model: Predictor, states: ErasureStates, text: torch.Tensor) -> torch.Tensor:
    """Predictions [P * B, C, F_noisy, H, W] for every prompt of ``text`` [P * B, L, D] at every state."""
    repeats = text.shape[0] // states.latents.shape[0]
    pred = model(states.latents.repeat(repeats, 1, 1, 1, 1), states.timesteps.repeat(repeats, 1), text,
                 states.positions)
    return pred[:, :, states.context_frames:]


def _per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample [B], in float32 at least (a bf16 model's squares lose too many digits)."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return (pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(1)


def _by_branch(early: torch.Tensor, if_early: float, if_late: float, like: torch.Tensor) -> torch.Tensor:
    """Per-state weight [B] in ``like``'s dtype (a float32 constant would round a float64 loss's weights)."""
    values = torch.tensor([if_late, if_early], dtype=like.dtype, device=like.device)
    return values[early.long()]


def erasure_loss(model: Predictor, frozen: Predictor, states: ErasureStates, prompts: ErasurePrompts,
                 config: ObjectiveConfig = ObjectiveConfig(), stats: dict[str, float] | None = None) -> torch.Tensor:
    """ANT's loss of ``model`` against ``frozen`` at ``states``: per state, the conditional term (early or late
    target, see :func:`ant_targets`) and the unconditional preservation term with the weights of its branch; plus
    the anchor term, averaged over states and anchors. ``stats`` (if given) receives each term's unweighted mean."""
    batch = states.latents.shape[0]
    text = prompts.stacked(batch)
    with torch.no_grad():
        frozen_pred = _predict(frozen, states, text).unflatten(0, (-1, batch))  # [2 + A, B, ...]
        frozen_pred = frozen_pred.to(torch.promote_types(frozen_pred.dtype, torch.float32))  # targets: >= fp32
    pred = _predict(model, states, text).unflatten(0, (-1, batch))
    early = states.progress.to(pred.device) < config.switch_progress  # [B]
    target = ant_targets(frozen_pred[0], frozen_pred[1], early, config.eta)

    cond = _per_sample_mse(pred[0], target)  # [B]
    uncond = _per_sample_mse(pred[1], frozen_pred[1])
    w_cond = _by_branch(early, config.early_cond, config.late_cond, cond)
    w_uncond = _by_branch(early, config.early_uncond, config.late_uncond, cond)
    loss = (w_cond * cond + w_uncond * uncond).mean()
    anchor = None
    if pred.shape[0] > 2:
        anchor = _per_sample_mse(pred[2:].flatten(0, 1), frozen_pred[2:].flatten(0, 1)).mean()
        loss = loss + config.anchor * anchor
    if stats is not None:
        stats.update(cond=float(cond.detach().mean()), uncond=float(uncond.detach().mean()),
                     anchor=float(anchor.detach()) if anchor is not None else 0.0, early=float(early.float().mean()))
    return loss


def preservation_loss(model: Predictor, frozen: Predictor, states: ErasureStates, text: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between ``model``'s and ``frozen``'s predictions at ``states`` under ``text`` [B, L, D]
    (one prompt per state): the anchor prompts kept in place along *their own* trajectories, where the videos of
    every other prompt are made (the anchor term of :func:`erasure_loss` holds them at the concept's states)."""
    with torch.no_grad():
        target = _predict(frozen, states, text)
        target = target.to(torch.promote_types(target.dtype, torch.float32))
    return _per_sample_mse(_predict(model, states, text), target).mean()
