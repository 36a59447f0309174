"""The demo's generation in worker processes (streamgen.demo.generation / streamgen.demo.worker): what a stream
gives there is what pipe.stream() gives here, bit for bit; errors come back as the same kinds; a dead worker is
named and replaced; closed streams are freed in their worker."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from streamgen import StreamingVideoPipeline
from streamgen.demo.generation import ProcessGeneration, WorkerStopped, receive_message, send_message
from streamgen.demo.session import DemoLimits, SessionRegistry
from streamgen.resources import pipeline_path

TINY = pipeline_path("tiny-random")


@pytest.fixture(scope="module")
def generation():
    host = ProcessGeneration(TINY, workers=2, threads=1, max_streams=4)
    yield host
    host.close()


@pytest.fixture(scope="module")
def pipe():
    pipe = StreamingVideoPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, prompt, seed, chunks, preset="rolling"):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run: the same reductions in the same order
    try:
        stream = pipe.stream(prompt, cache=preset, generator=torch.Generator().manual_seed(seed))
        return [next(stream) for _ in range(chunks)]
    finally:
        torch.set_num_threads(previous)


def test_a_worker_stream_is_the_pipelines_stream_bit_for_bit(generation, pipe):
    assert generation.config.fps == pipe.config.fps and generation.config.chunk_frames == pipe.config.chunk_frames
    stream = generation.open("a red circle", "rolling", 7, 100)
    got = [next(stream) for _ in range(3)]
    want = _reference(pipe, "a red circle", 7, 3)
    for g, w in zip(got, want):
        assert g.index == w.index and g.prompt == w.prompt
        np.testing.assert_array_equal(g.frames, w.frames[0])  # the one video of the batch
    assert stream.chunks == 3 and stream.prompt == "a red circle"
    assert stream.cache_bytes > 0 and stream.transformer_seconds > 0
    stream.close()


def test_switch_snapshot_and_resume_go_to_the_worker(generation, pipe, tmp_path):
    stream = generation.open("a red circle", "rolling", 3, 100)
    next(stream)
    stream.switch("a blue square", "cut")
    assert next(stream).prompt == "a blue square"
    path = stream.snapshot(tmp_path / "s.safetensors", {"demo": {"seed": 3}})
    after = next(stream)
    resumed = generation.resume(path, "rolling")
    assert resumed.chunks == 2 and resumed.prompt == "a blue square"
    again = next(resumed)  # a restored stream goes on exactly as the original did
    assert again.index == after.index
    np.testing.assert_array_equal(again.frames, after.frames)


def test_errors_come_back_as_the_same_kinds_in_one_line(generation):
    stream = generation.open("a red circle", "rolling", 0, 100)
    with pytest.raises(ValueError, match="non-empty prompt"):
        stream.switch("  ", "cut")
    with pytest.raises(ValueError, match="transition mode"):
        stream.switch("a blue square", "sideways")
    with pytest.raises(ValueError, match="3,000 characters"):
        stream.switch("x" * 3000, "cut")
    ended = generation.open("a red circle", "global", 0, 3)  # a global cache: a stream of a fixed length
    while True:
        try:
            next(ended)
        except StopIteration:
            break
    with pytest.raises(RuntimeError, match="has ended"):
        ended.switch("a blue square", "cut")


def test_new_streams_go_to_the_least_busy_worker_and_closed_ones_are_freed(generation):
    assert [w.streams for w in generation.workers] == [0, 0]  # the other tests' streams were dropped
    streams = [generation.open("a red circle", "rolling", i, 100) for i in range(4)]
    assert [w.streams for w in generation.workers] == [2, 2]
    del streams  # dropping a stream frees it in its worker, as the pipeline frees a dropped stream's cache
    assert [w.streams for w in generation.workers] == [0, 0]


def test_a_new_stream_goes_to_the_worker_with_the_fewest_playing(generation, monkeypatch):
    from streamgen.demo import generation as module

    monkeypatch.setattr(module, "PLAYING_WINDOW_S", 0.3)
    w0, w1 = generation.workers
    a = generation.open("a red circle", "rolling", 0, 100)
    b = generation.open("a blue square", "rolling", 0, 100)
    assert (a._worker, b._worker) == (w0, w1)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # a plays on; b is stopped (a paused session, or one left for the reaper)
        next(a)
    assert (w0.playing, w1.playing) == (1, 0)
    c = generation.open("a green triangle", "rolling", 0, 100)
    assert c._worker is w1  # not a second playing stream on w0, though both hold one stream
    d = generation.open("a red circle", "rolling", 1, 100)
    assert d._worker is w0  # one playing each now: the worker holding fewer streams


def test_a_dead_worker_is_named_and_replaced():
    host = ProcessGeneration(TINY, workers=1, threads=1)
    try:
        stream = host.open("a red circle", "rolling", 0, 100)
        next(stream)
        host.workers[0].process.kill()
        host.workers[0].process.wait()
        with pytest.raises(WorkerStopped, match="streamgen-demo-worker-0 stopped .*press Start"):
            next(stream)
        fresh = host.open("a red circle", "rolling", 0, 100)  # the next stream gets a new worker
        assert next(fresh).index == 0 and host.workers[0].name == "streamgen-demo-worker-1"
    finally:
        host.close()


def test_a_worker_that_cannot_load_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="could not load the pipeline"):
        ProcessGeneration(tmp_path / "no-such-pipeline", workers=1)


def test_demo_sessions_play_from_worker_processes(generation, pipe):
    registry = SessionRegistry(generation, DemoLimits(realtime=False, max_frames_per_run=6))
    session = registry.get_or_create("a")
    session.start("a red circle", "rolling", 5)
    shown = np.stack([u.frame for u in session.run()])
    want = np.concatenate([c.frames[0] for c in _reference(pipe, "a red circle", 5, 2)])
    np.testing.assert_array_equal(shown, want)
    assert session.readout()["cache_bytes"] > 0
    assert sum(w.streams for w in generation.workers) == 1
    registry.close_all()
    assert sum(w.streams for w in generation.workers) == 0


def test_messages_are_framed():
    pipe = io.BytesIO()
    send_message(pipe, ("next", (1,)))
    send_message(pipe, ("ok", np.arange(6, dtype=np.uint8)))
    pipe.seek(0)
    assert receive_message(pipe) == ("next", (1,))
    np.testing.assert_array_equal(receive_message(pipe)[1], np.arange(6))
    with pytest.raises(EOFError):
        receive_message(pipe)
    with pytest.raises(EOFError, match="mid-message"):
        receive_message(io.BytesIO(b"\x10\x00\x00\x00\x00\x00\x00\x00abc"))
