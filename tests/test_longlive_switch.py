"""`longlive` reproduces LongLive v1's prompt switch (NVlabs/LongLive at 2462895), chunk by chunk.

The reference below is a slow float64 re-statement of the release's algorithm, written from its description, not
from our cache engine: a plain list of cached frames with their per-layer K/V, the few-step sampler spelled out.
It shares only the transformer with the engine (itself checked against diffusers in test_parity.py), run in float64.

The release's algorithm (``configs/longlive_interactive_inference.yaml``: ``local_attn_size: 12``, ``sink_size: 3``):

- the cache holds 12 frames: the first 3 ever written are the sink, the other 9 a window ending at the chunk being
  denoised; keys carry their absolute frame index as RoPE position;
- at a switch, the last min(12, frames so far) clean frames run ONE pass at t = 0 under the new prompt, every frame
  attending to all of them (no mask);
- ``global_sink: false``: the cache is emptied first, and the pass writes all of its frames, so the sink becomes its
  first 3 frames; ``global_sink: true``: the pass writes only into the window slots and attends to the old sink
  there, unless it starts at frame 0 (a switch at frame <= 12), when it writes (and re-encodes) the sink too.
"""

from dataclasses import replace

import pytest
import torch

from streamgen.cache import load_preset

from release_reference import PassKV, relative_errors, stream_side_by_side

LOCAL_ATTN_SIZE = 12  # the release's config, not read from our preset: a wrong preset must fail here
SINK_SIZE = 3
CHUNK = 3  # num_frame_per_block
LATENT = 4  # latent height = width: 2x2 tokens per frame
TOLERANCE = 1e-4  # max relative error of a chunk (float32 engine against the float64 reference)


class ReferenceLongLive:
    def __init__(self, model, global_sink, generator):
        self.model, self.global_sink, self.generator = model, global_sink, generator
        self.tokens = (LATENT // 2) ** 2
        self.sink, self.local = [], []  # cached frames: the sink, then the window, oldest first
        self.k, self.v, self.clean = {}, {}, {}  # per frame: K/V per layer [B, tokens, H, D], clean latent
        self.frame = 0

    def run(self, x, t, frames, context, attended):
        """One transformer pass of ``frames`` (latents ``x``) at ``t`` reading ``context`` + ``attended``."""
        kv = PassKV(self.tokens, [(self.k[f], self.v[f]) for f in context], attended)
        keys = context + [frames[i] for i in attended]
        rotary = self.model.rotary(torch.tensor(keys, dtype=torch.float64),
                                   torch.tensor(frames, dtype=torch.float64), LATENT, LATENT)
        out = self.model.forward_chunk(x, t, self.prompt, kv, rotary)
        return out, kv

    def keep(self, kv, frames, which):
        for i in which:
            self.k[frames[i]], self.v[frames[i]] = kv.frame_kv(i)
            (self.sink if len(self.sink) < SINK_SIZE else self.local).append(frames[i])
        self.local = self.local[-(LOCAL_ATTN_SIZE - SINK_SIZE):]

    def chunk(self, noise, sigmas):
        frames = list(range(self.frame, self.frame + noise.shape[2]))
        room = LOCAL_ATTN_SIZE - len(self.sink) - len(frames)  # window frames left beside the chunk's own
        local = self.local[len(self.local) - room :] if room < len(self.local) else self.local
        context, own = self.sink + local, list(range(len(frames)))
        x = noise.double()
        for i, sigma in enumerate(sigmas):
            v, _ = self.run(x, sigma * 1000.0, frames, context, own)
            x0 = x - sigma * v
            if i + 1 == len(sigmas):
                break
            fresh = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32).double()
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * fresh
        _, kv = self.run(x0, 0.0, frames, context, own)
        self.keep(kv, frames, own)
        for i, f in enumerate(frames):
            self.clean[f] = x0[:, :, i : i + 1]
        self.frame += len(frames)
        return x0

    def switch(self, prompt, asked):  # LongLive times nothing from the asked frame: it switches where it plays
        self.prompt = prompt
        span = list(range(self.frame - min(LOCAL_ATTN_SIZE, self.frame), self.frame))
        x = torch.cat([self.clean[f] for f in span], dim=2)
        if not self.global_sink or span[0] == 0:
            self.sink, self.local = [], []  # emptied (or wholly overwritten): the pass refills the sink
            written = list(range(len(span)))
            _, kv = self.run(x, 0.0, span, [], written)
        else:
            # Only the window slots are written; the span's first frames are queried but neither kept nor attended.
            written = list(range(len(span) - (LOCAL_ATTN_SIZE - SINK_SIZE), len(span)))
            self.local = []
            _, kv = self.run(x, 0.0, span, list(self.sink), written)
        self.keep(kv, span, written)


def stream_both(config, switches, frames, global_sink, switch_options=None):
    """Per chunk, (our longlive preset's x0, the reference's x0) with the same weights, noise and prompts;
    ``switch_options`` replace the preset's."""
    preset = load_preset("longlive")
    if switch_options is not None:
        preset = replace(preset, switch_options=switch_options)
    elif not global_sink:
        preset = replace(preset, switch_options={**preset.switch_options, "sink": "reencode"})
    return stream_side_by_side(config, preset, lambda model, generator: ReferenceLongLive(model, global_sink, generator),
                               {start: start for start in switches}, frames, CHUNK, LATENT)


SWITCHES = [(6,), (12,), (15,), (42,), (15, 42)]


@pytest.mark.parametrize("global_sink", [True, False], ids=["global_sink", "sink_reencoded"])
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "switch_at_" + "_".join(map(str, s)))
def test_longlive_matches_the_release_switch_chunk_by_chunk(tiny_wan_config, switches, global_sink):
    pairs = stream_both(tiny_wan_config, set(switches), switches[-1] + 4 * CHUNK, global_sink)
    errors = relative_errors(pairs)
    assert max(errors) <= TOLERANCE, [f"{e:.1e}" for e in errors]


def test_the_preset_states_the_release_config():
    preset = load_preset("longlive")
    assert preset.layout().num_slots == LOCAL_ATTN_SIZE and preset.regions[0].frames == SINK_SIZE
    assert (preset.positions, preset.switch) == ("absolute", "recache")
    assert preset.switch_options == {"sink": "keep-once-full", "reencode": "joint"}  # global_sink: true


@pytest.mark.parametrize("options", [{"sink": "keep", "reencode": "chunked"}, {"sink": "keep", "reencode": "joint"},
                                     {"sink": "keep-once-full", "reencode": "chunked"}])
def test_the_reference_tells_each_choice_apart(tiny_wan_config, options):
    """`rolling`'s re-cache (chunk by chunk, the sink always kept) and each half of it miss the release by more than
    5x the tolerance after a switch at frame 12, where the release re-encodes the sink too, in one joint pass
    (measured: 2.1e-3, 2.1e-3, 7.5e-4; the same chunks match to ~1e-7 before the switch)."""
    pairs = stream_both(tiny_wan_config, {12}, 24, True, switch_options=options)
    errors = relative_errors(pairs)
    assert max(errors[:4]) <= TOLERANCE and max(errors[4:]) > 5 * TOLERANCE, [f"{e:.1e}" for e in errors]
