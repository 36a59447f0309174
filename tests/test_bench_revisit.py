"""``streamgen bench revisit``: the rows mean what they say on small runs, memory alone and with a model."""

import math

import pytest
import torch

from streamgen.bench.camera_command import METHOD_NAMES, MODEL_MEMORY_NAMES
from streamgen.bench.revisit import (
    METHODS, MODEL_MEMORIES, format_model_table, format_table, run_model_revisit, run_revisit,
)
from streamgen.cli import main


def test_the_memory_rows_rank_as_they_should_and_the_truth_row_calibrates_the_oracle():
    rows = {(r.method, r.away): r for r in run_revisit(away=(2, 8), flights=("straight",), trials=3, capacity=12)}
    for away in (2, 8):
        truth, none = rows["truth", away], rows["none", away]
        assert truth.objects == 1.0 and truth.covered == 1.0
        assert none.covered == 0.0 and none.objects == 0.0 and none.memory_bytes == 0
        coverage, recency = rows["coverage", away], rows["recency", away]
        assert coverage.covered >= recency.covered and coverage.covered > 0.95
        assert coverage.objects >= 0.9 and coverage.psnr > 25
    # 9 + 6 frames and 9 + 24 frames both fill a pool of 12: the same bytes
    assert rows["coverage", 2].memory_bytes == rows["coverage", 8].memory_bytes > 0
    assert rows["recency", 8].covered < 0.9  # the newest frames are far from the place
    assert "| straight, 8 chunks away | coverage |" in format_table(list(rows.values()))


def test_coverage_beats_frustum_overlap_where_look_alikes_crowd_the_pool():
    """The lingering flight: hovering look-alikes of one corner rank first by frustum overlap."""
    rows = {r.method: r for r in run_revisit(away=(2,), flights=("linger",), trials=3, capacity=16,
                                             methods=("coverage", "fov", "truth"))}
    assert rows["coverage"].covered > rows["fov"].covered + 0.3
    assert rows["coverage"].objects >= rows["fov"].objects and rows["truth"].objects == 1.0


def test_estimated_depth_smears_the_fused_cloud_more_than_local_anchors():
    """AnchorWeave's case against one global cloud: with exact depth it renders the place best, with per-frame depth
    scale errors (an estimator's) it falls below the local anchors, which each stay consistent."""
    def psnr(error):
        rows = run_revisit(away=(4,), flights=("straight",), trials=3, capacity=16, methods=("coverage", "fused"),
                           depth_error=error)
        return {r.method: r.psnr for r in rows}

    exact, estimated = psnr(0.0), psnr(0.05)
    assert exact["fused"] > exact["coverage"] + 3  # measured at 16 flights, 8 chunks away: 38.2 against 31.8 dB
    assert estimated["fused"] < estimated["coverage"] - 2  # 24.7 against 29.2 dB
    assert estimated["coverage"] < exact["coverage"]


def test_depth_scale_error_is_seeded_and_sized_by_sigma():
    from streamgen.geometry.depth_error import DepthError

    depth = torch.full((4, 5), 48.0)
    assert torch.equal(DepthError(0.0)(depth), depth)
    a, b = DepthError(0.1, seed=3), DepthError(0.1, seed=3)
    assert [a.scale() for _ in range(5)] == [b.scale() for _ in range(5)]
    logs = torch.tensor([math.log(a.scale()) for _ in range(4000)])
    assert abs(float(logs.std()) - 0.1) < 0.01 and abs(float(logs.mean())) < 0.01
    scaled = DepthError(0.1, seed=1).around(lambda pose, camera: depth)(None, None)
    assert scaled.shape == depth.shape and len(set(scaled.flatten().tolist())) == 1  # one factor per frame
    for bad in (-0.1, 2.0, float("nan")):
        with pytest.raises(ValueError, match="depth error sigma"):
            DepthError(bad)
        with pytest.raises(ValueError, match="depth error warp"):
            DepthError(0.1, warp=bad)
    with pytest.raises(ValueError, match="cells must be 2..64"):
        DepthError(0.1, warp=0.1, cells=1)


def test_a_depth_warp_bends_each_frame_smoothly_and_leaves_the_scales_as_they_were():
    from streamgen.geometry.depth_error import DepthError

    depth = torch.full((32, 32), 48.0)
    plain, warped = DepthError(0.1, seed=5), DepthError(0.1, seed=5, warp=0.1)
    for _ in range(3):
        a, b = plain(depth), warped(depth)
        assert len(set(a.flatten().tolist())) == 1  # a scale alone: one factor per frame
        field = (b / a).log()  # what the warp added: smooth, zero-mean-ish, of about its sigma
        assert 0.02 < float(field.std()) < 0.3 and float(field.diff(dim=0).abs().max()) < 0.1


def test_the_command_refuses_bad_values_in_one_line(capsys):
    assert main(["bench", "revisit", "--depth-error", "2"]) == 2
    assert main(["bench", "revisit", "--away", "x"]) == 2
    assert main(["bench", "revisit", "--away", "1", "--trials", "0"]) == 2
    assert main(["bench", "revisit", "--away", "1", "--methods", "nearest"]) == 2
    err = capsys.readouterr().err
    assert "--away must be" in err and "--trials must be" in err and "depth error sigma must be in [0, 1]" in err and "unknown memory method 'nearest'" in err


def test_the_command_names_every_method_the_bench_has():
    assert METHOD_NAMES == METHODS and MODEL_MEMORY_NAMES == tuple(MODEL_MEMORIES)


def test_the_model_revisit_runs_a_camera_model_through_every_memory():
    from streamgen.models.camera import CameraEncoder
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.register_modules(camera_encoder=CameraEncoder.for_transformer(pipe.transformer, anchors=True))
    pipe.set_progress_bar_config(disable=True)
    rows = run_model_revisit(pipe, away=(2,), trials=1, memories=("coverage", "none"))
    assert [(r.flight, r.memory) for r in rows] == [("straight", "coverage"), ("straight", "none"),
                                                     ("two-pass", "coverage"), ("two-pass", "none"),
                                                     ("linger", "coverage"), ("linger", "none")]
    assert all(r.fps > 0 and r.objects_expected >= 2 for r in rows)
    assert rows[0].memory_bytes > rows[1].memory_bytes > 0  # a pool of 32 against the 4 newest
    assert "| straight, 2 chunks away | coverage |" in format_model_table(rows)
    # which frames the scored chunk's anchors came from: back over the place, coverage takes the first frame and the
    # true frames the chunk retraces (9 true frames, 2 chunks of 3 away and back: frames 21..23 retrace 8..6); with
    # no long memory, the 4 frames just before the chunk
    straight, no_memory = rows[0].anchor_frames, rows[1].anchor_frames
    assert len(straight) == 1 and 0 in straight[0] and {6, 8} <= set(straight[0]) and max(straight[0]) < 9
    assert no_memory == [[17, 18, 19, 20]]


def test_revisit_flights_come_back_over_seen_ground():
    from streamgen.bench.revisit import _model_flight, _two_pass_path

    path = _two_pass_path(9, 3, (1, 0))
    assert (len(path) - 9) % 3 == 0 and path[-1] == (16, 12) and max(y for _, y in path) == 24  # between 0 and 24
    world, flight = _model_flight(0, 9, 3, "straight", 4)
    assert torch.equal(flight.poses[-1], flight.poses[6]) and len(flight) == 9 + 2 * 12 + 3
