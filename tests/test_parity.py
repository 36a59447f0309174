"""Streaming chunk by chunk == diffusers' own full-sequence Wan forward under a block-causal mask."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from streamgen.cache import load_preset
from streamgen.engine import StreamEngine
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.sampling import EulerSampler


class BlockCausalSelfAttention:
    """diffusers' Wan processor with a boolean attention mask for self-attention (the reference has none)."""

    def __init__(self, mask_holder):
        self.inner = WanAttnProcessor()
        self.mask_holder = mask_holder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.inner(attn, hidden_states, None, self.mask_holder["mask"], rotary_emb)


def block_causal_mask(frame_chunk_ids: list[int], tokens_per_frame: int) -> torch.Tensor:
    chunk_of_token = torch.tensor(frame_chunk_ids).repeat_interleave(tokens_per_frame)
    return (chunk_of_token[None, :] <= chunk_of_token[:, None])[None, None]  # [1, 1, N, N], True = attend


def reference_generate(ref, latents, text, chunk, sampler):
    """Chunk-causal generation with a full-sequence forward of the diffusers model at every step."""
    mask_holder = {}
    for block in ref.blocks:
        block.attn1.set_processor(BlockCausalSelfAttention(mask_holder))
    _, _, frames, h, w = latents.shape
    tpf = (h // 2) * (w // 2)
    clean = latents[:, :, :0]
    sigmas = sampler.sigmas().tolist()
    for start in range(0, frames, chunk):
        x = latents[:, :, start : start + chunk]
        f = x.shape[2]
        mask_holder["mask"] = block_causal_mask([i // chunk for i in range(start + f)], tpf)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            seq = torch.cat([clean, x], dim=2)
            t = torch.cat([torch.zeros(start * tpf), torch.full((f * tpf,), sigma * 1000.0)])[None]
            v = ref(seq, t, text).sample[:, :, start:]
            x = (x.double() + (sigma_next - sigma) * v.double()).float()
        clean = torch.cat([clean, x], dim=2)
    return clean


@pytest.mark.parametrize("frames,chunk", [(9, 3), (7, 3), (4, 1)])
def test_global_cache_streaming_equals_block_causal_full_forward(tiny_wan_config, frames, chunk):
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**tiny_wan_config).eval()
    model = CausalWanTransformer3DModel(**tiny_wan_config).eval()
    model.load_state_dict(ref.state_dict())
    latents = torch.randn(1, 4, frames, 8, 8)
    text = torch.randn(1, 5, 16)
    sampler = EulerSampler(num_inference_steps=3, shift=5.0)

    engine = StreamEngine(
        model, load_preset("global"), sampler, batch_size=1, latent_channels=4, latent_height=8, latent_width=8,
        chunk_frames=chunk, stream_frames=frames,
    )
    engine.set_prompt(model.encode_prompt_kv(text))
    with torch.no_grad():
        streamed = torch.cat(
            [engine.generate_chunk(latents[:, :, s : s + chunk]) for s in range(0, frames, chunk)], dim=2
        )
        expected = reference_generate(ref, latents, text, chunk, sampler)

    diff = (streamed - expected).abs().max().item()
    assert diff <= 1e-5, diff
    assert streamed.abs().mean() > 0.1  # a real signal, not zeros on both sides


def test_whole_clip_forward_with_block_causal_mask_and_per_frame_timesteps_equals_diffusers(tiny_wan_config):
    """The training path: one forward over a clip, each frame at its own noise level, chunk-causal attention."""
    from streamgen.models.causal_wan import block_causal_mask

    torch.manual_seed(0)
    ref = WanTransformer3DModel(**tiny_wan_config).eval()
    model = CausalWanTransformer3DModel(**tiny_wan_config).eval()
    model.load_state_dict(ref.state_dict())
    frames, chunk, tpf = 6, 3, 16
    clip, text = torch.randn(2, 4, frames, 8, 8), torch.randn(2, 5, 16)
    t_frames = torch.tensor([[0.0] * 3 + [700.0] * 3, [250.0] * 3 + [999.0] * 3])
    mask = block_causal_mask(frames, chunk, tpf)

    holder = {"mask": mask}
    for block in ref.blocks:
        block.attn1.set_processor(BlockCausalSelfAttention(holder))
    with torch.no_grad():
        expected = ref(clip, t_frames.repeat_interleave(tpf, dim=1), text).sample
        positions = torch.arange(frames, dtype=torch.float64)
        rotary = model.rotary(positions, positions, 8, 8)
        ours = model.forward_chunk(clip, t_frames, model.encode_prompt_kv(text), None, rotary, attention_mask=mask)
    assert (ours - expected).abs().max().item() <= 1e-5
