"""Erasing on several processes (``torchrun`` / ``accelerate launch``: gloo on CPUs, NCCL on GPUs), with the result
one process gets:

- the rollouts are split between the ranks (rank r plays rollouts r, r + N, ...) and gathered in their order, so
  every rank holds the state pool one process records;
- every step's batch is drawn whole, with the same draws as one process, and rank r trains on its share of the rows;
  every term of the loss is a mean over rows, so the average of the ranks' gradients, all-reduced after the backward
  pass as DDP does, is the whole batch's gradient;
- saliency masks are computed by every rank from the same pool and draws (they are equal without communication);
- the main process alone writes; the others wait for it.

The process group is the one training joins (:mod:`streamgen.process_group`: accelerate's process state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's ``world`` processes (one, unless launched)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int, what: str) -> slice:
        """This rank's equal share of ``total`` rows of a batch (``what`` names the setting in the error)."""
        if total % self.world:
            raise ValueError(f"{what} is {total}: on {self.world} processes it must be a multiple of {self.world} "
                             "(every process trains on an equal share of a step's batch)")
        share = total // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def mine(self, count: int) -> list[int]:
        """The indices of ``count`` jobs this rank does (every ``world``-th, from its rank)."""
        return list(range(self.rank, count, self.world))

    def gather(self, done: dict[int, Any], count: int) -> list[Any]:
        """Every rank's ``done`` (job index -> result) joined, as the list of the ``count`` results in job order."""
        if self.world > 1:
            parts: list[dict[int, Any]] = [{} for _ in range(self.world)]
            torch.distributed.all_gather_object(parts, done)
            done = {k: v for part in parts for k, v in part.items()}
        missing = [i for i in range(count) if i not in done]
        if missing:
            raise RuntimeError(f"jobs {missing} were done by no process")
        return [done[i] for i in range(count)]

    def average(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
        """Average ``params``' gradients and ``loss`` over the processes (in place; one all-reduce of one flat
        buffer); the averaged loss."""
        if self.world == 1:
            return float(loss)
        # A parameter outside the graph has no gradient on any rank (the model is the same everywhere): it stays
        # without one, as AdamW skips it on one process.
        params = [p for p in params if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1).to(torch.float64) for p in params] + [loss.detach().reshape(1).double()])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad = flat[offset:offset + n].view_as(p.grad).to(p.grad.dtype)
            offset += n
        return float(flat[-1])

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def processes(device: str | None) -> Processes:
    """The launched run's processes (or one), joining the process group on first use."""
    from ..process_group import process_state

    state = process_state(device)
    return Processes(state.process_index, state.num_processes)
