"""`streamgen bench quality`: the harness scores the ground-truth renderer ~100% and a random model near chance."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from streamgen.bench.quality import (
    QUICK, SUITES, Layout, PipelineSource, ReferenceSource, Sizes, Video, markdown_table, register_cli, run_quality,
    run_quality_compare, strip_timing,
)
from streamgen.pipeline import StreamingVideoPipeline
from streamgen.resources import pipeline_path
from streamgen.world.scenes import first_seeds, sample_scene

TINY = pipeline_path("tiny-random")
# Smaller than --quick: ~60 frames per run of every suite on the tiny random pipeline.
TEST_SIZES = Sizes(single_videos=2, single_chunks=2, switch_pairs=2, switch_chunks_before=1, switch_chunks_after=3,
                   long_frames=15, long_windows=((0, 6), (9, 15)), recall_triples=1, recall_chunks=1,
                   temporal_videos=2, motion_window=6)


@pytest.fixture(scope="module")
def pipe():
    pipe = StreamingVideoPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_reference_renderer_scores_100_percent_everywhere_but_inside_a_smooth_cross_fade(tmp_path):
    result = run_quality("reference", quick=True, out_dir=tmp_path)
    s = result["suites"]
    assert set(s) == set(SUITES) and result["source"] == "reference"
    assert all(v == 1.0 for v in s["single"]["accuracy"].values())
    assert s["single"]["videos"] == QUICK.single_videos and s["single"]["found"] == 1.0
    cut = s["switch"]["cut"]
    assert cut["new"] == {"chunk1": 1.0, "chunk2": 1.0, "chunk3": 1.0} and cut["old"]["chunk1"] == 0.0
    assert cut["old_before"] == 1.0 and cut["new_direction"]["chunk1"] == 1.0
    smooth = s["switch"]["smooth"]  # a 4-frame cross-fade: chunk 1 (3 frames) is blended by design
    assert smooth["new"]["chunk2"] == smooth["new"]["chunk3"] == 1.0 and smooth["old"]["chunk2"] == 0.0
    assert smooth["new"]["chunk1"] < 1.0
    for window in s["long"]["windows"].values():
        assert window["all"] == window["direction"] == window["speed"] == 1.0
    assert all(v == 1.0 for v in s["recall"]["match"].values())
    chance = s["recall"]["chance"]
    assert 0.2 < chance["size"] < 0.5 and 0.15 < chance["decoration_color"] < 0.4
    assert chance["decoration_position"] < 0.05
    t = s["temporal"]
    assert t["background_color_flicker"] == 0.0 and t["object_color_flicker"] == 0.0
    assert t["background_flips"] == t["color_flips"] == t["shape_flips"] == 0.0
    assert t["background_pixel_flicker"] == 0.0
    for suite in SUITES:
        png = tmp_path / result["plots"][suite]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_random_pipeline_runs_every_suite_near_chance_and_twice_gives_the_same_json(pipe, tmp_path):
    first = run_quality(pipe, cache="rolling", sizes=TEST_SIZES, out_dir=tmp_path / "a")
    second = run_quality(pipe, cache="rolling", sizes=TEST_SIZES, out_dir=tmp_path / "a")
    assert json.dumps(strip_timing(first), sort_keys=True) == json.dumps(strip_timing(second), sort_keys=True)
    assert first["timing"]["long_fps"] and first["timing"]["single"]["generation_fps"] > 0
    s = first["suites"]
    assert first["layout"] == {"chunk_frames": 3, "temporal": 1, "fps": 16.0, "resolution": 32}
    assert s["single"]["frames_per_video"] == 6 and s["long"]["frames"] == 15
    assert s["single"]["accuracy"]["all"] == 0.0  # random weights draw no prompted scene
    assert s["switch"]["all"]["new"]["chunk1"] <= 0.5 and s["recall"]["match"]["all_details"] == 0.0
    assert len(list((tmp_path / "a").glob("quality_rolling_*.png"))) == len(SUITES)
    json.dumps(first)  # JSON-able


def test_compare_runs_presets_on_the_same_seeds_into_one_table(pipe):
    result = run_quality_compare(pipe, ["rolling", "block-relative"], suites=("single", "recall"),
                                 sizes=TEST_SIZES, reference=True)
    assert list(result["runs"]) == ["rolling", "block-relative", "reference"]
    lines = result["table"].splitlines()
    assert lines[0] == "| metric | `rolling` | `block-relative` | `reference` |"
    assert all(line.count("|") == 5 for line in lines)
    assert any(line.startswith("| recall: decoration color matches |") and line.endswith("| 100.0% |")
               for line in lines)
    ref = result["runs"]["reference"]
    assert ref["layout"] == result["runs"]["rolling"]["layout"]
    assert ref["suites"]["single"]["accuracy"]["all"] == 1.0


def test_compare_reports_bounded_stream_memory_and_speed_relative_to_rolling(pipe):
    sizes = Sizes(**{**TEST_SIZES.__dict__, "long_frames": 45, "long_windows": ((0, 6), (39, 45))})
    result = run_quality_compare(pipe, ["global", "rolling"], suites=("long",), sizes=sizes)
    windows = {name: run["suites"]["long"]["windows"] for name, run in result["runs"].items()}
    rolling = [w["memory_bytes"] for w in windows["rolling"].values()]
    assert rolling[0] == rolling[1] > 0  # the same bytes at frame 6 and at frame 45: bounded
    assert windows["global"]["frames_0_6"]["memory_bytes"] > rolling[0]  # a 45-frame global cache is bigger
    lines = result["table"].splitlines()
    assert any(line.startswith("| long 0-6: stream memory (MB) |") for line in lines)
    (speed,) = [line for line in lines if line.startswith("| long: FPS relative to `rolling` (timing) |")]
    assert speed.endswith("| 1.00x |")


def test_the_cli_writes_json_plots_and_a_markdown_table(pipe, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="streamgen")
    bench = parser.add_subparsers(dest="command").add_parser("bench").add_subparsers(dest="suite")
    register_cli(bench)
    out = tmp_path / "q.json"
    args = parser.parse_args(["bench", "quality", "--pipeline", str(TINY), "--cache", "block-relative", "--quick",
                              "--suites", "single,switch", "--json", str(out), "--plots", str(tmp_path / "plots"),
                              "--seed", "3"])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["cache"] == "block-relative" and result["seed"] == 3 and result["quick"] is True
    assert set(result["suites"]) == {"single", "switch"}
    assert (tmp_path / "plots" / "quality_block-relative_switch.png").is_file()
    table = capsys.readouterr().out
    assert table.startswith("| metric | `block-relative` |") and "switch cut: new prompt, chunk 1" in table
    assert "switch cut: old colour left, chunk 1" in table  # one attribute at a time too
    ref = parser.parse_args(["bench", "quality", "--reference", "--quick", "--suites", "recall",
                             "--json", str(out)])
    assert ref.func(ref) == 0
    assert json.loads(out.read_text())["suites"]["recall"]["match"]["all_details"] == 1.0
    with pytest.raises(ValueError, match="unknown suite"):
        bad = parser.parse_args(["bench", "quality", "--reference", "--suites", "single,speed"])
        bad.func(bad)
    # --table: one table from earlier results, e.g. the halves of a comparison run in parallel
    (tmp_path / "q.json").rename(tmp_path / "ref.json")
    args = parser.parse_args(["bench", "quality", "--pipeline", str(TINY), "--compare", "rolling", "--quick",
                              "--suites", "recall", "--json", str(tmp_path / "cmp.json")])
    assert args.func(args) == 0
    capsys.readouterr()
    merged = parser.parse_args(["bench", "quality", "--table", str(tmp_path / "cmp.json"), str(tmp_path / "ref.json")])
    assert merged.func(merged) == 0
    assert capsys.readouterr().out.startswith("| metric | `rolling` | `reference` |")
    twice = parser.parse_args(["bench", "quality", "--table", str(tmp_path / "ref.json"), str(tmp_path / "ref.json")])
    with pytest.raises(ValueError, match="already in an earlier file"):
        twice.func(twice)


def test_the_streamgen_command_has_bench_quality_once_wired():
    from streamgen.cli import build_parser

    try:
        args = build_parser().parse_args(["bench", "quality", "--reference", "--quick"])
    except SystemExit:
        pytest.skip("cli.py does not register `bench quality` yet (the lead wires register_cli)")
    assert args.reference and args.quick


def test_layout_maps_latent_chunks_to_video_frames():
    pixel = Layout(chunk_frames=3, temporal=1)
    assert [pixel.video_start(k) for k in (0, 3, 6)] == [0, 3, 6]
    wan = Layout(chunk_frames=3, temporal=4)  # Wan VAE: the first chunk decodes to 9 frames, later ones to 12
    assert [wan.video_start(k) for k in (0, 3, 6)] == [0, 9, 21] and wan.frames_for_latents(6) == 21
    assert "n/a" in markdown_table({"x": {"suites": {"temporal": {
        "background_pixel_flicker": None, "background_color_flicker": 0.0, "object_color_flicker": None,
        "object_area_flicker": None, "background_flips": 0.0, "color_flips": 0.0, "shape_flips": 0.0}}}})
    assert np.isclose(TEST_SIZES.long_windows[1][1], 15)


def test_continuation_plays_true_context_then_scores_each_chunk_against_the_true_continuation(pipe):
    ref = run_quality("reference", suites=["continuation", "single"], quick=True)["suites"]
    c = ref["continuation"]
    assert c["first_chunk"] == {"found": 1.0, "color": 1.0, "shape": 1.0, "centroid_error_px": 0.0}
    assert c["direction"] == c["speed"] == 1.0 and len(c["per_chunk"]["shape"]) == QUICK.continuation_chunks
    assert c["context_frames"] == 3 * QUICK.continuation_context_chunks
    assert ref["single"]["per_chunk"]["shape"] == [1.0] * QUICK.single_chunks
    # A pipeline sees the true frames as context: the same video with and without them differs.
    out = run_quality(pipe, suites=["continuation"], cache="rolling", quick=True)["suites"]["continuation"]
    assert set(out["first_chunk"]) == {"found", "color", "shape", "centroid_error_px"}
    video = Video(((sample_scene(first_seeds("heldout", 1)[0]), 2, "cut"),), seed=5, context=1)
    with_context = PipelineSource(pipe, "rolling").generate(video).frames
    without = PipelineSource(pipe, "rolling").generate(dataclasses.replace(video, context=0)).frames
    assert with_context.shape == without.shape == (6, 32, 32, 3) and not np.array_equal(with_context, without)
    truth = video.truth(Layout())  # the context's true frames, then the parts
    assert len(truth.frames) == 9 and np.array_equal(ReferenceSource().generate(video).frames, truth.frames[3:])
