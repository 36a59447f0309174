"""Reads of the KV cache are views of its slot buffers whenever they can be: the attended slots are read in slot order
(attention does not care about key order), so a ring that wrapped is still one slice; only slots with holes between
them (an empty or muted junction, external regions still filling) are gathered. Attending to a slice spanning the
holes under a mask was measured slower than the gather (docs/architecture.md, "Cache reads")."""

import pytest
import torch

from streamgen.cache import KVCache, Region, RegionLayout, available_presets, load_preset
from streamgen.cache.kv_cache import _token_index
from streamgen.engine import StreamEngine
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.sampling import FewStepSampler
from streamgen.transitions import Transition

CHUNK, FRAMES = 3, 42
# chunk: (transition, scene); the recall brings scene 0 back
SWITCHES = {4: (Transition.SMOOTH, 1), 7: (Transition.CUT, 2), 10: (Transition.RECALL, 0), 12: (Transition.SMOOTH, 1)}
# Presets whose attended slots are consecutive at every chunk of the stream below, switches included.
NEVER_GATHER = {"self-forcing", "rolling", "longlive", "global", "block-relative", "infinity-rope"}


def test_a_wrapped_ring_is_read_as_a_view_of_the_buffers():
    cache = KVCache(RegionLayout((Region("sink", 3), Region("window", 9, evict=True))), num_layers=1, batch_size=1,
                    tokens_per_frame=2, num_heads=1, head_dim=4)
    cache.k.copy_(torch.randn_like(cache.k))
    for start in range(0, 306, CHUNK):
        cache.begin_chunk(list(range(start, start + CHUNK)))
        k, v = cache.read(0)
        assert k.data_ptr() == cache.k.data_ptr() and v.data_ptr() == cache.v.data_ptr()
        assert torch.equal(k, cache.k[0, :, : k.shape[1]])
    assert cache.frames_in("window") == list(range(297, 306))
    assert [f for f, _ in cache.attention_frames()] == [0, 1, 2, *range(300, 306), 297, 298, 299]  # slot order


def test_an_empty_junction_between_sink_and_window_is_gathered_in_slot_order():
    layout = RegionLayout((Region("sink", 3), Region("junction", 3, promoted_from="window"),
                           Region("window", 9, evict=True)))
    cache = KVCache(layout, num_layers=1, batch_size=1, tokens_per_frame=2, num_heads=1, head_dim=4)
    cache.k.copy_(torch.randn_like(cache.k))
    for start in range(0, 12, CHUNK):
        cache.begin_chunk(list(range(start, start + CHUNK)))
    k, _ = cache.read(0)
    assert torch.equal(k, cache.k[0, :, [s * 2 + i for s in (0, 1, 2, *range(6, 15)) for i in (0, 1)]])


def engine_for(model, name):
    preset = load_preset(name)
    if preset.rope_range == "auto":
        preset = preset.with_rope_range(21)
    return StreamEngine(model, preset, FewStepSampler(), batch_size=1, latent_channels=4, latent_height=8,
                        latent_width=8, chunk_frames=CHUNK, stream_frames=FRAMES)


@pytest.fixture(scope="module")
def model():
    from conftest import TINY_WAN

    torch.manual_seed(0)
    return CausalWanTransformer3DModel(**TINY_WAN).eval()


@pytest.mark.parametrize("name", available_presets())
def test_a_forward_whose_attended_slots_are_consecutive_reads_them_without_index_select(model, name, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    texts = [torch.randn(1, 5, 16, generator=generator) for _ in range(3)]
    noise = torch.randn(1, 4, FRAMES, 8, 8, generator=generator)
    index_select, forward_chunk, read = torch.Tensor.index_select, CausalWanTransformer3DModel.forward_chunk, KVCache.read
    inside, selects, reads = [], [], []

    def counting(self, *args, **kwargs):
        if inside:
            selects.append(inside[-1])
        return index_select(self, *args, **kwargs)

    def forward(self, hidden_states, timestep, prompt_kv, cache, *args, **kwargs):
        slots = cache._read_slots
        inside.append("consecutive" if slots == list(range(slots[0], slots[0] + len(slots))) else "holes")
        try:
            return forward_chunk(self, hidden_states, timestep, prompt_kv, cache, *args, **kwargs)
        finally:
            inside.pop()

    def checked_read(cache, layer):
        k, v = read(cache, layer)
        reads.append(inside[-1])
        inside.append("check")  # the check's own index_select
        attended = _token_index(cache._read_slots, cache.tokens_per_frame)  # every attended slot, in slot order
        assert torch.equal(k, cache.k[layer].index_select(1, attended))
        assert torch.equal(v, cache.v[layer].index_select(1, attended))
        inside.pop()
        return k, v

    monkeypatch.setattr(torch.Tensor, "index_select", counting)
    monkeypatch.setattr(CausalWanTransformer3DModel, "forward_chunk", forward)
    monkeypatch.setattr(KVCache, "read", checked_read)
    engine = engine_for(model, name)
    engine.set_prompt(model.encode_prompt_kv(texts[0]), prompt="scene 0")
    for i, start in enumerate(range(0, FRAMES, CHUNK)):
        if i in SWITCHES:
            transition, scene = SWITCHES[i]
            engine.set_prompt(model.encode_prompt_kv(texts[scene]), transition, prompt=f"scene {scene}")
        engine.generate_chunk(noise[:, :, start : start + CHUNK])
    assert "consecutive" in reads and "consecutive" not in selects
    if name in NEVER_GATHER:
        assert "holes" not in reads
