"""Per-chunk samplers for flow-matching video models (Wan predicts the flow v = noise - x0).

Both samplers turn a chunk of noise into clean latents by calling ``denoise(x_t, t) -> v`` a few times (a model that
predicts x0 instead, ``prediction_type: sample``, is turned into a flow by :func:`flow_from_sample`):

- :class:`FewStepSampler` — Self-Forcing / CausVid: at each timestep predict x0 = x_t - sigma * v, then re-noise it
  to the next timestep with fresh noise. The step list (default [1000, 750, 500, 250]) is "warped" through the
  shifted flow schedule sigma' = shift * s / (1 + (shift - 1) * s), giving [1000, 937.5, 833.3, 625] for shift 5.
- :class:`EulerSampler` — deterministic flow-matching Euler over ``num_inference_steps`` shifted sigmas.

After sampling, the engine runs the clean chunk once more at ``context_timestep`` to write its K/V into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

def draw_noise(shape, generator: torch.Generator | None, device, dtype=None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn where ``generator`` lives (then moved): a CPU generator
    gives a GPU stream the same noise as a CPU one, so the two can be compared (and a seed means one video)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


PREDICTION_TYPES = ("flow", "sample")
MIN_FLOW_SIGMA = 1e-4  # x0 -> flow divides by sigma; the samplers never call the model below their last step's sigma


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_from_sample(x_t: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The flow v = noise - x0 implied by an x0 prediction at x_t = (1 - sigma) x0 + sigma noise:
    v = (x_t - x0) / sigma. An Euler step to sigma' then lands on x_t + (sigma' - sigma) v, which is exactly x0 at
    sigma' = 0, so a sampler needs no change for models that predict x0."""
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.clamp_min(MIN_FLOW_SIGMA)
    else:
        sigma = max(float(sigma), MIN_FLOW_SIGMA)
    return (x_t.float() - x0.float()).div(sigma).to(x0.dtype)


@dataclass(frozen=True)
class FewStepSampler:
    timesteps: Sequence[float] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    context_timestep: float = 0.0

    def __post_init__(self):
        if not self.timesteps or any(not 0 < t <= self.num_train_timesteps for t in self.timesteps):
            raise ValueError(
                f"denoising timesteps must lie in (0, {self.num_train_timesteps}], got {list(self.timesteps)}"
            )

    def sigmas(self) -> torch.Tensor:
        """Warped noise levels of the step list (float64), e.g. [1, .9375, .8333, .625] for shift 5."""
        s = torch.tensor(self.timesteps, dtype=torch.float64) / self.num_train_timesteps
        return shift_sigma(s, self.shift)

    def sample(self, denoise: Denoiser, noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        sigmas = self.sigmas().tolist()
        x = noise
        for i, sigma in enumerate(sigmas):
            v = denoise(x, sigma * self.num_train_timesteps)
            x0 = (x.double() - sigma * v.double()).to(noise.dtype)
            if i + 1 == len(sigmas):
                return x0
            fresh = draw_noise(x0.shape, generator, x0.device, x0.dtype)
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * fresh
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class EulerSampler:
    num_inference_steps: int = 8
    shift: float = 5.0
    num_train_timesteps: int = 1000
    context_timestep: float = 0.0

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")

    def sigmas(self) -> torch.Tensor:
        s = torch.linspace(1.0, 0.0, self.num_inference_steps + 1, dtype=torch.float64)
        return shift_sigma(s, self.shift)

    def sample(self, denoise: Denoiser, noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        sigmas = self.sigmas().tolist()
        x = noise
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = denoise(x, sigma * self.num_train_timesteps)
            x = (x.double() + (sigma_next - sigma) * v.double()).to(noise.dtype)
        return x
