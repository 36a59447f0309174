"""The GPU run kit: everything a lent GPU should measure, in one command that finishes within 10 minutes.

The device machine (an H200) has PyTorch and transformers but not diffusers, and takes at most 64 MiB of files along.

  here:   python scripts/gpu/kit.py pack
          (writes .gpukit/, git-ignored: the wheels of exactly the missing packages, diffusers, importlib_metadata and
          its lazy_importer, ~6 MB, and the CPU reference latents of the parity stream, a few KB)
  there:  device run, carry [".gpukit"], command: bash scripts/gpu/run.sh   (results: JSON under $OUT)
  here:   python scripts/gpu/kit.py run --dry-run   (the preflight on this CPU; tests/test_gpu_kit.py runs it)
  several GPUs: bash scripts/gpu/run.sh --num-processes N   (adds the distributed step, one process per GPU)

``run`` does, in order, each step in its own process under a time limit (a hang or a crash costs that step only):
  preflight  every import the steps need, the GPU's name and memory, the kit's files (seconds);
  parity     the tiny-random stream on the GPU in fp32 (TF32 off) and bf16 against the CPU reference latents;
  distributed  with --num-processes N > 1 (N GPUs, NCCL; docs/distributed.md): configs/train/tiny-test.yaml (with
             tiny-random's text encoder: the device has no MiniLM) for 3 steps on N processes against 1 process,
             weights to 1e-5 and one log record per step; then streamgen.batch of 2N tiny-random lines on N processes
             against 1 process, every video once (frames compared; bytes reported), where imageio-ffmpeg is present.
  speed      Wan2.1-1.3B with random weights (speed does not depend on weight values) at 480x832, the pipeline's 4
             steps, a 21-latent-frame self-forcing stream, once per attention backend present (SDPA, torch's flash
             SDPA, flash-attn, xformers), each with its peak GPU memory; then, while time is left, a 241-frame
             longlive stream and the compiled feed-forwards with the fastest backend.
Results: $OUT/preflight.json, parity.json, speed-<run>.json (bench speed's full result), distributed.json and
summary.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".gpukit"
# What the device image lacks, nothing more (importlib_metadata 10 needs lazy_importer: its absence failed the
# preflight of the first GPU run)
WHEELS = ("diffusers", "importlib_metadata", "lazy_importer")
PARITY = dict(prompt="a red circle drifting left over a blue backdrop", num_frames=9, seed=0)
# Parity bounds: fp32 with TF32 off differs from the CPU only by kernel order; bf16 keeps ~3 significant digits.
PARITY_BOUNDS = {"fp32": 1e-3, "bf16": 5e-2}  # relative L2 error of the latents
STEPS = ("preflight", "parity", "distributed", "speed")  # distributed before speed, which takes the time left
STEP_LIMIT_S = {"preflight": 60, "parity": 120, "speed": 390, "distributed": 240}
DISTRIBUTED = dict(steps=3, tolerance=1e-5, frames=6)
IMPORTS = ("torch", "numpy", "psutil", "yaml", "safetensors", "transformers", "importlib_metadata", "diffusers",
           "streamgen", "streamgen.pipeline", "streamgen.tiny", "streamgen.bench.speed")


def _out() -> Path:
    out = Path(os.environ.get("OUT") or "gpu-kit-out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(name: str, result: dict) -> None:
    (_out() / name).write_text(json.dumps(result, indent=2) + "\n")


# ---- here -------------------------------------------------------------------------------------------------------
def download_wheels(folder: Path) -> None:
    """The wheels the device image lacks (:data:`WHEELS`), at this machine's versions, into ``folder``."""
    from importlib.metadata import version

    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(folder), *(f"{name}=={version(name)}" for name in WHEELS)], check=True)


def pack() -> None:
    """Wheels of the missing packages at this machine's versions, and the CPU reference latents."""
    import shutil

    shutil.rmtree(KIT, ignore_errors=True)
    download_wheels(KIT / "whl")
    from safetensors.torch import save_file

    save_file({"latents": _parity_latents("cpu", "fp32")}, str(KIT / "reference.safetensors"))
    size = sum(f.stat().st_size for f in KIT.rglob("*") if f.is_file())
    print(f"{KIT}: {size / 2**20:.1f} MiB (the device run carries at most 64 MiB)")


def _parity_latents(device: str, dtype: str):
    import torch

    from streamgen.loading import open_pipeline
    from streamgen.resources import pipeline_path

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pipe = open_pipeline(pipeline_path("tiny-random"), device, dtype)
    pipe.set_progress_bar_config(disable=True)
    # A CPU generator on every device: the stream draws its noise there (streamgen.sampling.draw_noise), so the GPU
    # stream gets the reference's noise (a CUDA generator's differ: the first GPU run's parity failed on that, 1.27)
    generator = torch.Generator().manual_seed(PARITY["seed"])
    stream = pipe.stream(PARITY["prompt"], num_frames=PARITY["num_frames"], generator=generator)
    return torch.cat([chunk.latents.float().cpu() for chunk in stream], 2)


# ---- the steps --------------------------------------------------------------------------------------------------
def preflight(dry_run: bool) -> dict:
    result = {"python": platform.python_version(), "imports": {}, "dry_run": dry_run}
    for name in IMPORTS:
        start = time.perf_counter()
        try:
            module = importlib.import_module(name)
            result["imports"][name] = {"ok": True, "version": getattr(module, "__version__", None),
                                       "seconds": round(time.perf_counter() - start, 3)}
        except Exception as err:  # a missing wheel, a broken install: the step says which
            result["imports"][name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    import torch

    result["cuda"] = torch.cuda.is_available()
    if result["cuda"]:
        props = torch.cuda.get_device_properties(0)
        result["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                         "capability": [props.major, props.minor]}
    result["optional"] = {name: importlib.util.find_spec(name) is not None for name in ("flash_attn", "xformers")}
    result["reference"] = (KIT / "reference.safetensors").is_file()
    result["ok"] = all(i["ok"] for i in result["imports"].values()) and (dry_run or result["cuda"])
    return result


def parity() -> dict:
    import torch

    reference_file = KIT / "reference.safetensors"
    if reference_file.is_file():
        from safetensors.torch import load_file

        reference, source = load_file(str(reference_file))["latents"], "packed CPU reference"
    else:
        reference, source = _parity_latents("cpu", "fp32"), "this machine's CPU"
    result = {"reference": source, "stream": PARITY, "bounds": PARITY_BOUNDS}
    for dtype, bound in PARITY_BOUNDS.items():
        latents = _parity_latents("cuda", dtype)
        error = float((latents - reference).norm() / reference.norm())
        result[dtype] = {"relative_l2": error, "max_abs": float((latents - reference).abs().max()),
                         "ok": error <= bound}
    result["ok"] = all(result[d]["ok"] for d in PARITY_BOUNDS)
    return result


def speed(deadline: float) -> dict:
    import torch

    from streamgen.bench.speed import run_speed_benchmark
    from streamgen.resources import pipeline_path
    from streamgen.tiny import random_pipeline_from_configs

    start = time.perf_counter()
    pipe = random_pipeline_from_configs(pipeline_path("wan2.1-1.3b"), device="cuda", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    result = {"model": "wan2.1-1.3b (random weights)", "build_seconds": time.perf_counter() - start,
              "weights_bytes": torch.cuda.memory_allocated(), "runs": {}}
    stream = dict(prompt=PARITY["prompt"], height=480, width=832, seed=0)
    backends = ["native", "_native_flash", "_native_cudnn"]
    backends += ["flash"] * (importlib.util.find_spec("flash_attn") is not None)
    backends += ["xformers"] * (importlib.util.find_spec("xformers") is not None)

    def measure(name: str, backend: str, cache: str, frames: int) -> None:
        if time.time() > deadline:
            result["runs"][name] = {"skipped": "out of time"}
            return
        try:
            pipe.transformer.set_attention_backend(backend)
            run_speed_benchmark(pipe, num_frames=9, cache=cache, **stream)  # warm-up: kernels, allocator
            torch.cuda.reset_peak_memory_stats()
            run = run_speed_benchmark(pipe, num_frames=frames, cache=cache, **stream)
            run.update(attention=backend, compiled=name.endswith("compiled"))
            _write(f"speed-{name}.json", run)
            result["runs"][name] = {k: run[k] for k in ("fps", "first_chunk_latency_s", "latency_early_median_s",
                                                        "latency_late_median_s", "peak_gpu_bytes", "cache_bytes")}
        except Exception as err:  # a backend this build lacks: the others still run
            result["runs"][name] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        print(name, json.dumps(result["runs"][name]), flush=True)

    for backend in backends:
        measure(f"self-forcing-{backend}", backend, "self-forcing", 81)
    timed = {n: r["fps"] for n, r in result["runs"].items() if "fps" in r}
    best = max(timed, key=timed.get).removeprefix("self-forcing-") if timed else "native"
    result["fastest_backend"] = best
    measure(f"longlive-{best}", best, "longlive", 241)
    pipe.transformer.compile_blocks()
    measure(f"self-forcing-{best}-compiled", best, "self-forcing", 81)
    result["peak_gpu_bytes"] = max((r.get("peak_gpu_bytes", 0) for r in result["runs"].values()), default=0)
    return result


def _train_worker(out: Path, steps: int, batch_size: int) -> None:
    """One process of the distributed step's training run (what torchrun starts): the tiny test config, on the GPUs,
    with tiny-random's text encoder."""
    import torch
    from transformers import AutoTokenizer, UMT5EncoderModel

    from streamgen.resources import pipeline_path
    from streamgen.train import Trainer, load_config

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tiny = pipeline_path("tiny-random")
    text = (AutoTokenizer.from_pretrained(tiny / "tokenizer"), UMT5EncoderModel.from_pretrained(tiny / "text_encoder"))
    cfg = load_config(ROOT / "configs" / "train" / "tiny-test.yaml")
    cfg.device, cfg.output_dir, cfg.max_steps, cfg.batch_size = None, str(out), steps, batch_size
    cfg.model.text_dim = text[1].config.d_model
    Trainer(cfg, text=text).run()


def _launch(processes: int, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python ARGV`` on ``processes`` processes (torchrun --standalone picks a free port), or plainly on one."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] * (processes > 1)
    return subprocess.run([sys.executable, *launcher, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})


def distributed(processes: int, deadline: float) -> dict:
    """N GPUs train and generate what one does (see the module docstring)."""
    import tempfile

    import torch

    result = {"processes": processes, "gpus": torch.cuda.device_count(), **DISTRIBUTED}
    if processes < 2:
        return {**result, "ok": True, "skipped": "one process (pass --num-processes N for N GPUs)"}
    if result["gpus"] < processes:
        return {**result, "ok": False, "error": f"{processes} processes need {processes} GPUs (one each, NCCL), "
                                                f"{result['gpus']} found"}
    work = Path(tempfile.mkdtemp(prefix="streamgen-distributed-"))
    steps, batch_size = DISTRIBUTED["steps"], 2 * processes

    def left() -> float:
        return max(10.0, deadline - time.time())

    runs = {}
    for name, n in (("many", processes), ("one", 1)):
        done = _launch(n, [__file__, "step", "train-worker", "--out", str(work / name), "--steps", str(steps),
                           "--batch-size", str(batch_size)], left())
        runs[name] = done.returncode
        if done.returncode:
            return {**result, "ok": False, "train": runs, "error": (done.stdout + done.stderr)[-2000:]}
    from streamgen.train.checkpoint import load_state

    many, one = (load_state(work / name / "checkpoint" / "state.safetensors") for name in ("many", "one"))
    logged = [json.loads(line)["step"] for line in (work / "many" / "log.jsonl").read_text().splitlines()]
    difference = max(float((many["model"][k] - one["model"][k]).abs().max()) for k in one["model"])
    result["train"] = {"max_weight_difference": difference, "logged_steps": logged, "batch_size": batch_size,
                       "checkpoint_processes": many.get("processes"),
                       "ok": difference <= DISTRIBUTED["tolerance"] and logged == list(range(1, steps + 1))}
    result["batch"] = _distributed_batch(processes, work, left)
    result["ok"] = result["train"]["ok"] and result["batch"].get("ok", True)
    return result


def _distributed_batch(processes: int, work: Path, left) -> dict:
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        return {"skipped": "no imageio-ffmpeg here (the kit does not carry its ffmpeg binary)"}
    from streamgen.resources import pipeline_path
    from streamgen.video_io import read_video

    prompts = work / "prompts.txt"
    colours = ("red", "green", "yellow", "white", "magenta", "cyan", "orange", "purple")
    lines = 2 * processes
    prompts.write_text("".join(f"a {colours[i % len(colours)]} circle over a blue backdrop\n" for i in range(lines)))
    for name, n in (("many", processes), ("one", 1)):
        done = _launch(n, ["-m", "streamgen.batch", "--prompts", str(prompts), "--frames", str(DISTRIBUTED["frames"]),
                           "--pipeline", str(pipeline_path("tiny-random")), "--out-dir", str(work / f"videos-{name}")],
                       left())
        if done.returncode:
            return {"ok": False, "error": (done.stdout + done.stderr)[-2000:]}
    names = [f"{i:04d}.mp4" for i in range(lines)]
    made = sorted(p.name for p in (work / "videos-many").glob("*.mp4"))
    differences = [float(abs(read_video(work / "videos-many" / n).astype(int) - read_video(work / "videos-one" / n)).max())
                   for n in names]
    same_bytes = sum((work / "videos-many" / n).read_bytes() == (work / "videos-one" / n).read_bytes() for n in names)
    return {"videos": lines, "max_frame_difference": max(differences), "byte_identical": same_bytes,
            "ok": made == names and max(differences) == 0}


# ---- the one command --------------------------------------------------------------------------------------------
def run(dry_run: bool, budget_s: float, processes: int = 1) -> int:
    """Every step in order, each in its own process; summary.json says what each found or why it was skipped."""
    start = time.time()
    summary = {"dry_run": dry_run, "processes": processes, "steps": {}}
    for step in STEPS:
        if step == "distributed" and processes < 2:
            summary["steps"][step] = {"skipped": "one process (--num-processes N for N GPUs)"}
            continue
        if dry_run and step != "preflight":
            summary["steps"][step] = {"skipped": "dry run (no GPU steps)"}
            continue
        left = budget_s - (time.time() - start)
        if left < 30:
            summary["steps"][step] = {"skipped": "out of time"}
            continue
        limit = min(STEP_LIMIT_S[step], left)
        argv = [sys.executable, __file__, "step", step, "--deadline", str(time.time() + limit - 45),
                "--num-processes", str(processes)]
        began = time.time()
        try:
            code = subprocess.run(argv + ["--dry-run"] * dry_run, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        summary["steps"][step] = {"exit": code, "seconds": round(time.time() - began, 1)}
        found = _out() / f"{step}.json"
        if found.is_file():
            summary["steps"][step].update(ok=json.loads(found.read_text()).get("ok", code == 0))
        if step == "preflight" and not summary["steps"][step].get("ok"):
            for later in STEPS[1:]:
                summary["steps"][later] = {"skipped": "preflight failed"}
            break
    summary["seconds"] = round(time.time() - start, 1)
    _write("summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0 if all(s.get("ok", "skipped" in s) for s in summary["steps"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pack", help="here: wheels of the missing packages and the CPU reference into .gpukit/")
    run_ = sub.add_parser("run", help="every step in order (on the device machine)")
    run_.add_argument("--dry-run", action="store_true", help="the preflight only, GPU steps skipped (CPU, CI)")
    run_.add_argument("--budget", type=float, default=float(os.environ.get("BUDGET", 560)),
                      help="seconds for all the steps (default 560: a 10-minute device call)")
    run_.add_argument("--num-processes", type=int, default=1, metavar="N",
                      help="N > 1: also the distributed step, one process per GPU (needs N GPUs)")
    step = sub.add_parser("step", help="one step (what run calls)")
    step.add_argument("name", choices=(*STEPS, "train-worker"))
    step.add_argument("--deadline", type=float, default=float("inf"))
    step.add_argument("--dry-run", action="store_true")
    step.add_argument("--num-processes", type=int, default=1)
    step.add_argument("--out", type=Path)
    step.add_argument("--steps", type=int, default=DISTRIBUTED["steps"])
    step.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    if getattr(args, "num_processes", 1) < 1:
        parser.error(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.command == "pack":
        pack()
        return 0
    if args.command == "run":
        return run(args.dry_run, args.budget, args.num_processes)
    if args.name == "train-worker":
        _train_worker(args.out, args.steps, args.batch_size)
        return 0
    result = (preflight(args.dry_run) if args.name == "preflight" else parity() if args.name == "parity"
              else distributed(args.num_processes, args.deadline) if args.name == "distributed"
              else speed(args.deadline))
    _write(f"{args.name}.json", result)
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
