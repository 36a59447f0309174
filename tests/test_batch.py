"""`python -m streamgen.batch`: a rerun continues a stopped one from its manifest; `streamgen generate` with a multi-line
file runs the same batch. Sharded over 2 processes (byte-identical to 1): tests/test_distributed.py."""

import json

import numpy as np

from streamgen.batch import main
from streamgen.batch_manifest import checkpoint_hash
from streamgen.cli import main as cli
from streamgen.resources import pipeline_path
from streamgen.video_io import read_video

TINY = pipeline_path("tiny-random")
PROMPTS = (
    '{"prompts": ["a red circle", "a blue square"], "seed": 1}\n'
    '{"prompts": ["a green triangle", "a red circle"], "seed": 2}\n'
    '{"prompts": ["a yellow square", "a blue square"]}\n'
)


def manifest_lines(out_dir):
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def test_a_rerun_skips_complete_videos_and_redoes_a_cut_one_from_the_manifest(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    out = tmp_path / "videos"
    args = ["--prompts", str(prompts), "--switch-frame-indices", "3", "--frames", "6", "--pipeline", str(TINY),
            "--out-dir", str(out)]
    assert main(args) == 0
    lines = manifest_lines(out)
    assert [(e["video"], e["line"], e["prompts"], e["seed"]) for e in lines] == [
        ("0000.mp4", 0, ["a red circle", "a blue square"], 1), ("0001.mp4", 1, ["a green triangle", "a red circle"], 2),
        ("0002.mp4", 2, ["a yellow square", "a blue square"], 2)]  # a line's seed, else its index
    first = lines[0]
    assert first["checkpoint"] == checkpoint_hash(TINY) and first["checkpoint"].startswith("sha256:")
    assert (first["preset"], first["frames"], first["frames_written"], first["source"]) == (
        "rolling", 6, 6, "prompts.jsonl")  # the tiny pipeline's default preset
    assert first["schedule"]["segments"][1] == {"prompt": "a blue square", "start_latent_frame": 3}
    videos = {name: read_video(out / name) for name in ("0000.mp4", "0001.mp4", "0002.mp4")}
    capsys.readouterr()

    whole = (out / "0001.mp4").read_bytes()
    (out / "0001.mp4").write_bytes(whole[: len(whole) // 2])  # a run killed while renaming / a disk that filled up
    (out / "0002.mp4.partial").write_bytes(b"left by a killed run")
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("0000.mp4", "0002.mp4")}
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0000.mp4 (complete, skipped)" in printed and "0002.mp4 (complete, skipped)" in printed
    assert "0001.mp4 (complete" not in printed and "0001.mp4" in printed
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert np.array_equal(read_video(out / "0001.mp4"), videos["0001.mp4"])
    assert len(manifest_lines(out)) == 4  # the redone video's line appended; the last line of a video wins

    assert main([*args, "--seed", "5"]) == 0  # asked for differently: every video is made again
    assert "skipped" not in capsys.readouterr().out
    assert [e["seed"] for e in manifest_lines(out)[-3:]] == [5, 6, 7]


def test_generate_with_a_multi_line_file_makes_one_video_per_line_as_batch_does(tmp_path):
    prompts = tmp_path / "vbench.txt"
    prompts.write_text("a red circle\na blue square moving left\n")  # a plain list, as Self-Forcing's VBench files
    common = ["--frames", "6", "--pipeline", str(TINY)]
    assert cli(["generate", "--prompts", str(prompts), "--out", str(tmp_path / "videos.mp4"), *common]) == 0
    assert main(["--prompts", str(prompts), "--out-dir", str(tmp_path / "batch"), *common]) == 0
    for name in ("0000.mp4", "0001.mp4"):
        assert np.array_equal(read_video(tmp_path / "videos" / name), read_video(tmp_path / "batch" / name)), name
    assert [e["prompts"] for e in manifest_lines(tmp_path / "videos")] == [["a red circle"],
                                                                          ["a blue square moving left"]]


def test_generate_refuses_one_video_options_for_a_whole_file(tmp_path, capsys):
    prompts = tmp_path / "list.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert cli(["generate", "--prompts", str(prompts), "--steps", "2", "--pipeline", str(TINY)]) != 0
    assert "--steps: not for a whole prompt file" in capsys.readouterr().err
