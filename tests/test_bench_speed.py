"""``streamgen bench speed``: repeated rounds, presets compared in one interleaved run, the no-cache baseline."""

import json

import pytest
import torch

from streamgen.bench.speed import compare
from streamgen.cli import main
from streamgen.loading import open_pipeline
from streamgen.resources import pipeline_path

TINY = pipeline_path("tiny-random")


@pytest.fixture(scope="module")
def pipe():
    return open_pipeline(TINY)


def test_compare_with_repeat_and_the_recompute_baseline_prints_one_table(tmp_path, capsys):
    out = tmp_path / "compare.json"
    argv = ["bench", "speed", "--pipeline", str(TINY), "--frames", "9", "--compare", "rolling,self-forcing,streamgen",
            "--repeat", "3", "--baseline", "recompute", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("3 interleaved round(s), 9 frames")
    assert [line.split("  ")[0].strip() for line in table[2:]] == ["rolling", "self-forcing", "streamgen",
                                                                   "recompute (rolling window)"]
    rows = json.loads(out.read_text())["rows"]
    assert [len(row["runs"]) for row in rows] == [3, 3, 3, 3]
    for row in rows:
        assert row["fps"]["min"] <= row["fps"]["median"] <= row["fps"]["max"]
        assert all(run["frames"] == 9 for run in row["runs"])
    assert rows[-1]["recompute"] and not any(row["recompute"] for row in rows[:-1])


def test_the_recompute_baseline_re_runs_the_window_and_attends_like_the_cache(pipe):
    """Before the cache evicts anything, recomputing the window every step attends to the same frames as the cache
    does (chunk-causal, same positions): the videos agree to float rounding, and the transformer sees more tokens."""
    kwargs = dict(prompt="a red circle", num_frames=9, seed=0)
    cached, recomputed = compare(pipe, ["global"], baseline="recompute", **kwargs)
    assert recomputed["name"] == "recompute (global window)"
    streams = []
    for recompute in (False, True):
        from streamgen.bench.speed import recompute_without_cache

        stream = pipe.stream(kwargs["prompt"], num_frames=9, cache="global",
                             generator=torch.Generator().manual_seed(0))
        if recompute:
            recompute_without_cache(stream.engine)
        streams.append(torch.cat([chunk.latents for chunk in stream], 2))
    torch.testing.assert_close(streams[1], streams[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("argv, message", [(["--repeat", "0"], "--repeat"), (["--compare", "rolling,"], "--compare"),
                                           (["--compare", "rolling", "--cache", "global"], "--compare")])
def test_bad_bench_speed_options_are_refused(argv, message, capsys):
    assert main(["bench", "speed", "--pipeline", str(TINY), "--frames", "3", *argv]) == 2
    assert message in capsys.readouterr().err
