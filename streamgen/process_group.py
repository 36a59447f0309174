"""The process group of a launched run (``torchrun`` / ``accelerate launch``): NCCL on GPUs, gloo on CPU cores,
through accelerate's process state. Training (:mod:`streamgen.train.distributed`) and erasure
(:mod:`streamgen.erasure.processes`) join it here.

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


def barrier(state) -> None:
    """Wait for every process of ``state`` (accelerate's process state or an Accelerator). Over gloo on CPUs a plain
    barrier: accelerate's ``wait_for_everyone`` passes the local rank as a GPU index even to a gloo barrier, which fails
    on rank r of a CPU run on a machine with r GPUs or fewer."""
    if state.num_processes > 1 and state.device.type == "cpu":
        torch.distributed.barrier()
    else:
        state.wait_for_everyone()
