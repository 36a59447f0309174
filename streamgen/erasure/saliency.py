"""ANT's augmentation-enhanced weight saliency: which weights carry the concept.

For each augmentation (a seed and a paraphrase of the concept), the erasure loss's |gradient| is accumulated per
weight over a few short iterations, without updating anything; each tensor keeps its top ``keep_fraction`` entries
by that score (ANT's paper: the top half; its released code keeps the bottom half, a bug not followed here). The
masks of all augmentations are intersected: a weight is fine-tuned only if it is salient however the concept is
asked for.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch

LossFn = Callable[[int], torch.Tensor]  # iteration index -> the erasure loss of one augmentation


@dataclass(frozen=True)
class SaliencyConfig:
    """``iterations``: short runs per augmentation over which |grad| is accumulated (ANT: about 10);
    ``keep_fraction``: the share of each tensor's entries kept per augmentation (ANT: the top half)."""

    iterations: int = 10
    keep_fraction: float = 0.5

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")


@contextmanager
def _grad_enabled(params: Mapping[str, torch.nn.Parameter]) -> Iterator[None]:
    """Let gradients reach ``params`` (frozen base weights, typically), restoring each flag afterwards."""
    before = {name: p.requires_grad for name, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for name, p in params.items():
            p.requires_grad_(before[name])


def accumulated_abs_grad(params: Mapping[str, torch.nn.Parameter], loss_fn: LossFn,
                         iterations: int) -> dict[str, torch.Tensor]:
    """Sum over ``iterations`` calls of ``loss_fn(i)`` of |d loss / d param|, per parameter (float32). The
    parameters' ``.grad`` are left untouched; a parameter the loss does not reach scores 0."""
    names = list(params)
    scores = {name: torch.zeros_like(params[name], dtype=torch.float32) for name in names}
    with _grad_enabled(params):
        for i in range(iterations):
            grads = torch.autograd.grad(loss_fn(i), [params[n] for n in names], allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is not None:
                    scores[name] += grad.detach().abs().float()
    return scores


def top_fraction_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of ``score``'s top ``round(fraction * numel)`` entries (half up, at least one). Ties break towards
    the lower flat index, so equal scores give the same mask on every run and device."""
    flat = score.flatten()
    keep = max(1, int(fraction * flat.numel() + 0.5))
    order = torch.sort(flat, descending=True, stable=True).indices[:keep]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=score.device)
    mask[order] = True
    return mask.view_as(score)


def saliency_masks(params: Mapping[str, torch.nn.Parameter], augmentations: Sequence[LossFn],
                   config: SaliencyConfig = SaliencyConfig()) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask}: per augmentation, each tensor's top ``keep_fraction`` by accumulated |grad|;
    then the intersection over augmentations."""
    if not augmentations:
        raise ValueError("saliency needs at least one augmentation")
    masks: dict[str, torch.Tensor] | None = None
    for loss_fn in augmentations:
        scores = accumulated_abs_grad(params, loss_fn, config.iterations)
        kept = {name: top_fraction_mask(score, config.keep_fraction) for name, score in scores.items()}
        masks = kept if masks is None else {name: masks[name] & kept[name] for name in masks}
    return masks
