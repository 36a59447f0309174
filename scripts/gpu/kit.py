"""The GPU run kit: everything a lent GPU should measure, in one command that finishes within 10 minutes.

The device machine (an H200) has PyTorch and transformers but not diffusers, and takes at most 64 MiB of files along.

  here:   python scripts/gpu/kit.py pack
          (writes .gpukit/, git-ignored: the wheels of exactly the missing packages, diffusers and importlib_metadata,
          ~3 MB, and the CPU reference latents of the parity stream, a few KB)
  there:  device run, carry [".gpukit"], command: bash scripts/gpu/run.sh   (results: JSON under $OUT)
  here:   python scripts/gpu/kit.py run --dry-run   (the preflight on this CPU; tests/test_gpu_kit.py runs it)

``run`` does, in order, each step in its own process under a time limit (a hang or a crash costs that step only):
  preflight  every import the steps need, the GPU's name and memory, the kit's files (seconds);
  parity     the tiny-random stream on the GPU in fp32 (TF32 off) and bf16 against the CPU reference latents;
  speed      Wan2.1-1.3B with random weights (speed does not depend on weight values) at 480x832, the pipeline's 4
             steps, a 21-latent-frame self-forcing stream, once per attention backend present (SDPA, torch's flash
             SDPA, flash-attn, xformers), each with its peak GPU memory; then, while time is left, a 241-frame
             longlive stream and the compiled feed-forwards with the fastest backend.
Results: $OUT/preflight.json, parity.json, speed-<run>.json (bench speed's full result) and summary.json.
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
WHEELS = ("diffusers", "importlib_metadata")  # what the device image lacks, nothing more
PARITY = dict(prompt="a red circle drifting left over a blue backdrop", num_frames=9, seed=0)
# Parity bounds: fp32 with TF32 off differs from the CPU only by kernel order; bf16 keeps ~3 significant digits.
PARITY_BOUNDS = {"fp32": 1e-3, "bf16": 5e-2}  # relative L2 error of the latents
STEPS = ("preflight", "parity", "speed")
STEP_LIMIT_S = {"preflight": 60, "parity": 120, "speed": 390}
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
    generator = torch.Generator(device).manual_seed(PARITY["seed"])
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


# ---- the one command --------------------------------------------------------------------------------------------
def run(dry_run: bool, budget_s: float) -> int:
    """Every step in order, each in its own process; summary.json says what each found or why it was skipped."""
    start = time.time()
    summary = {"dry_run": dry_run, "steps": {}}
    for step in STEPS:
        if dry_run and step != "preflight":
            summary["steps"][step] = {"skipped": "dry run (no GPU steps)"}
            continue
        left = budget_s - (time.time() - start)
        if left < 30:
            summary["steps"][step] = {"skipped": "out of time"}
            continue
        limit = min(STEP_LIMIT_S[step], left)
        argv = [sys.executable, __file__, "step", step, "--deadline", str(time.time() + limit - 45)]
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
    step = sub.add_parser("step", help="one step (what run calls)")
    step.add_argument("name", choices=STEPS)
    step.add_argument("--deadline", type=float, default=float("inf"))
    step.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack()
        return 0
    if args.command == "run":
        return run(args.dry_run, args.budget)
    result = (preflight(args.dry_run) if args.name == "preflight" else parity() if args.name == "parity"
              else speed(args.deadline))
    _write(f"{args.name}.json", result)
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
