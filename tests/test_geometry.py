"""Pinhole geometry, z-buffered reprojection and coverage retrieval (streamgen.geometry), checked on the camera
world's exact frames and on constructed cases."""

import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamgen.geometry import (
    GeometricMemory, Intrinsics, best_coverage, greedy_coverage, invert_pose, plucker_rays, project, psnr,
    ray_directions, reproject, splat, token_holes, union_size, unproject,
)
from streamgen.world.camera import CameraState, default_intrinsics, ground_points, pan, render_flight, sample_map


def random_pose(rng: random.Random) -> torch.Tensor:
    q = torch.tensor([rng.gauss(0, 1) for _ in range(4)], dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    rotation = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3], pose[:3, 3] = rotation, torch.tensor([rng.uniform(-5, 5) for _ in range(3)], dtype=torch.float64)
    return pose


def test_unproject_then_project_returns_every_pixel_centre_and_depth():
    rng = random.Random(0)
    for _ in range(5):
        camera = Intrinsics(rng.uniform(20, 60), rng.uniform(20, 60), rng.uniform(10, 20), rng.uniform(10, 20), 24, 20)
        pose = random_pose(rng)
        depth = torch.rand(20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 9 + 0.5
        points = unproject(depth, camera, pose)
        uv, z = project(points.reshape(-1, 3), camera, invert_pose(pose))
        centres = torch.stack(torch.meshgrid(torch.arange(24) + 0.5, torch.arange(20) + 0.5, indexing="xy"), -1)
        assert torch.allclose(uv, centres.reshape(-1, 2).double(), atol=1e-9)
        assert torch.allclose(z, depth.reshape(-1), atol=1e-9)
        assert torch.allclose(invert_pose(pose) @ pose, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_plucker_rays_are_unit_directions_with_moments_orthogonal_to_them_through_the_pixels():
    rng = random.Random(1)
    camera, pose = Intrinsics.centred(8, 6, 7.0), random_pose(rng)
    rays = plucker_rays(camera, pose)
    direction, moment = rays[..., :3], rays[..., 3:]
    assert rays.shape == (6, 8, 6)
    assert torch.allclose(direction.norm(dim=-1), torch.ones(6, 8, dtype=torch.float64))
    assert torch.allclose((direction * moment).sum(-1), torch.zeros(6, 8, dtype=torch.float64), atol=1e-12)
    # the moment is the same for any point on the ray: the point at depth 3 gives it too
    points = unproject(torch.full((6, 8), 3.0, dtype=torch.float64), camera, pose)
    assert torch.allclose(torch.linalg.cross(points, direction, dim=-1), moment, atol=1e-9)
    assert torch.allclose(ray_directions(camera, pose), direction)


def test_the_camera_worlds_depth_and_ground_points_agree_with_unproject():
    world, camera = sample_map(2), default_intrinsics()
    flight = render_flight(world, [CameraState(90.5, 77.25, 41.0, 0.7)])
    points = unproject(torch.tensor(flight.depth[0]).double(), camera, flight.poses[0])
    assert points[..., 2].abs().max() < 1e-4  # every pixel sees the ground plane Z = 0
    ground, depth = ground_points(camera, flight.poses[0])
    assert torch.allclose(depth.float(), torch.tensor(flight.depth[0]))
    assert torch.allclose(ground, points, atol=1e-4)


def _box(frames: np.ndarray, factor: int) -> torch.Tensor:
    """Frames rendered ``factor`` times finer, averaged back to pixels: each pixel's true area colour."""
    h, w = frames.shape[0] // factor, frames.shape[1] // factor
    return torch.tensor(frames).double().view(h, factor, w, factor, 3).mean((1, 3))


def test_pixel_aligned_moves_reproject_exactly_at_the_models_resolution():
    world, camera, start = sample_map(5), default_intrinsics(), CameraState(100.5, 120.5)
    for target in (replace(start, x=107.5, y=115.5), replace(start, yaw=math.pi / 2), replace(start, yaw=-math.pi),
                   replace(start, x=96.5, yaw=math.pi / 2)):
        flight = render_flight(world, [start, target])
        rendered = reproject(torch.tensor(flight.frames[0]).double(), torch.tensor(flight.depth[0]).double(), camera,
                             flight.poses[0], camera, flight.poses[1])
        assert rendered.covered.float().mean() > 0.5, target
        assert psnr(rendered.image, torch.tensor(flight.frames[1]).double(), rendered.covered) == float("inf")


def test_any_move_reprojects_to_the_ground_truth_at_40_db_on_covered_pixels():
    """Pans, zooms and turns by any amount. Geometry is what is checked, so both sides are area samples of the
    same world (rendered 8x finer; the memory frame's points are splatted and box-averaged into the target's
    pixels) and pixels on the edge of the covered region (partly covered) are left out. 40 random moves here
    measured 53.9-72.4 dB. At the model's own 32 px, sub-pixel moves lose to resampling sharp anti-aliased
    edges instead (33-40 dB; pixel-aligned moves stay exact, test above)."""
    camera, fine = default_intrinsics(), 8
    for seed in range(3):
        world, rng = sample_map(seed), random.Random(seed)
        for _ in range(2):
            source = CameraState(rng.uniform(80, 170), rng.uniform(80, 170), rng.uniform(24, 48), rng.uniform(-3, 3))
            target = CameraState(source.x + rng.uniform(-6, 6), source.y + rng.uniform(-6, 6),
                                 source.height * rng.uniform(0.7, 1.4), source.yaw + rng.uniform(-0.6, 0.6))
            src = render_flight(world, [source], intrinsics=camera.scaled(fine))
            dst = render_flight(world, [target], intrinsics=camera.scaled(fine))
            rendered = reproject(torch.tensor(src.frames[0]).double(), torch.tensor(src.depth[0]).double(),
                                 src.intrinsics, src.poses[0], camera, dst.poses[0], supersample=1)
            whole = F.avg_pool2d(rendered.covered.double()[None, None], 3, 1, 1)[0, 0] > 0.999
            assert whole.sum() > 200
            assert psnr(rendered.image, _box(dst.frames[0], fine), whole) >= 40.0, (source, target)


def test_the_z_buffer_keeps_the_nearest_surface_and_averages_a_tie():
    camera, pose = Intrinsics.centred(4, 4, 4.0), torch.eye(4, dtype=torch.float64)
    # three points on the ray of pixel (1, 2): depths 5 (red), 2 (green), 2.001 (blue, within the tolerance)
    ray = torch.tensor([(1.5 - 2) / 4, (2.5 - 2) / 4, 1.0], dtype=torch.float64)
    points = torch.stack([ray * 5, ray * 2, ray * 2.001, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)])
    colors = torch.tensor([[255.0, 0, 0], [0, 255.0, 0], [0, 0, 255.0], [9.0, 9, 9]], dtype=torch.float64)
    out = splat(points, colors, camera, pose)
    assert out.covered.sum() == 1 and out.covered[2, 1]  # the point behind the camera is not drawn
    assert torch.allclose(out.image[2, 1], torch.tensor([0, 127.5, 127.5], dtype=torch.float64))
    assert out.depth[2, 1] == pytest.approx(2.0)


def test_token_holes_pool_the_mask_with_a_majority_rule():
    covered = torch.ones(4, 4, dtype=torch.bool)
    covered[0, 0:2] = False          # token (0, 0): 2 of 4 pixels are holes -> not a hole (mean 0.5 is not > 0.5)
    covered[2:4, 2:4] = False        # token (1, 1): all holes
    covered[2, 0:2] = covered[3, 0] = False  # token (1, 0): 3 of 4 -> hole
    assert token_holes(covered, (2, 2)).tolist() == [[False, False], [True, True]]
    with pytest.raises(ValueError, match="does not tile"):
        token_holes(covered, (3, 3))


def _random_coverage(rng: random.Random, frames: int, cells: int) -> torch.Tensor:
    """Frames covering random runs of a ring of cells (views along a flight)."""
    out = torch.zeros(frames, cells, dtype=torch.bool)
    for i in range(frames):
        start, length = rng.randrange(cells), rng.randrange(cells // 8, cells // 2)
        out[i, [(start + j) % cells for j in range(length)]] = True
    return out


def test_greedy_coverage_keeps_its_guarantee_and_refinement_nears_the_best_k_subset_on_adversarial_rings():
    """Random arcs of a ring: harder than views of a flight. Plain greedy keeps its 1 - 1/e guarantee (500 such
    cases measured: worst 81%, 6% of cases under 95%); the swap refinement's worst was 91.5% (1.2% under 95%)."""
    rng = random.Random(0)
    for trial in range(60):
        coverage = _random_coverage(rng, rng.randrange(6, 11), 64)
        k, always = rng.choice((2, 3, 4)), [0] if trial % 2 else []
        best = union_size(coverage, best_coverage(coverage, k, always=always))
        plain = union_size(coverage, greedy_coverage(coverage, k, always=always))
        refined = union_size(coverage, greedy_coverage(coverage, k, always=always, refine=True))
        assert best >= refined >= plain >= (1 - 1 / math.e) * best and refined >= 0.9 * best, trial


def test_retrieval_on_camera_world_views_is_within_5_percent_of_the_best_k_subset():
    """A memory of 9 views around a place, the next chunk's 3 cameras panning over it (80 cases measured: plain
    greedy worst 93.6%, 1 case under 95%; refined: the optimum every time)."""
    camera = default_intrinsics()
    for trial in range(8):
        rng, world = random.Random(trial), sample_map(trial)
        states = [CameraState(128 + rng.uniform(-30, 30), 128 + rng.uniform(-30, 30), rng.uniform(24, 48),
                              rng.uniform(-1, 1)) for _ in range(9)]
        flight = render_flight(world, states)
        memory = GeometricMemory(capacity=16)
        for k in range(len(flight)):
            memory.add(torch.tensor(flight.frames[k]), flight.poses[k], camera, k, depth=torch.tensor(flight.depth[k]))
        start = CameraState(128 + rng.uniform(-10, 10), 128 + rng.uniform(-10, 10), 40)
        targets = render_flight(world, pan(start, rng.uniform(-3, 3), rng.uniform(-3, 3), 3)).poses
        coverage = memory.coverage(targets, camera)
        for k in (3, 4):
            best = union_size(coverage, best_coverage(coverage, k, always=[0]))
            plain = union_size(coverage, greedy_coverage(coverage, k, always=[0]))
            picked = memory.retrieve(targets, camera, k)
            assert picked[0] == 0 and union_size(coverage, picked) >= 0.95 * best >= 0.95 * plain, (trial, k)


def test_greedy_coverage_skips_a_frame_that_adds_nothing_and_stops_when_nothing_is_left():
    coverage = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert greedy_coverage(coverage, 4) == [0, 2]
    assert sorted(best_coverage(coverage, 2)) == [0, 2]
    # greedy takes the biggest first and is stuck with it; one swap finds the two that cover everything
    trap = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert greedy_coverage(trap, 2) == [0, 1] and sorted(greedy_coverage(trap, 2, refine=True)) == [1, 2]


def test_aligned_depth_gives_the_whole_pool_the_first_frames_scale():
    from streamgen.geometry import DepthError

    world = sample_map(11)
    flight = render_flight(world, pan(CameraState(90, 120), 2.0, 1.0, 10))
    camera = default_intrinsics()
    error = DepthError(0.1, seed=4)
    for align in (False, True):
        memory = GeometricMemory(16, align_depth=align)
        for i in range(len(flight)):
            memory.add(torch.tensor(flight.frames[i]), flight.poses[i], camera, i,
                       depth=error(torch.tensor(flight.depth[i])) if align else torch.tensor(flight.depth[i]))
        ratios = torch.stack([(f.depth / torch.tensor(flight.depth[f.time])).flatten() for f in memory.frames])
        if align:  # every frame at the first frame's (wrong) scale: one consistent world, not ten
            first = float(ratios[0, 0])
            assert abs(first - 1) > 0.01 and torch.allclose(ratios, torch.full_like(ratios, first), rtol=1e-5)
        else:
            assert torch.equal(ratios, torch.ones_like(ratios))
    exact = GeometricMemory(4, align_depth=True)
    exact.add(torch.tensor(flight.frames[0]), flight.poses[0], camera, 0, depth=torch.tensor(flight.depth[0]))
    assert exact.scale_to_pool(torch.tensor(flight.depth[1]), flight.poses[1], camera) == pytest.approx(1, abs=1e-9)
    far = CameraState(250, 250).camera_to_world()  # sees nothing the pool saw: left as it is
    assert exact.scale_to_pool(torch.tensor(flight.depth[1]) * 3, far, camera) == 1.0


def test_aligned_depth_does_not_drift_along_a_long_flight():
    """Each frame's own error (scale and a warp within it) makes every alignment a little off; matched against the
    whole pool (the first frame always in it), the scale stays near the first frame's instead of walking away.
    Measured at 600 frames: at most 0.056 in log scale (the newest frame alone: 0.087, and 0.245 by frame 2,000)."""
    from streamgen.geometry import DepthError

    world, rng, states = sample_map(2), random.Random(0), []
    x, y, velocity = 128.0, 128.0, (2, 0)
    for k in range(600):  # pans that turn every 12 frames, kept over the map
        if k % 12 == 0:
            velocity = rng.choice([(2, 0), (-2, 0), (0, 2), (0, -2)])
        if not (40 < x + velocity[0] < 216 and 40 < y + velocity[1] < 216):
            velocity = (-velocity[0], -velocity[1])
        x, y = x + velocity[0], y + velocity[1]
        states.append(CameraState(x, y))
    flight, camera = render_flight(world, states), default_intrinsics()
    error, memory = DepthError(0.05, seed=1, warp=0.05), GeometricMemory(32, align_depth=True, coverage_scale=4)
    drift = []
    for i in range(len(flight)):
        frame = memory.add(torch.tensor(flight.frames[i]), flight.poses[i], camera, i,
                           depth=error(torch.tensor(flight.depth[i])))
        drift.append(math.log(float((frame.depth / torch.tensor(flight.depth[i])).median())))
    assert max(abs(d - drift[0]) for d in drift) < 0.08
