"""Training on several processes: one process group over GPUs (NCCL) or CPU cores (gloo), through accelerate.

``torchrun --nproc_per_node N -m streamgen.cli train ...`` (or ``accelerate launch``) starts N copies of the trainer.
What makes N processes train the same model as one (docs/distributed.md):

- ``batch_size`` in the config is the batch of one optimizer step over all processes; rank r of N takes rows
  ``[r * B/N, (r + 1) * B/N)`` of it (:meth:`streamgen.train.data.ClipSource.batch`): the ranks' shares, in rank
  order, are exactly the batch one process would take at that step.
- Every random draw of a step is made at the size of the whole batch from one generator that every process holds
  in the same state, and each rank keeps its rows (:func:`rows`). The noise, noise levels and caption dropout of a
  clip are therefore the ones one process would draw for it, and the generator state a checkpoint saves is every
  rank's: a run resumes on any number of processes.
- The loss of a rank is normalised by the weight of the whole batch (all-reduced) times N, so that DDP's gradient
  average is the gradient of one process's loss over the whole batch.
- The main process alone writes: log, evals, checkpoints, exports.

Without a GPU, accelerate forms no process group unless told it runs on the CPU: :func:`use_cpu` says so whenever
no accelerator is present, and the processes then meet over gloo.
"""

from __future__ import annotations

from datetime import timedelta

import torch

# How long a process waits for the others at a collective: the main process evaluates and exports alone while the
# others wait at a barrier (a full-size ShapeWorld eval takes minutes on a CPU; torch's default for NCCL is 10).
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)


def accelerator_present() -> bool:
    """Whether torch sees a GPU (or another accelerator accelerate can use)."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def use_cpu(device: str | None) -> bool:
    """accelerate's ``cpu`` flag for a config's ``device``: "cpu" forces it; so does a machine without an accelerator,
    where accelerate would otherwise form no process group (every process would think itself the main one)."""
    return device == "cpu" or not accelerator_present()


def process_state(device: str | None):
    """accelerate's process state (one per process, shared by every Accelerator built after it): the process group
    of a launched run (gloo on CPUs, NCCL on GPUs), or a single process."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(device), timeout=PROCESS_GROUP_TIMEOUT)


def rows(batch: int, rank: int, world: int) -> tuple[int, slice]:
    """(the whole batch's size, this rank's rows of it) for a rank holding ``batch`` of the ``world`` processes'
    equal shares: draw at the whole size, keep the slice."""
    return batch * world, slice(rank * batch, (rank + 1) * batch)
