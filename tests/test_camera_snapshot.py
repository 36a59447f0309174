"""Snapshots of camera streams: the poses, the steering, the geometric memory and its pending pictures are saved;
the depth source is not, so ``pipe.resume(path, camera=the same track)`` (and ``generate --resume DIR --camera
FILE``) go on exactly where the stream stopped."""

import numpy as np
import pytest
import torch

from streamgen.camera_control import CameraTrack, steering_step
from streamgen.snapshot import SnapshotError
from streamgen.world.camera import CameraState, ground_depth, pan, render_flight, sample_map

from test_camera_control_fused import anchored_pipeline
from test_snapshot import cli, crash_at_chunk


class FlatGround:
    """A depth estimator that is a plain object (the camera world's ground, straight down, is flat)."""

    def __init__(self, flight):
        self.depth, self.calls = ground_depth(flight.poses[0], flight.intrinsics), 0

    def __call__(self, image, camera):
        self.calls += 1
        return self.depth


@pytest.fixture(scope="module")
def world_flight():
    world = sample_map(3)
    return world, render_flight(world, pan(CameraState(100, 100), 2.0, 1.0, 30))


def play(pipe, world, flight, depth, snapshot=None, at=4):
    """The frames of a 24-frame stream steered up after chunk 2; with ``snapshot``, it is saved after chunk ``at``
    and the rest comes from a resumed copy."""
    def track():
        return CameraTrack(flight.intrinsics, flight.poses[:20], memory_frames=6, **depth(flight))

    stream = pipe.stream(world.caption, video=flight.frames[:6], camera=track(), num_frames=24,
                         generator=torch.Generator().manual_seed(0))
    frames = []
    for i, chunk in enumerate(stream):
        frames.append(chunk.frames[0])
        if i == 2:
            stream.move(steering_step("up", 2.0))
        if snapshot is not None and i == at:
            stream.snapshot(snapshot)
            frames += [c.frames[0] for c in pipe.resume(snapshot, camera=track())]
            break
    return np.concatenate(frames)


@pytest.mark.parametrize("depth", [lambda flight: {"depth_fn": ground_depth},
                                   lambda flight: {"depth_estimator": FlatGround(flight)}],
                         ids=["depth_fn", "depth_estimator"])
def test_a_resumed_camera_stream_goes_on_as_the_uninterrupted_one(world_flight, tmp_path, depth):
    world, flight = world_flight
    pipe = anchored_pipeline(seed=2)
    whole = play(pipe, world, flight, depth)
    resumed = play(pipe, world, flight, depth, snapshot=tmp_path / "cam.safetensors")
    assert whole.shape == resumed.shape == (24, 32, 32, 3) and np.array_equal(whole, resumed)


def test_a_camera_snapshot_resumes_only_with_its_track(world_flight, tmp_path):
    world, flight = world_flight
    pipe = anchored_pipeline(seed=2)
    track = CameraTrack(flight.intrinsics, flight.poses[:20], depth_fn=ground_depth, memory_frames=6)
    stream = pipe.stream(world.caption, video=flight.frames[:6], camera=track, num_frames=12)
    next(stream)
    stream.snapshot(tmp_path / "cam.safetensors")
    plain = pipe.stream(world.caption, num_frames=6)
    next(plain)
    plain.snapshot(tmp_path / "plain.safetensors")
    other = CameraTrack(flight.intrinsics, flight.poses[1:21], depth_fn=ground_depth, memory_frames=8)
    for path, camera, message in (
            ("cam", None, "is of a camera stream: pass camera= with the CameraTrack it started with"),
            ("cam", other, "was taken with another camera track: its memory_frames, poses differ"),
            ("plain", track, "is of a stream without a camera: resume it without camera=")):
        with pytest.raises(SnapshotError, match=message) as err:
            pipe.resume(tmp_path / f"{path}.safetensors", camera=camera)
        assert "\n" not in str(err.value)


def test_a_crashed_camera_run_resumes_from_the_command_line(world_flight, capsys, monkeypatch, tmp_path):
    from streamgen.video_io import read_video

    world, flight = world_flight
    anchored_pipeline(seed=2).save_pretrained(tmp_path / "cam")
    CameraTrack(flight.intrinsics, flight.poses).to_json(tmp_path / "cam.json")
    args = ["generate", "--pipeline", tmp_path / "cam", "--prompt", world.caption, "--frames", 18,
            "--camera", tmp_path / "cam.json"]
    assert cli(capsys, *args, "--out", tmp_path / "whole.mp4")[0] == 0
    out, snap = tmp_path / "o.mp4", tmp_path / "snap"
    with monkeypatch.context() as patch:
        crash_at_chunk(patch, 4)  # snapshots after chunks 1 and 3: at 12 video frames
        rc, err = cli(capsys, *args, "--out", out, "--snapshot", snap, "--snapshot-every", 2)
    assert rc == 1 and "the machine went away" in err
    rc, err = cli(capsys, "generate", "--resume", snap)
    assert rc == 2 and "is of a camera stream: pass camera=" in err
    rc, err = cli(capsys, "generate", "--resume", snap, "--camera", tmp_path / "cam.json")
    assert rc == 0 and "12 video frames kept" in err, err
    video, whole = read_video(out), read_video(tmp_path / "whole.mp4")
    assert video.shape == whole.shape and np.array_equal(video[:12], whole[:12])
    assert np.abs(video[12:].astype(int) - whole[12:].astype(int)).mean() < 3  # only the encoder's restart differs
