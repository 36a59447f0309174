"""Running the quality suites: :func:`run_quality` on one source (a pipeline with one cache preset, or the reference
renderer), :func:`run_quality_compare` on several presets with the same seeds."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from .harness import FULL, QUICK, Layout, PipelineSource, ReferenceSource, Runner, Sizes
from .report import markdown_table
from .suites import SUITES


def source_for(pipeline, cache, device, layout):
    if isinstance(pipeline, str) and pipeline == "reference":
        return ReferenceSource(layout or Layout())
    if isinstance(pipeline, (str, Path)):
        from ...pipeline import load_pipeline

        pipeline = load_pipeline(pipeline, device)
    return PipelineSource(pipeline, cache)


def run_quality(pipeline, suites: Sequence[str] = SUITES, cache: str | None = None, seed: int = 0, *,
                quick: bool = False, sizes: Sizes | None = None, out_dir: str | Path | None = None,
                device: str = "cpu", layout: Layout | None = None, log: Callable[[str], None] | None = None,
                options: dict | None = None) -> dict:
    """Run the quality suites on ``pipeline`` (a pipeline folder, a StreamingVideoPipeline, or ``"reference"`` for
    the ground-truth renderer on ``layout``) with cache preset ``cache``; write PNG plots to ``out_dir`` if given.
    ``options``: suite settings (the erasure suite's ``erasure`` configurations, see :mod:`.erasure`)."""
    suites = check_suites(suites)
    sizes = sizes or (QUICK if quick else FULL)
    source = source_for(pipeline, cache, device, layout)
    label = source.name
    out = Path(out_dir) if out_dir is not None else None
    runner = Runner(source, int(seed), sizes, out, label, log or (lambda _: None), options)
    start = time.perf_counter()
    results = {}
    for suite in suites:
        runner.log(f"[{label}] {suite} ...")
        results[suite] = runner.timed(suite, SUITES[suite].run)
    runner.timing["total_seconds"] = round(time.perf_counter() - start, 3)
    pipe_name = "reference" if isinstance(source, ReferenceSource) else str(getattr(source.pipe, "name_or_path", ""))
    return {
        "benchmark": "quality",
        "source": "reference" if isinstance(source, ReferenceSource) else "pipeline",
        "pipeline": pipe_name,
        "cache": None if isinstance(source, ReferenceSource) else source.name,
        "seed": int(seed),
        "quick": bool(quick),
        "sizes": asdict(sizes),
        "layout": asdict(source.layout),
        "suites": results,
        "plots": dict(runner.plots),
        "timing": runner.timing,
    }


def run_quality_compare(pipeline, presets: Sequence[str], suites: Sequence[str] = SUITES, seed: int = 0, *,
                        reference: bool = False, quick: bool = False, sizes: Sizes | None = None,
                        out_dir: str | Path | None = None, device: str = "cpu",
                        log: Callable[[str], None] | None = None, options: dict | None = None) -> dict:
    """The same suites and seeds on several cache presets (and the reference renderer if ``reference``); one
    markdown table with a column per run."""
    from ...pipeline import StreamingVideoPipeline

    if isinstance(pipeline, (str, Path)):
        source = source_for(pipeline, None, device, None)
        pipe = source.pipe
    else:
        pipe = pipeline
    if not isinstance(pipe, StreamingVideoPipeline):
        raise ValueError("--compare needs a pipeline")
    runs = {}
    for preset in presets:
        runs[preset] = run_quality(pipe, suites, preset, seed, quick=quick, sizes=sizes, out_dir=out_dir,
                                   log=log, options=options)
    if reference:
        runs["reference"] = run_quality("reference", suites, None, seed, quick=quick, sizes=sizes, out_dir=out_dir,
                                        layout=Layout.of(pipe), log=log)
    return {"benchmark": "quality-compare", "runs": runs, "table": markdown_table(runs)}


def check_suites(suites) -> tuple[str, ...]:
    if isinstance(suites, str):
        suites = [s.strip() for s in suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    return tuple(suites)
