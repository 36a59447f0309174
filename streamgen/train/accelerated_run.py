"""What a trainer's processes share under accelerate: :func:`start_run` (the process group and its device, each
rank's share of a step's batch, the checkpoint a run may resume), which every trainer joins its run through, and for
the camera and weave trainers :class:`AcceleratedRun` (the loss logged over all ranks, the log cut back to the
checkpoint, one clipped optimizer step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ..process_group import barrier, process_state, use_cpu
from .checkpoint import CHECKPOINT, LEGACY_STATE_FILE, STATE_FILE, find_state, load_state, save_state

__all__ = ["AcceleratedRun", "start_run"]


def start_run(out: Path, *, device: str | None, batch_size: int, threads: int | None, resume: bool,
              **accelerator_options):
    """Join a training run as one process, or one of a launched run's (torchrun / accelerate launch: gloo on CPUs,
    NCCL on GPUs): (the Accelerator, this rank's share of the batch as (rank, processes), the checkpoint's state file
    to resume from or None). ``batch_size`` is one optimizer step's over every process; a checkpoint already in
    ``out`` is refused unless ``resume``."""
    from accelerate import Accelerator

    process_state(device)
    acc = Accelerator(cpu=use_cpu(device), **accelerator_options)
    if threads:
        torch.set_num_threads(threads)
    if batch_size % acc.num_processes:
        raise ValueError(f"batch_size {batch_size} (one optimizer step's, over all processes) must be a multiple of "
                         f"the {acc.num_processes} processes")
    path = find_state(out / CHECKPOINT)
    if path is not None and not resume:
        raise ValueError(f"{out} already holds a checkpoint: pass --resume to continue it, or another --out")
    return acc, (acc.process_index, acc.num_processes), path if resume else None


class AcceleratedRun:
    """Mixed into a trainer whose ``config`` (a dataclass) has ``device``, ``threads``, ``batch_size``, ``warmup``,
    whose ``out`` is its output folder, ``step`` its step and ``optimizer`` its prepared optimizer. :meth:`_start`
    before anything else."""

    out: Path

    def _start(self, config, resume: bool) -> dict | None:
        """Join the run (:func:`start_run`) and return the checkpoint's state when resuming (else None). Mixed
        precision stays "no" in accelerate (its state is one per process, shared with every Accelerator built in it):
        a trainer's forward autocasts itself."""
        self.accelerator, self.shard, path = start_run(self.out, device=config.device, batch_size=config.batch_size,
                                                       threads=config.threads, resume=resume, mixed_precision="no")
        return load_state(path) if path is not None else None

    def _begin_run(self) -> None:
        """The main process writes OUT/config.json and cuts the log back to the step the run goes on from."""
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=1))
            self._truncate_log(self.step)

    def _save(self, model: dict, ema: dict, **extra) -> None:
        """The training state (OUT/checkpoint/state.safetensors, atomically: the trainer's ``model`` and ``ema``
        weights, ``extra`` entries, the optimizer and RNG states) and the export (``self.export``), written by the
        main process while the others wait."""
        acc = self.accelerator
        barrier(acc)
        if acc.is_main_process:
            folder = self.out / CHECKPOINT
            folder.mkdir(parents=True, exist_ok=True)
            save_state({"step": self.step, "model": model, "ema": ema, "optimizer": self.optimizer.state_dict(),
                        "scheduler": None, "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                        "numpy_rng": None, "python_rng": None, **extra, "processes": acc.num_processes},
                       folder / STATE_FILE)
            (folder / LEGACY_STATE_FILE).unlink(missing_ok=True)  # older than the file just written
            self.export(self.out / "pipeline")
        barrier(acc)

    def _load_run(self, state: dict) -> None:
        """What :meth:`_save` wrote beside the weights back into the run: the optimizer, the step and the random
        streams (every process holds the same ones, whatever number of processes saved them)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def _apply(self, loss: torch.Tensor, parameters) -> None:
        """One optimizer step on ``loss``, the gradients of ``parameters`` clipped to norm 1 (over every process)."""
        acc = self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(parameters, 1.0)
        self.optimizer.step()

    def lr_factor(self) -> float:
        """The learning rate's factor at this step: a linear warm-up over ``config.warmup`` steps, then 1."""
        return min(1.0, (self.step + 1) / max(self.config.warmup, 1))

    def _mean_loss(self, window: list[float]) -> float:
        """The window's mean loss over every process (a rank's loss is the mean of its equal share of the batch)."""
        world = self.accelerator.num_processes
        if world == 1:
            return float(np.mean(window))
        acc = self.accelerator
        total = acc.reduce(torch.tensor([sum(window)], dtype=torch.float64, device=acc.device), "sum")
        return float(total[0]) / (world * len(window))

    def _log(self, record: dict) -> None:
        """Append ``record`` to OUT/log.jsonl (the main process; with several, the record names how many)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            record["processes"] = acc.num_processes
        if acc.is_main_process:
            with open(self.out / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")

    def _check_same_start(self, step: int) -> None:
        """Every process starts from the same step (a process that found no checkpoint would train from scratch)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        steps = acc.gather(torch.tensor([step], device=acc.device)).cpu().tolist()
        if len(set(steps)) > 1:
            raise ValueError(f"{self.out}: the processes start at steps {steps}: on several machines the output "
                             "folder must be shared (the checkpoint is read by every process)")

    def _truncate_log(self, step: int) -> None:
        """Drop the log's records past ``step`` (written after the checkpoint by an interrupted run)."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))
