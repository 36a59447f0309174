"""The `streamgen` command, end to end on the tiny random pipeline."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamgen.cli import main
from streamgen.resources import pipeline_path
from streamgen.video_io import read_video

REPO = Path(__file__).resolve().parents[1]
TINY = pipeline_path("tiny-random")
SCHEDULE = REPO / "assets" / "schedules" / "shapeworld-switch.yaml"


def test_generate_writes_every_frame_of_a_prompt_switch_schedule(tmp_path, capsys):
    out = tmp_path / "switch.mp4"
    assert main(["generate", "--pipeline", str(TINY), "--prompts", str(SCHEDULE), "--frames", "18", "--out", str(out)]) == 0
    video = read_video(out)
    assert video.shape == (18, 32, 32, 3)
    log = capsys.readouterr().err
    assert "chunk 5:" in log


def test_generate_reports_a_bad_schedule_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("segments:\n  - prompt: a red circle\n    frames: -3\n")
    with pytest.raises(SystemExit, match=r"bad.yaml:3:\d+"):
        main(["generate", "--pipeline", str(TINY), "--prompts", str(bad), "--out", str(tmp_path / "x.mp4")])
    assert not (tmp_path / "x.mp4").exists()


def test_info_prints_sizes_and_the_cache_budget(capsys):
    assert main(["info", "--pipeline", str(TINY)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"tokens per latent frame +256\n", text)
    # rolling: 12 frames x 256 tokens x 2 heads x 16 dims x 2 layers x (K and V) x 4 bytes
    assert f"{12 * 256 * 2 * 16 * 2 * 2 * 4:,} bytes" in text
    assert "camera encoder" not in text


def test_info_counts_a_camera_models_encoder_and_controller(capsys):
    assert main(["info", "--pipeline", "shapeworld-cam-tiny"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"camera encoder parameters +[\d,]+\n", text)
    assert re.search(r"weaving controller parameters +858,369\n", text)


def test_bench_speed_writes_every_metric(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--pipeline", str(TINY), "--frames", "30", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("fps", "first_chunk_latency_s", "chunk_latencies_s", "peak_rss_bytes", "cache_bytes", "overhead_ratio"):
        assert key in result, key
    assert len(result["chunk_latencies_s"]) == 10 and result["frames"] == 30
    assert result["overhead_ratio"] >= 1.0


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_gone(pid: int, timeout: float = 120.0) -> None:
    """Wait for a process that is not our child to exit (zombies count as exited); the deadline holds on a loaded
    machine and a passing test never reaches it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running {timeout} s after its parent was killed")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killing_generate_leaves_a_playable_mp4_with_every_finished_chunk(tmp_path):
    """A rerun to the same --out killed with SIGKILL: the earlier video is untouched, and out.mp4.partial plays
    with every chunk the run reported."""
    out = tmp_path / "killed.mp4"
    assert main(["generate", "--pipeline", str(TINY), "--prompt", "a blue square", "--frames", "9", "--out", str(out)]) == 0
    earlier = out.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamgen.cli", "generate", "--pipeline", str(TINY), "--prompt", "a red circle",
         "--frames", "3000", "--out", str(out)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    chunks, finished = 0, 0
    for line in proc.stderr:  # ends at the 4th chunk, or at EOF if the run died (then the asserts below say so)
        if line.startswith("chunk "):
            chunks += 1
            finished = int(line.split(",")[1].split()[0])  # "N video frames written"
            if chunks == 4:
                break
    ffmpeg = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid in ffmpeg:
        _wait_gone(pid)  # ffmpeg drains its pipe and finishes the file after its parent is gone
    assert finished >= 4 * 3 and ffmpeg
    assert out.read_bytes() == earlier
    assert len(read_video(tmp_path / "killed.mp4.partial")) >= finished


COMMANDS = ("generate", "demo", "info", "bench", "convert", "train")


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # unwrapped, hyphenated names whole


def test_building_the_parser_imports_neither_torch_nor_diffusers():
    code = ("import sys; from streamgen.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_top_level_help_lists_every_command_in_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^ +{command} +\w", text, re.M), f"{command} is not listed with its help"
    assert "``" not in text


def test_every_command_has_a_description(capsys):
    for command in COMMANDS:
        usage, _, rest = _help([command], capsys).partition(" options: ")
        assert len(usage.split(" ]")[-1]) > 0 and "." in usage, command
        assert "``" not in usage + rest, command


def test_cache_and_switch_help_list_the_shipped_choices(capsys):
    import yaml

    from streamgen.resources import preset_names, preset_path

    text = _help(["generate"], capsys)
    cache_help = re.search(r"--cache CACHE (.*?) --height", text).group(1)  # the option's help, not the usage line
    assert all(name in cache_help for name in preset_names()) and len(preset_names()) >= 9
    switch_help = re.search(r"--switch SWITCH (.*?) --steps", text).group(1)
    named = {yaml.safe_load(preset_path(name).read_text()).get("switch") for name in preset_names()} - {None}
    assert {"recache", "scene-memory"} <= named <= set(re.findall(r"[\w-]+", switch_help))


def test_loading_is_quiet_unless_verbose(capsys):
    from diffusers.utils import logging as diffusers_logging

    assert main(["info", "--pipeline", str(TINY)]) == 0
    assert "Loading" not in capsys.readouterr().err
    for argv in (["-v", "info", "--pipeline", str(TINY)], ["info", "--pipeline", str(TINY), "--verbose"]):
        assert main(argv) == 0
        assert "Loading pipeline components" in capsys.readouterr().err, argv
    assert diffusers_logging.is_progress_bar_enabled()  # the command put the switch back


def test_pipeline_takes_a_folder_or_a_shipped_name(tmp_path, capsys):
    assert main(["info", "--pipeline", "tiny-random"]) == 0
    assert str(TINY) in capsys.readouterr().out
    assert main(["info", "--pipeline", "no-such-pipeline"]) == 2
    error = capsys.readouterr().err
    shipped = "shipped: shapeworld-cam-tiny, shapeworld-tiny"
    assert f"'no-such-pipeline' is neither a folder nor a shipped pipeline; {shipped}" in error


def test_a_jsonl_lines_seed_plays_only_where_no_seed_flag_is_given(tmp_path):
    line = tmp_path / "line.jsonl"
    line.write_text('{"prompts": ["a red circle"], "seed": 5}\n')

    def video(*flags):
        out = tmp_path / f"v{len(list(tmp_path.glob('*.mp4')))}.mp4"
        prompts = ["--prompts", str(line)] if flags[:1] != ("--prompt",) else []
        assert main(["generate", "--pipeline", str(TINY), *prompts, "--frames", "3", "--out", str(out), *flags]) == 0
        return read_video(out)

    from_line, flag_5, flag_1 = video(), video("--seed", "5"), video("--seed", "1")
    assert (from_line == flag_5).all() and not (from_line == flag_1).all()
    assert (video("--prompt", "a red circle") == video("--prompt", "a red circle", "--seed", "0")).all()
