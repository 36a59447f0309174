"""``streamgen bench speed``: throughput, latency, memory and pipeline overhead of one stream.

Measured, never asserted: FPS (video frames per wall second), first-chunk latency, the latency of every chunk
(and the median of chunks 10-60 vs the last 50, to show latency stays flat on long streams),
peak RSS (and RSS early vs late, to show memory stays flat), the KV cache bytes, and ``overhead_ratio`` = pipeline
wall time / time spent inside transformer forwards (1.0 would mean the pipeline adds nothing around the model).

:func:`compare` runs several presets (and the ``recompute`` baseline: the same model with no cache, re-running the
whole window the cache would hold at every denoising step) round-robin, ``repeat`` rounds, so that a shared CPU's
slow minutes fall on every row alike; :func:`compare_table` prints the medians and spreads.
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


def recompute_without_cache(engine) -> None:
    """Make ``engine`` generate as a model without a KV cache does: at every denoising step the transformer re-runs
    the whole window (the clean latents of the frames the cache would hold, then the noisy chunk; chunk-causal mask,
    each frame at its own timestep) and keeps the chunk's output. Timing baseline only: the cache is neither read
    nor written (it stays allocated) and the cache mechanisms see nothing."""
    from ..models.causal_wan import block_causal_mask

    transformer = engine.transformer
    window = engine.history.capacity  # frames the cache holds
    tokens_per_frame = transformer.tokens_per_frame(*engine.latent_hw)

    def generate_chunk(noise: torch.Tensor) -> torch.Tensor:
        size, first = noise.shape[2], engine.frame
        context = list(range(max(0, first - max(window - size, 0)), first))
        clean = engine.history.get(context) if context else noise[:, :, :0]
        frames = torch.tensor(context + list(range(first, first + size)), dtype=torch.float64)
        rotary = transformer.rotary(frames, frames, *engine.latent_hw)  # cache=None: queries' table for every key
        # Whole chunks before the current one: chunk-causal as at training; a ragged window attends fully.
        mask = (block_causal_mask(len(frames), size, tokens_per_frame, noise.device)
                if len(context) % size == 0 else None)

        def pass_(x, t, prompt_kv):
            times = torch.full((x.shape[0], len(frames)), engine.sampler.context_timestep, device=x.device)
            times[:, len(context):] = t
            with torch.no_grad():
                out = transformer.forward_chunk(torch.cat([clean, x], 2), times, prompt_kv, None, rotary, mask)
            return out[:, :, len(context):].to(x.dtype)

        def flow(x, t):
            start = time.perf_counter()
            out = pass_(x, t, engine.prompt_kv)
            if engine.guidance_scale != 1.0 and engine.negative_prompt_kv is not None:
                negative = pass_(x, t, engine.negative_prompt_kv)
                out = negative + engine.guidance_scale * (out - negative)
            if engine.synchronize_timing and out.is_cuda:
                torch.cuda.synchronize(out.device)
            engine.transformer_seconds += time.perf_counter() - start
            if engine.prediction_type == "sample":
                from ..sampling import flow_from_sample

                return flow_from_sample(x, out, t / engine.sampler.num_train_timesteps)
            return out

        x0 = engine.sampler.sample(flow, noise, engine.generator)
        engine.history.push(first, x0)
        engine.context.frame += size
        return x0

    engine.generate_chunk = generate_chunk


def run_speed_benchmark(
    pipe, *, prompt: str, num_frames: int, cache: str | None = None, seed: int = 0,
    height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
    recompute: bool = False,
) -> dict:
    """One stream's speed; ``recompute``: the no-cache baseline (:func:`recompute_without_cache`) with ``cache``'s
    window."""
    process = psutil.Process()
    generator = torch.Generator().manual_seed(seed)
    stream = pipe.stream(
        prompt, num_frames=num_frames, cache=cache, height=height, width=width, generator=generator,
        num_inference_steps=num_inference_steps,
    )
    stream.engine.synchronize_timing = True
    if recompute:
        recompute_without_cache(stream.engine)
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
        "recompute": recompute,
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


def compare(pipe, caches: list[str | None], *, repeat: int = 1, baseline: str | None = None, **stream) -> list[dict]:
    """Every cache preset in ``caches`` (and, with ``baseline="recompute"``, the no-cache baseline over the first
    one's window), ``repeat`` interleaved rounds; one row per preset: the runs and their medians."""
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    if baseline not in (None, "recompute"):
        raise ValueError(f"--baseline {baseline!r}: the one baseline is 'recompute'")
    rows = [{"cache": cache, "recompute": False, "runs": []} for cache in caches]
    if baseline:
        rows.append({"cache": caches[0], "recompute": True, "runs": []})
    for _ in range(repeat):
        for row in rows:
            row["runs"].append(run_speed_benchmark(pipe, cache=row["cache"], recompute=row["recompute"], **stream))
    for row in rows:
        runs = row["runs"]
        row["name"] = f"recompute ({runs[0]['cache']} window)" if row["recompute"] else runs[0]["cache"]
        for key, values in (("fps", [r["fps"] for r in runs]),
                            ("chunk_latency_s", [_median(r["chunk_latencies_s"][1:] or r["chunk_latencies_s"])
                                                 for r in runs]),
                            ("first_chunk_latency_s", [r["first_chunk_latency_s"] for r in runs])):
            row[key] = {"median": _median(values), "min": min(values), "max": max(values)}
    return rows


def compare_table(rows: list[dict]) -> str:
    """One table: each row's median FPS and chunk latency with their spread (min-max over the rounds), and the
    chunk-latency ratio to the first row."""
    reference = rows[0]["chunk_latency_s"]["median"]
    first = rows[0]["runs"][0]
    header = ("preset", "fps", "chunk ms (after the 1st)", "first chunk ms", "x row 1")
    cells = [header]
    for row in rows:
        fps, chunk, head = row["fps"], row["chunk_latency_s"], row["first_chunk_latency_s"]
        cells.append((row["name"], f"{fps['median']:.1f} ({fps['min']:.1f}-{fps['max']:.1f})",
                      f"{chunk['median'] * 1e3:.1f} ({chunk['min'] * 1e3:.1f}-{chunk['max'] * 1e3:.1f})",
                      f"{head['median'] * 1e3:.1f}", f"{chunk['median'] / reference:.2f}"))
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [f"{len(rows[0]['runs'])} interleaved round(s), {first['frames']} frames, {first['device']}, "
             f"{first['threads']} threads; median (min-max)"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
              for line in cells]
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
