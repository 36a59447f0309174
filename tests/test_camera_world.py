"""The camera world (streamgen.world.camera) and the local geometric memory that flies over it."""

import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from streamgen.geometry import GeometricMemory, psnr
from streamgen.world.camera import (
    CameraState, default_intrinsics, match_view, out_and_back, pan, read_view, render_flight, sample_map, turn,
    visible_objects, zoom,
)


def test_a_map_is_fixed_by_its_seed_and_its_caption_names_its_ground_and_colours():
    a, b = sample_map(3), sample_map(3)
    assert a == b and sample_map(4) != a
    assert len(a.statics) >= 60 and len(a.objects) - len(a.statics) == 3
    assert a.background in a.caption and all(c in a.caption for c in a.palette)
    assert {o.color for o in a.objects} <= set(a.palette) and a.background not in a.palette
    centres = np.array([(o.x, o.y) for o in a.statics])
    gaps = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1)) + np.eye(len(centres)) * 1e9
    assert gaps.min() >= 20.0


def test_the_reference_renderer_scores_100_percent_through_the_oracle():
    """Random cameras (anywhere over the map, 0.5x to 2x the default height, any yaw, any time): every static
    object wholly in view is found at its projected place (1.5 px) in its colour, and the ground is read right."""
    rng, camera = random.Random(0), default_intrinsics()
    found = expected = 0
    for seed in range(50):
        world = sample_map(seed)
        states = [CameraState(rng.uniform(30, 226), rng.uniform(30, 226), 32 * 2 ** rng.uniform(-1, 1),
                              rng.uniform(-math.pi, math.pi)) for _ in range(12)]
        flight = render_flight(world, states, start_time=rng.uniform(0, 100))
        for k in range(len(flight)):
            truth = visible_objects(world, flight.poses[k], flight.times[k], camera)
            background, detections = read_view(flight.frames[k], world.background)
            score = match_view(detections, truth)
            found, expected = found + score.found, expected + score.expected
            if states[k].height >= 24:  # closer in, one object can fill half the frame: pass the map's ground
                assert read_view(flight.frames[k])[0] == world.background
    assert expected > 300 and found == expected


def test_the_oracle_misses_objects_that_are_not_there_or_misplaced():
    world, camera = sample_map(1), default_intrinsics()
    flight = render_flight(world, pan(CameraState(100, 100), 3, 0, 12))
    truths = [visible_objects(world, flight.poses[k], k, camera) for k in range(12)]
    k = max(range(12), key=lambda i: len(truths[i]))
    assert truths[k]
    blank = np.empty_like(flight.frames[k])
    blank[:] = flight.frames[k][0, 0]
    assert match_view(read_view(blank, world.background)[1], truths[k]).found == 0
    shifted = np.roll(flight.frames[k], 3, axis=1)  # everything 3 px off
    assert match_view(read_view(shifted, world.background)[1], truths[k]).found == 0


def test_flights_revisit_exactly_and_steering_moves_in_the_view():
    world = sample_map(2)
    path = out_and_back(pan(CameraState(80, 90), 2, 1, 10) + zoom(CameraState(98, 99), 48, 4)
                        + turn(CameraState(98, 99, 48), 1.0, 4))
    flight = render_flight(world, path)
    assert len(path) == 35 and path[0] == path[-1]
    statics = replace(world, objects=world.statics)  # movers move on: only the ground revisits exactly
    again = render_flight(statics, path)
    assert np.array_equal(again.frames[0], again.frames[-1]) and np.array_equal(flight.depth[0], flight.depth[-1])
    # steering: 'right' by 4 px of the view moves the ground 4 px left in the frame, whatever the yaw
    for yaw in (0.0, math.pi / 2, 2.0):
        start = CameraState(120.5, 120.5, 32, yaw)
        pair = render_flight(statics, [start, start.step(right=4), start.step(forward=4), start.step(zoom=0.5)])
        assert np.array_equal(pair.frames[1][:, :-4], pair.frames[0][:, 4:])
        assert np.array_equal(pair.frames[2][4:], pair.frames[0][:-4])
        assert pair.depth[3].max() == pytest.approx(16.0)


def _flight_memory(world, states, capacity, **kwargs):
    camera = default_intrinsics()
    flight = render_flight(world, states)
    memory = GeometricMemory(capacity, depth_fn=lambda image, pose, intrinsics: torch.tensor(flight.depth[0]),
                             **kwargs)
    for k in range(len(flight)):
        memory.add(torch.tensor(flight.frames[k]), flight.poses[k], camera, k, depth=torch.tensor(flight.depth[k]))
    return memory, flight


def test_memory_bytes_stay_constant_over_a_long_flight_and_the_first_frame_stays():
    world = replace(sample_map(6), objects=sample_map(6).statics)
    states = pan(CameraState(30, 128), 0.5, 0.0, 400)  # 200 units east, frames overlapping heavily
    memory, _ = _flight_memory(world, states, capacity=12)
    sizes = []
    camera = default_intrinsics()
    for k in range(40):  # and on: the pool is full, every add evicts one
        flight = render_flight(world, [CameraState(230 - k, 128)])
        memory.add(torch.tensor(flight.frames[0]), flight.poses[0], camera, 400 + k)
        sizes.append(memory.nbytes)
    assert len(memory) == 12 and len(set(sizes)) == 1
    assert memory.frames[0].time == 0
    # eviction thinned look-alikes: the kept frames are spread along the flight, not the last 12
    times = [f.time for f in memory.frames]
    assert times == sorted(times) and times[1] < 300


def test_a_revisit_retrieves_the_frames_that_saw_the_place_and_renders_them_there():
    world = replace(sample_map(8), objects=sample_map(8).statics)
    out = pan(CameraState(60.5, 100.5), 2, 0, 40)
    memory, flight = _flight_memory(world, out, capacity=16)
    back = render_flight(world, out[:3])  # fly back to where the flight started
    camera = default_intrinsics()
    by_method = {m: memory.retrieve(back.poses, camera, 4, method=m) for m in ("coverage", "fov", "recency")}
    chosen = [memory.frames[i].time for i in by_method["coverage"]]
    assert chosen[0] == 0 and max(chosen) < 12, chosen  # frames of the start, not of where the flight went
    assert min(memory.frames[i].time for i in by_method["recency"][1:]) > 30
    anchors = memory.anchors(by_method["coverage"], back.poses, camera)
    k = len(by_method["coverage"])  # greedy stops once nothing is left to cover
    assert 2 <= k <= 4 and anchors.images.shape == (k, 3, 32, 32, 3) and anchors.covered.shape == (k, 3, 32, 32)
    assert anchors.covered.any(0).all()
    first = anchors.images[0]  # the first frame, rendered along the revisit: exact where it covers
    assert psnr(first, torch.tensor(back.frames).float(), anchors.covered[0]) == float("inf")
    fused = memory.fused(back.poses, camera)
    assert all(psnr(f.image, torch.tensor(back.frames[i]).double(), f.covered) == float("inf")
               for i, f in enumerate(fused))


def test_memory_refuses_what_it_cannot_use():
    camera = default_intrinsics()
    with pytest.raises(ValueError, match="capacity"):
        GeometricMemory(1)
    memory = GeometricMemory(4)
    with pytest.raises(ValueError, match="depth_fn"):
        memory.add(torch.zeros(32, 32, 3), torch.eye(4, dtype=torch.float64), camera, 0)
    with pytest.raises(ValueError, match="camera is 32x32"):
        memory.add(torch.zeros(16, 16, 3), torch.eye(4, dtype=torch.float64), camera, 0, depth=torch.ones(16, 16))
    with pytest.raises(ValueError, match="unknown retrieval method"):
        memory.retrieve(torch.eye(4, dtype=torch.float64)[None], camera, 2, method="nearest")
