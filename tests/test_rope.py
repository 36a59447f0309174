import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from streamgen.models.rope import WanRope


def test_rotary_tables_match_diffusers_for_the_positions_it_has():
    head_dim, frames, grid_h, grid_w = 128, 21, 3, 5
    reference = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    cos_ref, sin_ref = reference(torch.zeros(1, 16, frames, 2 * grid_h, 2 * grid_w))  # [1, N, 1, D] interleaved
    ours = WanRope(head_dim).rotary(torch.arange(frames), grid_h, grid_w, torch.device("cpu"))
    assert torch.allclose(ours.cos, cos_ref[0, :, 0, 0::2].float(), atol=1e-6)
    assert torch.allclose(ours.sin, sin_ref[0, :, 0, 1::2].float(), atol=1e-6)


def test_positions_past_the_1024_frame_table_and_fractional_positions_work():
    rope = WanRope(12)
    far = rope.rotary(torch.tensor([5000.0, 5000.5]), 2, 2, torch.device("cpu"))
    assert far.cos.shape == (8, 6) and torch.isfinite(far.cos).all()
    # Only relative position matters: q at 5003 vs k at 5000 scores like q at 3 vs k at 0.
    q, k = torch.randn(1, 4, 1, 12), torch.randn(1, 4, 1, 12)
    def score(pq, pk):
        rq = rope.rotary(torch.tensor([pq]), 2, 2, torch.device("cpu")).apply(q)
        rk = rope.rotary(torch.tensor([pk]), 2, 2, torch.device("cpu")).apply(k)
        return (rq * rk).sum()
    assert torch.allclose(score(5003.0, 5000.0), score(3.0, 0.0), atol=1e-4)


def test_rotation_keeps_the_input_dtype_and_computes_in_float32():
    rope = WanRope(12)
    table = rope.rotary(torch.tensor([100000.0]), 1, 1, torch.device("cpu"))
    x = torch.randn(1, 1, 1, 12, dtype=torch.bfloat16)
    assert table.apply(x).dtype == torch.bfloat16 and table.cos.dtype == torch.float32
