"""A camera stream whose anchors come from one globally fused point cloud of its whole memory pool
(``CameraTrack(retrieval="fused")``, the baseline AnchorWeave argues against)."""

import pytest
import torch

from streamgen.camera_control import TRACK_RETRIEVALS, CameraTrack
from streamgen.geometry import RETRIEVAL_METHODS, GeometricMemory
from streamgen.models.camera import CameraEncoder
from streamgen.tiny import build_tiny_pipeline
from streamgen.world.camera import (
    CameraState, default_intrinsics, ground_depth, pan, render_flight, sample_map,
)


def anchored_pipeline(seed=2):
    pipe = build_tiny_pipeline()
    encoder = CameraEncoder.for_transformer(pipe.transformer, anchors=True).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    pipe.register_modules(camera_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_fused_is_a_track_retrieval_and_bad_names_fail_in_one_line():
    assert TRACK_RETRIEVALS == (*RETRIEVAL_METHODS, "fused")
    poses = torch.eye(4, dtype=torch.float64)[None].repeat(3, 1, 1)
    assert CameraTrack(default_intrinsics(), poses, retrieval="fused").retrieval == "fused"
    with pytest.raises(ValueError, match="retrieval must be one of coverage, greedy, fov, recency, fused") as err:
        CameraTrack(default_intrinsics(), poses, retrieval="fuse")
    assert "\n" not in str(err.value)


def test_fused_anchors_are_the_memory_pools_fused_cloud_rendered_at_the_chunks_cameras():
    world = sample_map(3)
    flight = render_flight(world, pan(CameraState(100, 100), 2.0, 1.0, 15))
    latents = torch.tensor(flight.frames).float() / 127.5 - 1  # pixel VAE: latents = pixels, [n, H, W, C]
    pipe = anchored_pipeline()
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, retrieval="fused", memory_frames=6)
    stream = pipe.stream(world.caption, video=flight.frames[:9], camera=track,
                         generator=torch.Generator().manual_seed(0))
    first = next(stream).frames  # prefills the 9 true frames, then generates frames 9-11 against fused anchors
    assert torch.isfinite(torch.as_tensor(first)).all()
    camera = stream.engine.camera
    anchors, holes = camera.anchors(9, flight.poses[9:12])

    # the same pool built by hand from the true frames (6 frames: eviction has run), fused and rendered
    memory = GeometricMemory(6, coverage_scale=4)
    for i in range(9):
        memory.add(latents[i], flight.poses[i], camera.latent_camera, i,
                   depth=ground_depth(flight.poses[i], camera.latent_camera))
    assert [f.time for f in memory.frames] == [f.time for f in camera.memory.frames] and len(memory) == 6
    renders = memory.fused(flight.poses[9:12], camera.latent_camera)
    expected = torch.stack([r.image for r in renders]).float().permute(3, 0, 1, 2)
    covered = torch.stack([r.covered for r in renders])
    assert anchors.shape == expected.shape and holes.shape == (1, *covered.shape)
    assert torch.equal(holes[0] == 0, covered) and 0.5 < covered.float().mean() < 1
    assert torch.allclose(anchors, expected, atol=1e-5)
    # exact depth on a true flight: the fused cloud is the true frames where it covers them
    truth = latents[9:12].permute(3, 0, 1, 2)
    assert torch.allclose(anchors[:, covered], truth[:, covered], atol=1e-4)

    # a fused stream is deterministic and anchors differently from a retrieved-K composite of the same pool
    def video(retrieval):
        track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, retrieval=retrieval,
                            memory_frames=6, anchors=1, keep_first=True)
        s = pipe.stream(world.caption, video=flight.frames[:9], camera=track,
                        generator=torch.Generator().manual_seed(0))
        return torch.as_tensor(next(s).frames)

    assert torch.equal(video("fused"), torch.as_tensor(first)) and not torch.equal(video("recency"), video("fused"))


def test_a_fused_stream_without_an_init_clip_starts_from_an_empty_pool():
    pipe = anchored_pipeline()
    poses = torch.stack([s.camera_to_world() for s in pan(CameraState(64, 64), 2.0, 0.0, 9)])
    track = CameraTrack(default_intrinsics(), poses, depth_fn=ground_depth, retrieval="fused")
    stream = pipe.stream("a red circle", camera=track, generator=torch.Generator().manual_seed(0))
    anchors, holes = stream.engine.camera.anchors(0, poses[:3])  # nothing before frame 0: all holes
    assert anchors.shape == (3, 3, 32, 32) and not anchors.any() and bool((holes == 1).all())
    chunks = [c.frames for _, c in zip(range(3), stream)]
    assert len(chunks) == 3 and len(stream.engine.camera.memory) == 6
