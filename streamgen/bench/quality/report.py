"""Reading quality results: each registered suite's headline rows, one markdown table over several runs, the
speed of each run relative to a baseline, and the deterministic part of a result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .suites import SUITES, Row


def summary_rows(result: dict) -> list[Row]:
    """Headline numbers of one run: (metric, value, kind) with kind "pct", "num", "fps" or "mb", suite by suite."""
    return [row for suite in SUITES.values() if suite.name in result["suites"] for row in suite.rows(result)]


def strip_timing(result: dict) -> dict:
    """The result without wall-clock numbers: what must be identical between two runs of the same inputs."""
    if result.get("benchmark") == "quality-compare":
        return {**result, "runs": {k: strip_timing(v) for k, v in result["runs"].items()}, "table": None}
    return {k: v for k, v in result.items() if k != "timing"}



def relative_speed(runs: dict[str, dict]) -> tuple[str | None, dict[str, float]]:
    """(baseline, {run: long-suite generation FPS / the baseline's}): the cache mechanisms' overhead. The baseline
    is ``rolling`` if it ran, else ``longlive`` (the same regions; only its switch differs), else the first run with a
    long suite."""
    fps = {name: r.get("timing", {}).get("long", {}).get("generation_fps") for name, r in runs.items()
           if r.get("source") == "pipeline"}
    fps = {name: value for name, value in fps.items() if value}
    baseline = next((n for n in ("rolling", "longlive", *fps) if n in fps), None)
    if baseline is None:
        return None, {}
    return baseline, {name: value / fps[baseline] for name, value in fps.items()}


def _cell(value, kind) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "fps":
        return f"{value:.1f}"
    if kind == "mb":
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown_table(runs: dict[str, dict]) -> str:
    """One markdown table: a row per metric, a column per run."""
    names = list(runs)
    table: dict[str, dict[str, str]] = {}
    for name, result in runs.items():
        for metric, value, kind in summary_rows(result):
            table.setdefault(metric, {})[name] = _cell(value, kind)
    baseline, ratios = relative_speed(runs)
    for name, ratio in ratios.items():
        table.setdefault(f"long: FPS relative to `{baseline}` (timing)", {})[name] = f"{ratio:.2f}x"
    lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |"]
    for metric, cells in table.items():
        lines.append(f"| {metric} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    return "\n".join(lines)


def merged_runs(paths: Sequence[str | Path]) -> dict[str, dict]:
    """The runs of several ``--json`` results (single runs or comparisons), in order, as one comparison."""
    runs: dict[str, dict] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        found = result["runs"] if result.get("benchmark") == "quality-compare" else {result["cache"] or "reference": result}
        for name, run in found.items():
            if name in runs:
                raise ValueError(f"{path}: run {name!r} is already in an earlier file")
            runs[name] = run
    return runs

