"""``streamgen bench speed``: throughput, latency, memory and pipeline overhead of one stream.

Measured, never asserted: FPS (video frames per wall second), first-chunk latency, the latency of every chunk
(and the median of chunks 10-60 vs the last 50, to show latency stays flat on long streams),
peak RSS (and RSS early vs late, to show memory stays flat), the KV cache bytes, and ``overhead_ratio`` = pipeline
wall time / time spent inside transformer forwards (1.0 would mean the pipeline adds nothing around the model).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path

import psutil
import torch


def _median(values: list[float]) -> float | None:
    # Medians: a shared CPU adds bursts of noise that would swamp a mean over 50 chunks.
    return statistics.median(values) if values else None


def run_speed_benchmark(
    pipe, *, prompt: str, num_frames: int, cache: str | None = None, seed: int = 0,
    height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
) -> dict:
    process = psutil.Process()
    generator = torch.Generator(pipe.transformer.device).manual_seed(seed)
    stream = pipe.stream(
        prompt, num_frames=num_frames, cache=cache, height=height, width=width, generator=generator,
        num_inference_steps=num_inference_steps,
    )
    stream.engine.synchronize_timing = True
    latencies, rss = [], []
    frames = 0
    start = last = time.perf_counter()
    for chunk in stream:
        frames += chunk.video.shape[2]
        if chunk.video.is_cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        latencies.append(now - last)
        last = now
        rss.append(process.memory_info().rss)
    wall = time.perf_counter() - start
    n = len(latencies)
    # Early = chunks 10-60, late = the last 50 (short runs: halves, skipping the warm-up chunk).
    early = latencies[10:60] if n >= 110 else latencies[1 : 1 + (n - 1) // 2]
    late = latencies[-50:] if n >= 110 else latencies[1 + (n - 1) // 2 :]
    result = {
        "pipeline": str(getattr(pipe, "name_or_path", "")),
        "cache": stream.engine.preset.name,
        "frames": frames,
        "chunks": n,
        "height": height or pipe.config.height,
        "width": width or pipe.config.width,
        "device": str(pipe.transformer.device),
        "dtype": str(pipe.transformer.dtype),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "wall_seconds": wall,
        "fps": frames / wall,
        "first_chunk_latency_s": latencies[0],
        "chunk_latencies_s": latencies,
        "latency_early_median_s": _median(early),
        "latency_late_median_s": _median(late),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_early_bytes": rss[min(10, n - 1)],
        "rss_end_bytes": rss[-1],
        "cache_bytes": stream.cache_bytes,
        "transformer_seconds": stream.engine.transformer_seconds,
        "overhead_ratio": wall / stream.engine.transformer_seconds,
    }
    if torch.cuda.is_available() and chunk.video.is_cuda:
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return result


def summarize(result: dict) -> str:
    early, late = result["latency_early_median_s"], result["latency_late_median_s"]
    drift = f"{(late / early - 1) * 100:+.1f}%" if early and late else "too few chunks to compare"
    rss_growth = (result["rss_end_bytes"] / result["rss_early_bytes"] - 1) * 100
    return "\n".join(
        [
            f"frames {result['frames']} in {result['chunks']} chunks, {result['wall_seconds']:.2f} s "
            f"({result['device']}, {result['threads']} threads, cache {result['cache']})",
            f"fps                  {result['fps']:.1f}",
            f"first-chunk latency  {result['first_chunk_latency_s'] * 1000:.1f} ms",
            f"chunk latency        median early {(early or 0) * 1000:.2f} ms, late {(late or 0) * 1000:.2f} ms ({drift})",
            f"RSS                  early {result['rss_early_bytes'] / 2**20:.1f} MiB, "
            f"end {result['rss_end_bytes'] / 2**20:.1f} MiB ({rss_growth:+.2f}%), "
            f"peak {result['peak_rss_bytes'] / 2**20:.1f} MiB",
            f"cache bytes          {result['cache_bytes']}",
            f"overhead_ratio       {result['overhead_ratio']:.3f}",
        ]
    )


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
