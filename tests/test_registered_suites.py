"""The shared battery of bench suites: every registered quality suite runs at quick sizes on the reference renderer
(twice, to the same JSON) and on the tiny random pipeline, and gives well-formed table rows and plots. A new suite is
tested by registering it: nothing here names one. The worked example of CONTRIBUTING.md ("Add a bench suite") runs
through the same battery."""

import json
import math
from pathlib import Path

import pytest

from streamgen.bench.quality import (
    SUITES, Suite, markdown_table, register_suite, run_quality, strip_timing, summary_rows,
)
from streamgen.pipeline import load_pipeline
from streamgen.resources import pipeline_path
from test_registered_formats import guide_example

KINDS = ("pct", "num", "fps", "mb")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(pipeline_path("tiny-random"))


def check_rows(result: dict, name: str) -> list[str]:
    rows = summary_rows(result)
    assert rows, f"suite {name} gives no table rows"
    for metric, value, kind in rows:
        assert isinstance(metric, str) and kind in KINDS, (metric, kind)
        assert value is None or math.isfinite(value), (metric, value)
        assert kind != "pct" or value is None or 0.0 <= value <= 1.0, (metric, value)
    return [metric for metric, _, _ in rows]


def check_suite(name: str, pipe, folder: Path) -> None:
    reference = run_quality("reference", suites=[name], quick=True, out_dir=folder)
    assert list(reference["suites"]) == [name]
    json.dumps(reference)  # JSON-able
    again = run_quality("reference", suites=[name], quick=True)
    assert json.dumps(strip_timing(again)["suites"], sort_keys=True) == json.dumps(
        strip_timing(reference)["suites"], sort_keys=True)
    for png in reference["plots"].values():
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = check_rows(reference, name)

    generated = run_quality(pipe, suites=[name], cache="rolling", quick=True)
    json.dumps(generated)
    generated_metrics = check_rows(generated, name)
    assert set(metrics) <= set(generated_metrics)  # a pipeline may add rows (its stream memory), never lose one
    table = markdown_table({"rolling": generated, "reference": reference}).splitlines()
    assert {line.split(" | ")[0].removeprefix("| ") for line in table[2:]} >= set(generated_metrics)


@pytest.mark.parametrize("name", list(SUITES))
def test_every_registered_suite_runs_on_the_reference_and_the_tiny_pipeline(name, pipe, tmp_path):
    check_suite(name, pipe, tmp_path)


def test_the_first_suites_keep_the_seed_ids_their_published_numbers_were_measured_with():
    ids = {name: suite.seed_id for name, suite in SUITES.items()}
    assert {n: ids[n] for n in ("single", "switch", "long", "recall", "temporal", "continuation")} == {
        "single": 1, "switch": 2, "long": 3, "recall": 4, "temporal": 5, "continuation": 6}
    assert len(set(ids.values())) == len(ids)


def test_a_suite_needs_a_new_name_and_a_free_seed_id():
    def rows(result):
        return []

    with pytest.raises(ValueError, match="already registered"):
        register_suite(Suite("single", 9, SUITES["single"].run, rows))
    with pytest.raises(ValueError, match="taken by 'switch'"):
        register_suite(Suite("another", 2, SUITES["single"].run, rows))
    with pytest.raises(ValueError, match="1..15"):
        register_suite(Suite("another", 16, SUITES["single"].run, rows))


def test_the_guide_s_worked_example_registers_a_suite_the_battery_runs(pipe, tmp_path):
    before = dict(SUITES)
    try:
        exec(guide_example("Add a bench suite"), {})
        (new,) = [name for name in SUITES if name not in before]
        check_suite(new, pipe, tmp_path)
        assert all(v == 1.0 for _, v, kind in summary_rows(run_quality("reference", suites=[new], quick=True))
                   if kind == "pct")  # the ground truth scores 100%
    finally:
        SUITES.clear()
        SUITES.update(before)
