"""A camera stream whose memory estimates each frame's depth from the frame itself (``CameraTrack(depth_estimator=)``,
what real footage needs), instead of reading it off the pose (``depth_fn``, the camera world)."""

import numpy as np
import pytest
import torch

from streamgen.camera_control import CameraTrack
from streamgen.world.camera import CameraState, ground_depth, pan, render_flight, sample_map

from test_camera_control_fused import anchored_pipeline


def flight_and_world():
    world = sample_map(3)
    return world, render_flight(world, pan(CameraState(100, 100), 2.0, 1.0, 15))


def test_an_estimator_sees_each_decoded_frame_once_and_an_exact_one_streams_as_the_known_depth():
    world, flight = flight_and_world()
    pipe = anchored_pipeline()
    pictures = {}

    def estimate(image, camera):
        pictures[len(pictures)] = image.clone()
        # the camera world's ground is flat and the camera looks straight down: the same depth from every pose
        return ground_depth(flight.poses[0], camera)

    videos = []
    for depth in (dict(depth_fn=ground_depth), dict(depth_estimator=estimate)):
        track = CameraTrack(flight.intrinsics, flight.poses, memory_frames=6, **depth)
        stream = pipe.stream(world.caption, video=flight.frames[:9], camera=track, num_frames=6,
                             generator=torch.Generator().manual_seed(0))
        videos.append(np.concatenate([c.frames[0] for c in stream]))
    assert np.array_equal(videos[0], videos[1])
    # the 9 true frames, then the first generated chunk (the last chunk is never remembered: no chunk follows it)
    assert len(pictures) == 12 and all(p.dtype == torch.uint8 and p.shape == (32, 32, 3) for p in pictures.values())
    assert all(np.array_equal(pictures[i].numpy(), flight.frames[i]) for i in range(9))  # pixel VAE: exact
    assert all(np.array_equal(pictures[9 + i].numpy(), videos[1][i]) for i in range(3))
    assert stream.engine.camera._pictures.keys() == {12, 13, 14}  # only frames the memory has not taken yet


def test_a_causal_vae_frame_is_pictured_by_the_last_video_frame_it_decodes_to():
    world, flight = flight_and_world()
    track = CameraTrack(flight.intrinsics, flight.poses, depth_estimator=lambda image, camera: None)
    stream = anchored_pipeline().stream(world.caption, camera=track, num_frames=3)
    camera = stream.engine.camera
    camera.temporal_compression = 4
    # a first chunk of 3 latent frames decodes to 1 + 4 + 4 video frames; frame k is filled with the value k / 10
    video = torch.arange(9, dtype=torch.float32).div(10)[None, None, :, None, None].expand(1, 3, 9, 2, 2)
    camera.observe(0, 3, video)
    assert {f: int(p[0, 0, 0]) for f, p in camera._pictures.items()} == {
        f: round((k / 10 / 2 + 0.5) * 255) for f, k in ((0, 0), (1, 4), (2, 8))}


def test_bad_estimates_and_both_depths_are_refused_in_one_line():
    world, flight = flight_and_world()
    with pytest.raises(ValueError, match="depth_fn .* or depth_estimator .*not both"):
        CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, depth_estimator=lambda i, c: None)
    pipe = anchored_pipeline()
    for bad, shape in ((lambda image, camera: torch.zeros(32, 32), "(32, 32)"),
                       (lambda image, camera: torch.full((32, 32), float("nan")), "(32, 32)"),
                       (lambda image, camera: torch.ones(16, 16), "(16, 16)")):
        track = CameraTrack(flight.intrinsics, flight.poses, depth_estimator=bad)
        stream = pipe.stream(world.caption, video=flight.frames[:9], camera=track, num_frames=6)
        with pytest.raises(ValueError, match=r"depth_estimator: frame 0's depth must be positive \(inf where nothing "
                                             r"is hit\), 32x32") as err:
            next(stream)
        assert shape in str(err.value) and "\n" not in str(err.value)
