"""Continuing an existing picture or clip: it is written into the cache as context before the first chunk."""

import numpy as np
import pytest
import torch

from streamgen import StreamingVideoPipeline
from streamgen.cli import main
from streamgen.conditioning import fit_frames
from streamgen.tiny import build_tiny_pipeline
from streamgen.video_io import Mp4StreamWriter, read_video


def moving_square_clip(frames=8, size=48, color=(230, 40, 40)):
    clip = np.full((frames, size, size, 3), 30, np.uint8)
    for i in range(frames):
        clip[i, 10:26, 4 + 2 * i : 20 + 2 * i] = color
    return clip


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_init_video_fills_the_cache_and_history_before_the_first_chunk(pipe):
    clip = moving_square_clip()
    stream = pipe.stream("a red square", num_frames=6, video=clip, generator=torch.Generator().manual_seed(0))
    chunks = list(stream)
    engine = stream.engine
    assert stream.context_frames == 8 and [c.latent_start for c in chunks] == [8, 11]
    assert engine.cache.frames_in("sink") == [0, 1, 2]  # the clip's first frames are the attention sink
    # The latent history holds the clip (pixel VAE: latents are the resized clip in [-1, 1]).
    fitted = fit_frames(clip, 32, 32)
    expected = torch.from_numpy(fitted[5:8]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(engine.history.get([5, 6, 7])[0], expected, atol=1e-6)
    assert sum(c.frames.shape[1] for c in chunks) == 6


def test_fit_frames_covers_then_centre_crops():
    wide = np.zeros((1, 20, 80, 3), np.uint8)
    wide[:, :, 25:55] = 255  # a bright band around the middle
    fitted = fit_frames(wide, 32, 32)  # 20x80 -> 32x128, keep columns 48..80 (the band covers 40..88)
    assert fitted.shape == (1, 32, 32, 3)
    assert (fitted == 255).all()


def test_the_continuation_depends_on_the_clip(pipe):
    def first_chunk(clip):
        stream = pipe.stream("a red square", num_frames=3, video=clip, generator=torch.Generator().manual_seed(0))
        return next(stream).frames

    red, blue = moving_square_clip(), moving_square_clip(color=(40, 40, 230))
    assert np.array_equal(first_chunk(red), first_chunk(red))
    assert not np.array_equal(first_chunk(red), first_chunk(blue))
    plain = next(pipe.stream("a red square", num_frames=3, generator=torch.Generator().manual_seed(0))).frames
    assert not np.array_equal(first_chunk(red), plain)


def test_init_image_is_one_context_frame(pipe):
    stream = pipe.stream("a red square", num_frames=3, image=moving_square_clip()[0])
    next(stream)
    assert stream.context_frames == 1 and stream.engine.frame == 4


def test_wan_vae_continuation_decodes_4_frames_per_latent_frame():
    pipe = build_tiny_pipeline(vae="wan")
    pipe.set_progress_bar_config(disable=True)
    clip = moving_square_clip(frames=9, size=32)  # 1 + 4*2 frames -> 3 latent frames
    stream = pipe.stream("a red square", num_frames=9, video=clip, generator=torch.Generator().manual_seed(0))
    chunks = list(stream)
    assert stream.context_frames == 3
    assert [c.video.shape[2] for c in chunks] == [12]  # decoder primed with the clip: no 1 + 4(f-1) first chunk


def test_cli_init_video_from_a_file(tmp_path):
    clip_path = tmp_path / "clip.mp4"
    with Mp4StreamWriter(clip_path, fps=16) as writer:
        writer.write(moving_square_clip(frames=6, size=64))
    pipeline = tmp_path / "tiny"
    build_tiny_pipeline().save_pretrained(pipeline)
    out = tmp_path / "continued.mp4"
    assert main(["generate", "--pipeline", str(pipeline), "--prompt", "a red square", "--frames", "6",
                 "--init-video", str(clip_path), "--out", str(out)]) == 0
    assert read_video(out).shape == (6, 32, 32, 3)
    assert main(["generate", "--pipeline", str(pipeline), "--prompt", "x", "--init-video", str(tmp_path / "nope.mp4"),
                 "--out", str(tmp_path / "y.mp4")]) == 2


def test_a_whole_stream_cache_also_holds_the_init_clip(pipe):
    clip = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    stream = pipe.stream("a red square", num_frames=6, cache="global", video=clip,
                         generator=torch.Generator().manual_seed(0))
    assert sum(len(c.frames[0]) for c in stream) == 6  # was: CacheFullError once the context filled the history
