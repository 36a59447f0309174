"""The ShapeWorld renderer: wrap-around motion and the three transitions, frame for frame."""

import numpy as np
import pytest

from streamgen.world import (
    COLORS, SMOOTH_FRAMES, Attributes, ClipSegment, render_clip, render_scene, sample_scene,
)


def _object_mask(frames, scene):
    """Pixels at least half-way from the background to the object colour (decoration excluded by colour)."""
    bg = np.asarray(COLORS[scene.attributes.background], np.float32)
    obj = np.asarray(COLORS[scene.attributes.color], np.float32)
    t = ((frames.astype(np.float32) - bg) @ (obj - bg)) / float((obj - bg) @ (obj - bg))
    return t > 0.5


def test_clips_are_uint8_and_deterministic():
    a, b = sample_scene(1), sample_scene(2)
    clip = render_clip([ClipSegment(a, 5), ClipSegment(b, 7, "smooth")])
    assert clip.frames.shape == (12, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.frames.flags["C_CONTIGUOUS"]
    again = render_clip([ClipSegment(a, 5), ClipSegment(b, 7, "smooth")])
    assert np.array_equal(clip.frames, again.frames)
    assert clip.captions == [a.caption, b.caption]
    assert list(clip.segment) == [0] * 5 + [1] * 7
    assert render_clip([ClipSegment(a, 3)], resolution=64).frames.shape == (3, 64, 64, 3)


def test_the_object_wraps_around_and_moves_at_its_speed():
    attrs = Attributes("square", "red", "black", "right", "fast")
    scene = sample_scene(3, attrs)
    clip = render_clip([ClipSegment(scene, 40)])  # 40 frames x 1.5 px = 60 px: wraps around the 32 px frame
    areas = _object_mask(clip.frames, scene).sum((1, 2))
    assert areas.min() >= scene.details.size ** 2 - 2 * scene.details.size - 1  # always whole (maybe split)
    steps = (np.diff(clip.centroid[:, 0]) + 16) % 32 - 16
    assert np.allclose(steps, 1.5) and np.allclose(np.diff(clip.centroid[:, 1]), 0)
    assert clip.centroid[0, 0] == pytest.approx(scene.details.x)


def test_a_cut_shows_the_new_scene_at_once_from_its_own_start():
    a, b = sample_scene(10), sample_scene(11)
    clip = render_clip([ClipSegment(a, 6), ClipSegment(b, 6, "cut")])
    assert np.array_equal(clip.frames[:6], render_scene(a, 6))
    assert np.array_equal(clip.frames[6:], render_scene(b, 6))
    assert not clip.in_transition.any()


def test_a_smooth_switch_cross_fades_and_glides_then_is_exactly_the_new_scene():
    a = sample_scene(20, Attributes("circle", "red", "black", "left", "slow"))
    b = sample_scene(21, Attributes("square", "yellow", "white", "down", "fast"))
    clip = render_clip([ClipSegment(a, 6), ClipSegment(b, 12, "smooth")])
    assert list(np.flatnonzero(clip.in_transition)) == list(range(6, 6 + SMOOTH_FRAMES))
    # after the blend: the new scene, on its own clock from its first frame
    assert np.array_equal(clip.frames[6 + SMOOTH_FRAMES:], render_scene(b, 12)[SMOOTH_FRAMES:])
    # the background (the frame's median colour) fades monotonically from black to white
    bg = [int(np.median(f[..., 0])) for f in clip.frames[5:6 + SMOOTH_FRAMES + 1]]
    assert bg == sorted(bg) and bg[0] == COLORS["black"][0] and bg[-1] == COLORS["white"][0]
    # the object glides: its first blended frame is at most w = 1/5 of half the torus from where the old one is
    old_next = np.array([a.details.x - 0.5 * 6, a.details.y]) % 32
    assert np.abs((clip.centroid[6] - old_next + 16) % 32 - 16).max() <= 16 / (SMOOTH_FRAMES + 1) + 0.01
    jumps = np.abs((np.diff(clip.centroid[5:6 + SMOOTH_FRAMES + 1], axis=0) + 16) % 32 - 16).max()
    assert jumps < 8


def test_a_recall_brings_back_the_same_details_on_a_clock_that_kept_running():
    a, b = sample_scene(30), sample_scene(31)
    clip = render_clip([ClipSegment(a, 8), ClipSegment(b, 8, "cut"), ClipSegment(a, 8, "recall")])
    assert clip.segments[2].scene is clip.segments[0].scene
    assert np.array_equal(clip.frames[16:], render_scene(a, 24)[16:])
    # given as attributes, a recall finds the earlier scene with them
    by_attributes = render_clip([ClipSegment(a, 8), ClipSegment(b, 8), ClipSegment(a.attributes, 8, "recall")])
    assert np.array_equal(by_attributes.frames, clip.frames)


def test_attribute_segments_draw_their_details_from_the_clip_seed():
    attrs = Attributes("triangle", "green", "gray", "up", "slow")
    one = render_clip([ClipSegment(attrs, 4)], seed=1)
    two = render_clip([ClipSegment(attrs, 4)], seed=2)
    assert one.segments[0].scene.attributes == two.segments[0].scene.attributes
    assert one.segments[0].scene.details != two.segments[0].scene.details
    assert np.array_equal(one.frames, render_clip([ClipSegment(attrs, 4)], seed=1).frames)


def test_bad_clips_raise_value_errors():
    a = sample_scene(1)
    with pytest.raises(ValueError, match="recall of a scene"):
        render_clip([ClipSegment(a, 4), ClipSegment(sample_scene(2), 4, "recall")])
    with pytest.raises(ValueError, match="transition"):
        render_clip([ClipSegment(a, 4, "fade")])
    with pytest.raises(ValueError, match="num_frames"):
        render_clip([ClipSegment(a, None)])
    assert len(render_clip([ClipSegment(a, None)], 9).frames) == 9
    assert len(render_clip([ClipSegment(a, 10)], 4).frames) == 4
