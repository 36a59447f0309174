"""Dense teacher forcing is the inference situation: each noisy chunk sees exactly the clean chunks before it, each
segment's frames run under their own caption, and an x0-predicting model samples through the unchanged samplers."""

import pytest
import torch

from streamgen.models.causal_wan import CausalWanTransformer3DModel, block_causal_mask
from streamgen.sampling import EulerSampler, FewStepSampler, flow_from_sample
from streamgen.train import teacher_forcing as tf

CHUNK, TPF = 3, 4  # 3 frames per chunk; 8x8 frames with 4x4 patches -> 4 tokens per frame


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanTransformer3DModel(
        patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12, in_channels=3, out_channels=3,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
    ).eval()


def forward(model, x, t, text, positions, mask, text_mask=None):
    kv = model.encode_prompt_kv(text)
    kv.mask = text_mask
    rotary = model.rotary(positions, positions, x.shape[-2], x.shape[-1])
    return model.forward_chunk(x, t, kv, None, rotary, attention_mask=mask)


def test_the_mask_is_block_causal_on_clean_and_each_noisy_chunk_sees_only_the_clean_past_and_itself():
    frames = 9
    m = tf.dense_mask(frames, CHUNK, TPF)[0, 0]
    n = frames * TPF
    assert torch.equal(m[:n, :n], block_causal_mask(frames, CHUNK, TPF)[0, 0])
    assert not m[:n, n:].any()  # clean never sees noisy
    for k in range(3):
        rows = m[n + k * CHUNK * TPF : n + (k + 1) * CHUNK * TPF]
        clean_seen = rows[:, :n].any(0).nonzero().flatten()
        noisy_seen = rows[:, n:].any(0).nonzero().flatten()
        assert clean_seen.tolist() == list(range(k * CHUNK * TPF))
        assert noisy_seen.tolist() == list(range(k * CHUNK * TPF, (k + 1) * CHUNK * TPF))


def test_every_noisy_chunk_equals_a_causal_forward_of_its_clean_past_then_itself(model):
    torch.manual_seed(1)
    frames = 9
    clean, noisy = torch.randn(1, 3, frames, 8, 8), torch.randn(1, 3, frames, 8, 8)
    t_clean, t_noisy = torch.rand(1, frames) * 50, torch.rand(1, frames) * 1000
    text = torch.randn(1, 5, 8)
    pos = torch.arange(frames) + 7.0  # any positions: both copies of a frame share them
    dense = forward(model, torch.cat((clean, noisy), 2), torch.cat((t_clean, t_noisy), 1), text,
                    torch.cat((pos, pos)), tf.dense_mask(frames, CHUNK, TPF))
    for k in range(3):
        past, own = slice(0, k * CHUNK), slice(k * CHUNK, (k + 1) * CHUNK)
        x = torch.cat((clean[:, :, past], noisy[:, :, own]), 2)
        t = torch.cat((t_clean[:, past], t_noisy[:, own]), 1)
        p = torch.cat((pos[past], pos[own]))
        plain = forward(model, x, t, text, p, block_causal_mask(x.shape[2], CHUNK, TPF))
        assert torch.allclose(dense[:, :, frames + own.start : frames + own.stop], plain[:, :, -CHUNK:], atol=1e-5)


def test_each_segment_runs_under_its_own_caption(model):
    torch.manual_seed(2)
    frames = 6
    x = torch.randn(1, 3, frames, 8, 8)
    t = torch.rand(1, frames) * 1000
    states = {"A": torch.randn(5, 8), "B": torch.randn(5, 8)}
    encode = lambda prompts: torch.stack([states[p] for p in prompts])  # noqa: E731
    slot = torch.tensor([[0, 0, 0, 1, 1, 1]])  # segment A then B
    text, text_mask = tf.text_inputs([["A", "B"]], slot, encode, TPF, copies=1)
    assert text.shape == (1, 10, 8) and text_mask.shape == (1, 1, frames * TPF, 10)
    pos, mask = torch.arange(frames), block_causal_mask(frames, CHUNK, TPF)
    both = forward(model, x, t, text, pos, mask, text_mask)
    only_a = forward(model, x, t, encode(["A"]), pos, mask)
    only_b = forward(model, x, t, encode(["B"]), pos, mask)
    assert torch.allclose(both[:, :, :3], only_a[:, :, :3], atol=1e-5)  # chunk 0 sees only itself, under A
    assert not torch.allclose(both[:, :, 3:], only_b[:, :, 3:], atol=1e-3)  # chunk 1 reads chunk 0 computed under A
    # ... which is exactly what a cached stream does: chunk 0's K/V under A, then chunk 1 under B.
    kv_a, kv_b = model.encode_prompt_kv(encode(["A"])), model.encode_prompt_kv(encode(["B"]))
    from streamgen.cache.presets import load_preset
    from streamgen.cache.kv_cache import KVCache

    layout = load_preset("global").stream_layout(frames)
    cache = KVCache(layout, num_layers=2, batch_size=1, tokens_per_frame=TPF, num_heads=2, head_dim=12,
                    dtype=torch.float32, device=torch.device("cpu"))
    outs = []
    for k, kv in ((0, kv_a), (1, kv_b)):
        run = list(range(k * CHUNK, (k + 1) * CHUNK))
        cache.begin_chunk(run)
        key_pos = torch.tensor([f for f, _ in cache.attention_frames()], dtype=torch.float64)
        rotary = model.rotary(key_pos, torch.tensor(run, dtype=torch.float64), 8, 8)
        outs.append(model.forward_chunk(x[:, :, run], t[:, run], kv, cache, rotary))
    assert torch.allclose(torch.cat(outs, 2), both, atol=1e-5)


def test_scene_start_chunks_are_the_chunks_drawn_from_the_prompt_alone():
    batch = {"frame_segment": torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2], [0] * 9]),
             "scene_seeds": [[10, 20, 10], [30]]}  # A, cut to B, recall A | one scene
    assert tf.scene_start_chunks(batch, CHUNK).tolist() == [[True, True, False], [True, False, False]]


@pytest.mark.parametrize("sampler", [FewStepSampler(), EulerSampler(num_inference_steps=4)])
def test_an_exact_x0_predictor_samples_the_clean_latents_through_the_flow_samplers(sampler):
    x0 = torch.randn(1, 3, 2, 4, 4)
    out = sampler.sample(lambda x, t: flow_from_sample(x, x0, t / 1000), torch.randn_like(x0),
                         torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)
