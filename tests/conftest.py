import pytest
import torch

# The test models are tiny: one thread avoids intra-op threading overhead that dominates at these sizes, and keeps
# runs deterministic however many cores the machine has.
torch.set_num_threads(1)

TINY_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    rope_max_seq_len=64,
)


@pytest.fixture
def tiny_wan_config():
    return dict(TINY_WAN)
