"""Write-time RoPE: a stream whose position policy never moves a key stores keys rotated once, and gets the very
same numbers as rotating every cached key at every read."""

import pytest
import torch

from streamgen.cache import load_preset
from streamgen.cache.positions import AbsolutePositions
from streamgen.engine import StreamEngine
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.sampling import EulerSampler

CHUNK, FRAMES = 3, 12


def stream(model, preset, text, noise, switch_text=None):
    engine = StreamEngine(model, load_preset(preset), EulerSampler(num_inference_steps=3, shift=5.0), batch_size=1,
                          latent_channels=4, latent_height=8, latent_width=8, chunk_frames=CHUNK,
                          stream_frames=FRAMES)
    engine.set_prompt(model.encode_prompt_kv(text))
    out = []
    with torch.no_grad():
        for start in range(0, FRAMES, CHUNK):
            if switch_text is not None and start == FRAMES // 2:
                engine.set_prompt(model.encode_prompt_kv(switch_text))
            out.append(engine.generate_chunk(noise[:, :, start : start + CHUNK]))
    return engine, torch.cat(out, dim=2)


@pytest.mark.parametrize("preset", ["self-forcing", "rolling", "longlive", "global"])
def test_absolute_presets_store_roped_keys_and_match_read_time_rotation_bit_for_bit(tiny_wan_config, preset,
                                                                                    monkeypatch):
    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**tiny_wan_config).eval()
    text, other, noise = torch.randn(1, 5, 16), torch.randn(1, 5, 16), torch.randn(1, 4, FRAMES, 8, 8)

    written, fast = stream(model, preset, text, noise, switch_text=other)  # a switch: re-cache writes keys too
    monkeypatch.setattr(AbsolutePositions, "stable_key_positions", False)
    read, slow = stream(model, preset, text, noise, switch_text=other)

    assert written.cache.keys_roped and not read.cache.keys_roped
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("preset", ["block-relative", "infinity-rope", "anchor-forcing", "echo-forcing", "streamgen"])
def test_policies_that_move_keys_or_mechanisms_that_read_them_keep_keys_un_roped(tiny_wan_config, preset):
    model = CausalWanTransformer3DModel(**tiny_wan_config).eval()
    resolved = load_preset(preset)
    if resolved.rope_range == "auto":
        resolved = resolved.with_rope_range(21)
    engine = StreamEngine(model, resolved, EulerSampler(num_inference_steps=3, shift=5.0), batch_size=1,
                          latent_channels=4, latent_height=8, latent_width=8, chunk_frames=CHUNK,
                          stream_frames=FRAMES)
    assert not engine.cache.keys_roped


def test_a_remembered_time_embedding_is_forgotten_when_the_weights_change(tiny_wan_config):
    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**tiny_wan_config).eval()
    like = torch.zeros(1, 4, 24)
    with torch.no_grad():
        first = model._time_embedding(500.0, 1, 3, 16, like)
        assert model._time_embedding(500.0, 1, 3, 16, like) is first  # the same timestep: embedded once
        model.condition_embedder.time_embedder.linear_1.weight.mul_(2.0)
        changed = model._time_embedding(500.0, 1, 3, 16, like)
        fresh = model._embed_time(500.0, 1, 3, 16, like)
    assert not torch.equal(changed[1], first[1])
    assert torch.equal(changed[1], fresh[1])
