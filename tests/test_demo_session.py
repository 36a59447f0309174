"""The demo's session layer and CLI, without a browser (and mostly without gradio)."""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from streamgen.demo import INSTALL_HINT, cmd_demo, register_cli
from streamgen.demo.session import (
    DemoLimits,
    SessionRegistry,
    SessionsFull,
    frame_data_uri,
    mp4_complete_prefix,
)
from streamgen.resources import pipeline_path, preset_path
from streamgen.video_io import Mp4StreamWriter, read_video

REPO = Path(__file__).resolve().parents[1]
TINY = pipeline_path("tiny-random")
FAST = dict(realtime=False)


@pytest.fixture(scope="module")
def pipe():
    from streamgen import StreamingVideoPipeline

    pipe = StreamingVideoPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _parser():
    parser = argparse.ArgumentParser(prog="streamgen")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_importing_the_demo_package_does_not_need_gradio():
    code = "import sys, streamgen.demo, streamgen.demo.session; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cli_defaults_bind_loopback():
    args = _parser().parse_args(["demo"])
    assert (args.host, args.port, args.pipeline) == ("127.0.0.1", 7860, None)
    assert args.func is cmd_demo
    args = _parser().parse_args(["demo", "--pipeline", "p", "--host", "0.0.0.0", "--port", "8000"])
    assert (args.host, args.port, args.pipeline) == ("0.0.0.0", 8000, "p")


def test_on_a_cpu_several_generation_workers_get_one_torch_thread_each_unless_threads_says_otherwise():
    from streamgen.demo import torch_threads
    from streamgen.threads import physical_cores

    parse = _parser().parse_args
    assert torch_threads(parse(["demo"])) == (1 if physical_cores() > 1 else None)  # a worker per core
    assert torch_threads(parse(["demo", "--generation-workers", "4"])) == 1
    assert torch_threads(parse(["demo", "--generation-workers", "1"])) is None  # one worker: torch's own default
    assert torch_threads(parse(["demo", "--device", "cuda:0"])) is None
    with pytest.raises(ValueError, match="--generation-workers must be at least 1, got 0"):
        cmd_demo(parse(["demo", "--generation-workers", "0"]))  # before the port is tried
    args = parse(["demo"])
    args.threads = 2  # streamgen --threads 2 demo: each worker process takes it
    assert torch_threads(args) == 2


def test_cli_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert cmd_demo(_parser().parse_args(["demo"])) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[demo]"' in err and INSTALL_HINT in err


def test_frame_data_uri_holds_the_frame_exactly_at_its_own_size():
    import cv2

    frame = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    uri = frame_data_uri(frame)
    assert uri.startswith("data:image/png;base64,")
    png = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), dtype=np.uint8)
    np.testing.assert_array_equal(cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1], frame)  # the page scales it up


def test_mp4_prefix_cuts_a_file_being_written_after_a_whole_fragment(tmp_path):
    path = tmp_path / "v.mp4"
    frames = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with Mp4StreamWriter(path, fps=16) as writer:
        writer.write(frames)
    data = path.read_bytes()
    end, fragments = mp4_complete_prefix(data)
    assert fragments == 6 and 0 < end <= len(data)
    assert mp4_complete_prefix(data[:40]) == (0, 0)  # no whole moov yet
    for cut in (end // 2, end - 3, end * 3 // 4):
        cut_end, cut_fragments = mp4_complete_prefix(data[:cut])
        assert 0 < cut_end <= cut < end and cut_fragments <= 6
        assert cut_fragments < 6 or cut == end - 3  # (the last cut only loses the trailing index box)
        (tmp_path / "cut.mp4").write_bytes(data[:cut_end])
        if cut_fragments:
            assert read_video(tmp_path / "cut.mp4").shape == (cut_fragments, 32, 32, 3)


def test_session_streams_exactly_what_pipe_stream_gives(pipe):
    registry = SessionRegistry(pipe, DemoLimits(max_frames_per_run=12, **FAST))
    session = registry.get_or_create("a")
    session.start("a red circle", "rolling", 7)
    shown = np.stack([u.frame for u in session.run()])
    reference = pipe.stream("a red circle", cache="rolling", generator=torch.Generator().manual_seed(7))
    expected = np.concatenate([next(reference).frames[0] for _ in range(4)])
    np.testing.assert_array_equal(shown, expected)  # no generation logic of its own
    registry.close_all()


def test_sessions_share_one_pool_of_generation_workers(pipe):
    registry = SessionRegistry(pipe, DemoLimits(generation_workers=1, **FAST))
    a, b = registry.get_or_create("a"), registry.get_or_create("b")
    assert a.generation is b.generation is registry.generation
    assert registry.generation.executor._max_workers == 1
    a.start("a red circle", "rolling", 0)
    b.start("a blue square", "rolling", 0)
    runs = [a.run(), b.run()]
    shown = [[], []]
    for _ in range(6):  # the two runs interleaved, their chunks made in turn by the one worker
        for run, frames in zip(runs, shown):
            frames.append(next(run).frame)
    for run in runs:
        run.close()
    for prompt, frames in zip(("a red circle", "a blue square"), shown):
        reference = pipe.stream(prompt, cache="rolling", generator=torch.Generator().manual_seed(0))
        np.testing.assert_array_equal(np.stack(frames), np.concatenate([next(reference).frames[0] for _ in range(2)]))
    registry.close_all()
    with pytest.raises(ValueError, match="generation_workers must be at least 1"):
        SessionRegistry(pipe, DemoLimits(generation_workers=0))


def test_run_cap_resume_switch_stop_snapshot_and_close(pipe):
    registry = SessionRegistry(pipe, DemoLimits(max_frames_per_run=9, **FAST))
    session = registry.get_or_create("a")
    session.start("a red circle", "block-relative", 0)
    updates = list(session.run())
    assert len(updates) == 9 and "Resume" in session.stats.state and not session.running
    assert [u.chunk_done for u in updates[:4]] == [True, False, False, True]

    session.switch("a blue square", "cut")  # resume continues the same stream, switched
    updates = list(session.run())
    assert updates[0].chunk_index == 3 and session.stats.chunks == 6
    assert session.stats.prompt == "a blue square" and session.pending_switch is None

    for i, _ in enumerate(session.run()):
        if i == 1:
            while session.stats.chunks < 8:  # chunk 7, asked for when chunk 6 began to play, is generated
                time.sleep(0.01)
            session.stop()
    # Stopped after 2 frames of chunk 6; chunk 7 was generated ahead meanwhile: both wait for the next run.
    assert session.stats.state == "stopped" and session.stats.chunks == 8
    resumed = session.run()
    assert [next(resumed).chunk_index for _ in range(5)] == [6, 7, 7, 7, 8]
    resumed.close()  # the consumer goes away mid-run (as gradio does when a tab closes)
    assert session.stats.state == "stopped" and not session.running
    readout = session.readout()
    assert readout["cache_bytes"] == session.stream.cache_bytes > 0
    assert readout["transformer_seconds"] > 0 and readout["generation_fps"] > 0

    snapshot = session.snapshot_mp4()
    assert read_video(snapshot).shape == (session.stats.frames_generated - 1, 32, 32, 3)
    folder = session.dir
    assert registry.close("a") and not folder.exists() and session.stream is None and "a" not in registry


def test_stop_and_resume_show_every_frame_of_the_stream_once(pipe):
    registry = SessionRegistry(pipe, DemoLimits(max_frames_per_run=0, **FAST))
    session = registry.get_or_create("a")
    session.start("a red circle", "rolling", 3)
    shown = []
    for stop_after in (1, 4, 3, 7, 2):
        for i, update in enumerate(session.run()):
            shown.append(update.frame)
            if i + 1 == stop_after:
                session.stop()
    assert session.stats.frames_generated > len(shown)  # the lookahead chunk is waiting, not lost
    reference = pipe.stream("a red circle", cache="rolling", generator=torch.Generator().manual_seed(3))
    expected = np.concatenate([next(reference).frames[0] for _ in range(7)])[: len(shown)]
    np.testing.assert_array_equal(np.stack(shown), expected)
    registry.close_all()


def test_sessions_are_independent(pipe):
    registry = SessionRegistry(pipe, DemoLimits(max_frames_per_run=6, **FAST))
    a, b = registry.get_or_create("a"), registry.get_or_create("b")
    a.start("a red circle", "rolling", 0)
    b.start("a yellow square", "rolling", 0)
    run_a, run_b = a.run(), b.run()
    frames_a, frames_b = [], []
    for ua, ub in zip(run_a, run_b):  # interleaved, as concurrent sessions are
        frames_a.append(ua.frame)
        frames_b.append(ub.frame)
    assert a.stream is not b.stream and a.dir != b.dir
    assert not any(np.array_equal(x, y) for x in frames_a for y in frames_b)
    alone = registry.get_or_create("c")
    alone.start("a red circle", "rolling", 0)
    np.testing.assert_array_equal(np.stack([u.frame for u in alone.run()]), np.stack(frames_a))
    registry.close_all()
    assert len(registry) == 0


def test_registry_limits_and_idle_reaping(pipe):
    registry = SessionRegistry(pipe, DemoLimits(max_sessions=2, idle_timeout_s=3600, **FAST))
    registry.get_or_create("a")
    registry.get_or_create("b")
    with pytest.raises(SessionsFull):
        registry.get_or_create("c")
    registry.limits = DemoLimits(max_sessions=2, idle_timeout_s=0.0, **FAST)
    assert sorted(registry.reap_idle()) == ["a", "b"] and len(registry) == 0


def test_global_preset_gets_a_bounded_length_and_presets_are_names_only(pipe):
    registry = SessionRegistry(pipe, DemoLimits(global_stream_frames=9, max_frames_per_run=0, **FAST))
    session = registry.get_or_create("a")
    session.start("a red circle", "global", 0)
    assert len(list(session.run())) == 9 and "finished" in session.stats.state
    with pytest.raises(ValueError, match="unknown cache preset"):
        session.start("a red circle", str(preset_path("rolling")), 0)
    with pytest.raises(ValueError, match="prompt"):
        session.start("  ", "rolling", 0)
    registry.close_all()


def test_a_saved_session_restores_on_a_restarted_server_and_plays_on_exactly(pipe, tmp_path):
    registry = SessionRegistry(pipe, DemoLimits(max_frames_per_run=12, **FAST))
    session = registry.get_or_create("a")
    session.start("a red circle", "echo-forcing", 5)
    list(session.run())  # chunks 0-3 shown
    session.switch("a blue square", "cut")
    generated = session.stream.chunks
    saved = Path(session.save_session())
    kept = tmp_path / "session.safetensors"
    kept.write_bytes(saved.read_bytes())  # what the browser downloaded
    registry.close_all()

    from streamgen import StreamingVideoPipeline

    restarted = StreamingVideoPipeline.from_pretrained(TINY)  # a new server process loads the pipeline again
    restarted.set_progress_bar_config(disable=True)
    fresh = SessionRegistry(restarted, DemoLimits(max_frames_per_run=6, **FAST))
    session = fresh.get_or_create("b")
    session.restore_session(kept)
    assert session.stats.state.startswith("restored") and session.stats.preset == "echo-forcing"
    shown = np.stack([u.frame for u in session.run()])
    # The uninterrupted stream: the chunks generated at the save, then the switch that was pending.
    reference = pipe.stream("a red circle", cache="echo-forcing", generator=torch.Generator().manual_seed(5))
    for _ in range(generated):
        next(reference)
    reference.switch("a blue square", "cut")
    expected = np.concatenate([next(reference).frames[0] for _ in range(2)])
    np.testing.assert_array_equal(shown, expected)
    fresh.close_all()


def test_restore_refuses_large_foreign_or_broken_files_in_one_line(pipe, tmp_path):
    registry = SessionRegistry(pipe, DemoLimits(max_session_file_bytes=1000, **FAST))
    session = registry.get_or_create("a")
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * 1001)
    with pytest.raises(ValueError, match="more than the 1,000 this server accepts"):
        session.restore_session(big)
    registry = SessionRegistry(pipe, DemoLimits(**FAST))
    session = registry.get_or_create("a")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\1" * 100)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        session.restore_session(junk)
    assert session.stream is None
    registry.close_all()


def test_latency_chart_draws_every_recent_chunk_against_the_real_time_budget(pipe):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    import re

    from streamgen.demo.app import PLOT_CHUNKS, _latency_svg

    registry = SessionRegistry(pipe, DemoLimits(**FAST))
    session = registry.get_or_create("a")
    assert "<polyline" not in _latency_svg(session)  # nothing generated yet: the budget line alone
    session.stats.latencies_ms.extend((i, 100.0 + i) for i in range(PLOT_CHUNKS + 5))
    svg = _latency_svg(session)
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(points) == PLOT_CHUNKS and f"chunk {PLOT_CHUNKS + 4}<" in svg and "chunk 5<" in svg
    budget_ms = pipe.config.chunk_frames / pipe.config.fps * 1000
    assert f"real time: {budget_ms:.0f} ms" in svg
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys, reverse=True)  # latency rises chunk by chunk: the line climbs (SVG y grows downwards)
    registry.close_all()
