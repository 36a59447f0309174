"""``streamgen bench quality``: what a model generates, read back by the ShapeWorld oracle (see :mod:`.suites`)."""

from .suites import (
    FULL, QUICK, SUITES, Layout, PipelineSource, ReferenceSource, Sizes, Video, cmd_bench_quality, markdown_table,
    register_cli, run_quality, run_quality_compare, strip_timing, summary_rows,
)

__all__ = ["SUITES", "Sizes", "FULL", "QUICK", "Layout", "Video", "PipelineSource", "ReferenceSource", "run_quality",
           "run_quality_compare", "markdown_table", "summary_rows", "register_cli", "cmd_bench_quality", "strip_timing"]
