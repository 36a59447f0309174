"""Context-as-memory (CameraTrack(weave="context")): the retrieved memory frames' own K/V, as written under their own
cameras, held in the cache's `retrieved` region for the next chunk to attend to."""

import pytest
import torch

from streamgen.camera_control import RETRIEVED_REGION, CameraTrack
from streamgen.loading import open_pipeline
from streamgen.world.camera import CameraState, ground_depth, map_seed, out_and_back, pan, render_flight, sample_map


@pytest.fixture(scope="module")
def pipe():
    return open_pipeline("shapeworld-cam-tiny")


def _flight(states):
    world = sample_map(map_seed("heldout", 3))
    return world, render_flight(world, states, start_time=0.0)


def test_a_revisit_attends_to_the_k_v_its_place_was_written_with(pipe):
    # 15 frames out (45 units: the place leaves the view) and back: the window of 20 has dropped the place's first
    # frames by the time the camera returns, so the memory brings them back into the retrieved region
    world, flight = _flight(out_and_back(pan(CameraState(100, 100), 3, 0, 16)))
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, memory_frames=12, weave="context")
    stream = pipe.stream(world.caption, video=flight.frames[:9], camera=track, num_frames=len(flight) - 9,
                         cache="camera-context", generator=torch.Generator().manual_seed(0))
    written = {}
    cache = stream.engine.cache
    held_during = []
    for _ in stream:
        for f in cache.frames_in("window"):
            if f not in written:
                written[f] = cache.frame_kv(f)
        held_during.append(cache.frames_in(RETRIEVED_REGION))
    camera = stream.engine.camera
    held = cache.frames_in(RETRIEVED_REGION)
    assert held and not set(held) & set(cache.frames_in("window"))
    assert any(set(h) - {0} for h in held_during)  # frames other than the first were brought back
    k, v = cache.region_kv(RETRIEVED_REGION)
    tokens = cache.tokens_per_frame
    for i, frame in enumerate(held):
        assert torch.equal(k[:, :, i * tokens:(i + 1) * tokens], written[frame][0])
        assert torch.equal(v[:, :, i * tokens:(i + 1) * tokens], written[frame][1])
    # the memory keeps each frame's K/V with it, counted in its bytes, and stays bounded
    assert len(camera.memory) == 12 and all(m.payload is not None for m in camera.memory.frames)
    assert camera.memory.nbytes > 12 * 2 * k[:, :, :tokens].nbytes


def test_context_memory_bytes_stay_constant_over_a_long_flight(pipe):
    world, flight = _flight(pan(CameraState(60, 60), 1, 1, 90))
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, memory_frames=6, weave="context")
    stream = pipe.stream(world.caption, camera=track, num_frames=90, cache="camera-context",
                         generator=torch.Generator().manual_seed(0))
    sizes = []
    for i, _ in enumerate(stream):
        if i >= 4:
            sizes.append(stream.engine.camera.memory.nbytes)
    assert len(set(sizes)) == 1


def test_context_weaving_needs_a_cache_with_a_retrieved_region(pipe):
    world, flight = _flight(pan(CameraState(60, 60), 1, 0, 6))
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, weave="context")
    with pytest.raises(ValueError, match="external 'retrieved' region"):
        pipe.stream(world.caption, camera=track, num_frames=6, cache="rolling")
    with pytest.raises(ValueError, match="one by one"):
        CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, weave="context", retrieval="fused")
