"""``streamgen bench quality``: what a model generates, read back by the ShapeWorld oracle.

```py
>>> from streamgen.bench.quality import run_quality
>>> from streamgen.resources import pipeline_path
>>> result = run_quality(pipeline_path("tiny-random"), cache="rolling", quick=True)
>>> result["suites"]["single"]["accuracy"]["shape"]
>>> run_quality("reference", quick=True)["suites"]["switch"]["new"]["cut"]   # the ground-truth renderer: ~100%
```

Every video is a prompt schedule of held-out ShapeWorld scenes (``streamgen.world.split_of``) driven through the
pipeline's public API (``pipe.stream(schedule=..., num_frames=..., cache=..., generator=...)``); switches sit on
chunk boundaries. The same schedules and seeds can be played by the world's own renderer instead
(``"reference"``), which must score ~100%: that proves the harness.

The suites (``single``, ``switch``, ``long``, ``recall``, ``temporal``, ``continuation``; sizes in :class:`Sizes`,
``quick=True`` shrinks them for tests) are :class:`Suite` records in :data:`SUITES`, each documented where it is
defined (:mod:`.suites`). Modules: :mod:`.harness` (sizes, frame grid, videos, sources, the runner), :mod:`.suites`,
:mod:`.run` (:func:`run_quality`, :func:`run_quality_compare`), :mod:`.report` (rows and tables), :mod:`.cli`.

Output: a JSON-able dict. Everything outside ``timing`` is deterministic for the same inputs (same pipeline, preset,
seed, sizes); wall-clock numbers live under ``timing`` only. ``plots`` lists the PNGs written (per-frame agreement
around switches, and one per other suite).
"""

from .cli import cmd_bench_quality, register_cli
from .harness import FULL, QUICK, Layout, PipelineSource, ReferenceSource, Runner, Sizes, Video
from .report import markdown_table, strip_timing, summary_rows
from .run import run_quality, run_quality_compare
from .suites import SUITES, Suite, register_suite

__all__ = ["SUITES", "Suite", "register_suite", "Runner", "Sizes", "FULL", "QUICK", "Layout", "Video",
           "PipelineSource", "ReferenceSource", "run_quality", "run_quality_compare", "markdown_table",
           "summary_rows", "register_cli", "cmd_bench_quality", "strip_timing"]
