"""The ShapeWorld oracle: >= 99% on every attribute of 3,000 ground-truth clips, and graceful on bad frames."""

import numpy as np
import pytest

from streamgen.world import (
    BACKGROUNDS, DIRECTIONS, SHAPES, SPEEDS, Attributes, ClipSegment, estimate_motion, read_frames, read_segment,
    render_clip, sample_scene,
)
from streamgen.world.validate import oracle_accuracy, perturb

ATTRIBUTES = ("found", "background", "color", "shape", "size", "centroid", "decoration_xy", "decoration_color",
              "direction", "speed")


def test_oracle_reads_every_attribute_of_3000_clips_with_switches():
    # 3,000 clips x 16 frames: a third without switch, a third with one, a third with two (cut, smooth or recall)
    result = oracle_accuracy(3000, 16, seed=0)
    assert result["clips"] == 3000 and result["frames"] == 48_000
    for name in ATTRIBUTES:
        assert result["accuracy"][name] >= 0.99, (name, result["accuracy"][name])
    assert result["counts"]["direction"] >= 4500  # segments scored for motion
    assert result["counts"]["shape"] >= 40_000  # frames scored (blended smooth-transition frames are not)
    assert result["centroid_error_px"]["p99"] < 0.25


def test_oracle_degrades_gracefully_on_blurred_noisy_frames():
    result = oracle_accuracy(200, 16, seed=1, noise=12.0, blur=0.7)
    for name in ATTRIBUTES:
        assert result["accuracy"][name] >= 0.97, (name, result["accuracy"][name])


def test_frames_without_an_object_read_as_none():
    blank = np.zeros((2, 32, 32, 3), np.uint8) + np.array([240, 240, 240], np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    r = read_frames(np.concatenate([blank, noise]))
    assert list(r.background[:2]) == [BACKGROUNDS.index("white")] * 2
    assert not r.found.any()
    assert (r.color == -1).all() and (r.shape == -1).all() and np.isnan(r.centroid).all()
    assert r.names("shape") == [None] * 5
    seg = read_segment(r)
    assert seg.direction == -1 and seg.shape == -1 and seg.names()["background"] in BACKGROUNDS
    assert len(read_frames(np.zeros((0, 32, 32, 3), np.uint8))) == 0
    with pytest.raises(ValueError):
        read_frames(np.zeros((2, 32, 16, 3), np.uint8))


def test_nearest_class_and_confidence_on_an_off_palette_object():
    scene = sample_scene(5, Attributes("circle", "red", "black", "left", "slow"))
    frames = render_clip([ClipSegment(scene, 4)]).frames.astype(np.int16)
    frames[frames[..., 0] > 150] = (180, 70, 60)  # a dull red
    r = read_frames(frames.astype(np.uint8))
    assert r.names("color") == ["red"] * 4 and r.names("shape") == ["circle"] * 4
    assert (r.color_distance > 30).all() and (r.shape_score > 0.8).all()


def test_motion_is_wrap_aware_and_a_still_object_has_no_direction():
    track = np.stack([(np.arange(10) * 1.5 + 28) % 32, np.full(10, 5.0)], 1)  # right, fast, wrapping at 32
    m = estimate_motion(track, np.ones(10, bool))
    assert (DIRECTIONS[m.direction], SPEEDS[m.speed]) == ("right", "fast") and m.velocity[0] == pytest.approx(1.5)
    up = estimate_motion(np.stack([np.full(6, 3.0), (10 - 0.5 * np.arange(6)) % 32], 1), np.ones(6, bool))
    assert (up.direction_name, up.speed_name) == ("up", "slow")
    still = estimate_motion(np.full((6, 2), 7.0), np.ones(6, bool))
    assert still.direction == -1 and still.speed == -1
    assert estimate_motion(np.zeros((4, 2)), np.zeros(4, bool)).pairs == 0


def test_segment_readout_recovers_a_recalled_scenes_details():
    a, b = sample_scene(40), sample_scene(41)
    clip = render_clip([ClipSegment(a, 8), ClipSegment(b, 8), ClipSegment(a, 8, "recall")])
    r = read_frames(clip.frames)
    first, again = read_segment(r, 0, 8), read_segment(r, 16, 24)
    assert first == again
    assert first.decoration_xy == a.details.decoration
    assert SHAPES[first.shape] == a.attributes.shape and first.found_fraction == 1.0
