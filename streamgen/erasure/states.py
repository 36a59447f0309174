"""States z for the erasure objective: the frozen model's own sampling trajectory under the concept prompt.

ANT fine-tunes at the states the frozen model visits when it draws the concept with classifier-free guidance
(scale 3), so the objective acts where the concept actually forms. :func:`trajectory_states` runs one of the
pipeline's samplers (:mod:`streamgen.sampling`, unchanged) on a clip whose frames all share the step's timestep
(chunk-causal, no cache: for one chunk, exactly a stream's first chunk) and records the state before every model
call. States inside a running stream, after a switch into the concept, come from the streaming rollout sampler
(not part of this module).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..sampling import PREDICTION_TYPES, flow_from_sample
from .objective import ErasurePrompts, ErasureStates, Predictor

ANT_GUIDANCE_SCALE = 3.0  # the guidance ANT samples its training trajectories with


class TrajectorySampler(Protocol):
    """:class:`~streamgen.sampling.EulerSampler` or :class:`~streamgen.sampling.FewStepSampler`."""

    num_train_timesteps: int

    def sample(self, denoise, noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


@torch.no_grad()
def trajectory_states(frozen: Predictor, sampler: TrajectorySampler, prompts: ErasurePrompts, noise: torch.Tensor,
                      generator: torch.Generator | None = None, guidance_scale: float = ANT_GUIDANCE_SCALE,
                      prediction_type: str = "flow") -> ErasureStates:
    """Every state of one guided sampling run from ``noise`` [B, C, F, H, W] under ``prompts.concept`` (against
    ``prompts.empty``), stacked step-major: [N * B, ...] with ``progress`` i / N for the i-th of N model calls.
    ``prediction_type``: what ``frozen`` outputs, as the pipeline's config says ("flow" or "sample" = x0)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    batch, frames = noise.shape[0], noise.shape[2]
    text = torch.cat((prompts.concept.expand(batch, -1, -1), prompts.empty.expand(batch, -1, -1)))
    visited: list[tuple[torch.Tensor, float]] = []

    def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
        visited.append((x.clone(), t))
        timesteps = torch.full((2 * batch, frames), t, dtype=torch.float32, device=noise.device)
        cond, uncond = frozen(x.repeat(2, 1, 1, 1, 1), timesteps, text).chunk(2)
        guided = uncond + guidance_scale * (cond - uncond)  # affine, weights summing to 1: valid for x0 too
        if prediction_type == "sample":
            return flow_from_sample(x, guided, t / sampler.num_train_timesteps)
        return guided

    sampler.sample(denoise, noise, generator)
    steps = len(visited)
    return ErasureStates(
        latents=torch.cat([x for x, _ in visited]),
        timesteps=torch.cat([torch.full((batch, frames), t, dtype=torch.float32, device=noise.device)
                             for _, t in visited]),
        progress=torch.arange(steps, dtype=torch.float64).repeat_interleave(batch) / steps,
    )
