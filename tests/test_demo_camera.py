"""Steering a camera model's stream in the demo: the arrow keys' moves reach the stream, in this process and in a
worker process, and move the camera as pipe.stream's own move() does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamgen.camera_control import steering_step
from streamgen.demo.generation import STEER_SPEED, ProcessGeneration, ThreadGeneration, demo_camera
from streamgen.demo.session import DemoLimits, DemoSession
from streamgen.models.camera import CameraEncoder
from streamgen.tiny import build_tiny_pipeline


def camera_pipeline():
    pipe = build_tiny_pipeline()
    encoder = CameraEncoder.for_transformer(pipe.transformer, anchors=True).eval()
    with torch.no_grad():
        for i, p in enumerate(encoder.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
    pipe.register_modules(camera_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipe, keys, chunks=3):
    """pipe.stream as the demo opens it, steered with ``keys`` (one per chunk, None: no move)."""
    stream = pipe.stream("a red circle", cache="rolling", camera=demo_camera(pipe),
                         generator=torch.Generator().manual_seed(5))
    out = []
    for key in keys[:chunks]:
        if key is not None:
            stream.move(steering_step(key, STEER_SPEED))
        out.append(next(stream).frames[0])
    return out


def test_steering_a_session_moves_the_camera_from_the_next_chunk():
    pipe = camera_pipeline()
    session = DemoSession("s", ThreadGeneration(pipe, 1), DemoLimits())
    assert session.generation.camera
    session.start("a red circle", "rolling", 5)
    first = next(session.stream).frames
    session.move("right")
    rest = [next(session.stream).frames for _ in range(2)]
    want = reference(pipe, [None, "right", None])
    for got, expected in zip([first] + rest, want):
        np.testing.assert_array_equal(got, expected)
    still = reference(pipe, [None, None, None])
    assert not np.array_equal(still[1], want[1])  # the move changed what followed
    with pytest.raises(ValueError, match="steering key"):
        session.move("sideways")
    session.close()
    plain = DemoSession("t", ThreadGeneration(build_tiny_pipeline(), 1), DemoLimits())
    plain.start("a red circle", "rolling", 5)
    with pytest.raises(RuntimeError, match="no camera"):
        plain.move("left")
    plain.close()



def test_a_steered_session_is_saved_and_restored_with_its_camera():
    pipe = camera_pipeline()
    session = DemoSession("s", ThreadGeneration(pipe, 1), DemoLimits())
    session.start("a red circle", "rolling", 5)
    next(session.stream)
    session.move("right")
    next(session.stream)
    path = session.save_session()
    restored = DemoSession("t", ThreadGeneration(pipe, 1), DemoLimits())
    restored.restore_session(path)  # a new stream, built with the demo's camera; the snapshot brings the steering
    np.testing.assert_array_equal(next(restored.stream).frames, reference(pipe, [None, "right", None])[2])
    session.close()
    restored.close()

def test_a_worker_process_steers_the_same_way(tmp_path):
    pipe = camera_pipeline()
    pipe.save_pretrained(tmp_path / "cam")
    host = ProcessGeneration(tmp_path / "cam", workers=1, threads=1, max_streams=2)
    try:
        assert host.camera
        stream = host.open("a red circle", "rolling", 5, 100)
        got = [next(stream).frames]
        stream.move("up")
        got.append(next(stream).frames)
        stream.snapshot(tmp_path / "session.safetensors")  # saved steered, resumed in the worker with its camera
        got.append(next(host.resume(tmp_path / "session.safetensors", "rolling")).frames)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want = reference(pipe, [None, "up", None])
        finally:
            torch.set_num_threads(previous)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        with pytest.raises(ValueError, match="steering key"):
            stream.move("sideways")
        stream.close()
    finally:
        host.close()
