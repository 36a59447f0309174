"""``streamgen bench camera``: the shift measurement reads true flights right, and the bench runs a camera pipeline."""

import numpy as np

from streamgen.bench.camera_follow import _flight, follow_camera, measured_shift
from streamgen.models.camera import CameraEncoder
from streamgen.tiny import build_tiny_pipeline


def test_the_shift_of_a_true_flight_is_the_cameras_move_and_a_blank_frame_is_not_read():
    world, flight, velocities = _flight(3, 9, 12, 3)
    errors = []
    for k in range(1, len(flight)):
        shift = measured_shift(flight.frames[k - 1], flight.frames[k], world.background)
        if shift is not None:
            errors.append(np.hypot(shift[0] + velocities[k][0], shift[1] + velocities[k][1]))
    assert len(errors) >= 15 and np.median(errors) < 0.3
    blank = np.empty_like(flight.frames[0])
    blank[:] = flight.frames[0][0, 0]
    assert measured_shift(blank, blank, world.background) is None


def test_the_bench_scores_a_camera_pipeline_beside_holding_and_the_truth():
    pipe = build_tiny_pipeline()
    pipe.register_modules(camera_encoder=CameraEncoder.for_transformer(pipe.transformer))
    pipe.set_progress_bar_config(disable=True)
    results = follow_camera(pipe, trials=2, chunks=2)
    assert set(results) == {"model", "hold", "truth"}
    truth, hold = results["truth"], results["hold"]
    assert truth.objects == 1.0 and truth.shift_error_px < 0.5 and truth.frames == 12
    assert hold.objects < truth.objects and results["model"].frames == 12
