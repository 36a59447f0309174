"""The erasure fine-tune: a few hundred optimizer steps of the ANT objective on the trainable parameters (the LoRA
factors :func:`~streamgen.erasure.lora.add_lora` leaves trainable, masked by saliency or not).

The loop only draws states, computes :func:`~streamgen.erasure.objective.erasure_loss` and steps the optimizer, so a
driver (accelerate, a CLI with checkpoints) can wrap the model and optimizer and call it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .objective import ErasurePrompts, ErasureStates, ObjectiveConfig, Predictor, erasure_loss

# step -> the states of that step, or (states, prompts) when the prompts change per step (paraphrases, anchors)
StatesSampler = Callable[[int], "ErasureStates | tuple[ErasureStates, ErasurePrompts]"]


@dataclass(frozen=True)
class EraseConfig:
    """``steps`` optimizer steps of AdamW at learning rate ``lr`` (a usual LoRA rate for diffusion transformers; a
    tiny model takes a larger one; no weight decay: it would pull the LoRA factors, not the model, towards zero);
    ``objective``: the ANT objective's settings."""

    steps: int = 200
    lr: float = 1e-4
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: add LoRA adapters first (add_lora)")
    return params


def erase(model: Predictor, frozen: Predictor, states_sampler: StatesSampler, prompts: ErasurePrompts | None,
          config: EraseConfig = EraseConfig(), optimizer: torch.optim.Optimizer | None = None,
          progress: bool = True, start_step: int = 0,
          on_step: Callable[[int, float], None] | None = None, desc: str = "erase",
          extra_loss: Callable[[int], torch.Tensor] | None = None,
          average: Callable[[list[torch.nn.Parameter], torch.Tensor], float] | None = None) -> list[float]:
    """Fine-tune ``model``'s trainable parameters so that ``prompts.concept`` is erased; returns the loss of each
    step. ``frozen`` is the original model (never updated), ``states_sampler(step)`` the states of each step
    (e.g. drawn from :func:`~streamgen.erasure.states.trajectory_states`). ``optimizer`` defaults to AdamW over the
    trainable parameters at ``config.lr``. ``start_step``: continue a resumed run from there (with its optimizer);
    ``on_step(step, loss)`` runs after each step (a driver's checkpoints); ``extra_loss(step)`` is added to the
    step's loss (e.g. :func:`~streamgen.erasure.objective.preservation_loss` on anchor trajectories);
    ``average(params, loss)`` averages the gradients and the loss over a launched run's processes after the backward
    pass (:meth:`~streamgen.erasure.processes.Processes.average`) and returns the loss; the losses of steps
    ``start_step`` on are returned."""
    params = trainable_parameters(model)
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    losses = []
    bar = tqdm(range(start_step, config.steps), desc=desc, disable=not progress, initial=0)
    for step in bar:
        drawn = states_sampler(step)
        states, step_prompts = drawn if isinstance(drawn, tuple) else (drawn, prompts)
        loss = erasure_loss(model, frozen, states, step_prompts, config.objective)
        if extra_loss is not None:
            loss = loss + extra_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(float(loss.detach()) if average is None else average(params, loss.detach()))
        optimizer.step()
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
