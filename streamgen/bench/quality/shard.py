"""``bench quality`` on several processes: each (preset, suite) run is a job, job i runs on process i mod N.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m streamgen.cli --threads 1 bench quality --compare A,B --json q.json
    accelerate launch --multi_gpu --num_processes 8 -m streamgen.cli bench quality --device cuda --compare A,B,C

Every suite seeds its own videos (by the run's seed and the suite's stable id), so a suite scores the same whichever
process runs it and whatever ran before it: the merged result equals one process's, timing aside. The main process
prints and writes it; the others only compute. Without a launcher there is one process and nothing changes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def process_state():
    """accelerate's view of this launch (a process group over gloo on CPUs, NCCL on GPUs), or None for one plain
    process (no launcher: nothing is initialised)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def device_for(state, device: str) -> str:
    """Each process's device: ``cuda`` becomes the process's own GPU when several processes share a machine."""
    if state is not None and device == "cuda" and state.num_processes > 1:
        return f"cuda:{state.local_process_index}"
    return device


def run_jobs(state, jobs: Sequence[Any], run: Callable[[Any], dict]) -> list[dict] | None:
    """Every job's result in order, on the main process (None on the others); job i runs on process i mod N."""
    mine = {i: run(job) for i, job in enumerate(jobs) if i % state.num_processes == state.process_index}
    from accelerate.utils import gather_object

    merged: dict[int, dict] = {}
    for part in gather_object([mine]):
        merged.update(part)
    return [merged[i] for i in range(len(jobs))] if state.is_main_process else None


def merge_runs(results: Sequence[tuple[str, dict]]) -> dict[str, dict]:
    """One run per label from per-suite runs (label, result) in job order: their suites, plots and timing joined."""
    runs: dict[str, dict] = {}
    for label, result in results:
        if label not in runs:
            runs[label] = {**result, "suites": {}, "plots": {}, "timing": {"total_seconds": 0.0}}
        run = runs[label]
        run["suites"].update(result["suites"])
        run["plots"].update(result["plots"])
        for key, value in result["timing"].items():
            if key == "total_seconds":
                run["timing"]["total_seconds"] = round(run["timing"]["total_seconds"] + value, 3)
            else:
                run["timing"][key] = value
    return runs
