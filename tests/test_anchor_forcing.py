"""Anchor Forcing (junction region, anchor-guided re-cache, tri-region RoPE) and Infinity-RoPE (KV flush) as presets
of the one cache engine."""

from dataclasses import replace

import pytest
import torch

from streamgen.cache import KVCache, Recache, Region, RegionLayout, load_preset

from recording_engine import CHUNK, LATENT, generate, make_engine

# The paper's reading of the junction (promoted when the window evicts it) with a chunk-by-chunk re-cache beside the
# old sink: anchor-recache's defaults. The shipped preset plays the release (tests/test_anchor_forcing_switch.py).
PAPER_READING = replace(load_preset("anchor-forcing"), switch_options={})


def kv_of(cache, frames):
    """K, V [layers, B, frames * tokens, H, D] of ``frames``, wherever the cache holds them."""
    tpf = cache.tokens_per_frame
    index = torch.cat([torch.arange(s * tpf, (s + 1) * tpf) for s in map(cache.slots.frame_of_slot.index, frames)])
    return cache.k[:, :, index].clone(), cache.v[:, :, index].clone()


def positions_by_region(key_frames, keys):
    """{region: positions of its frames, oldest frame first} (a ring window's slot order is not frame order)."""
    out = {}
    for (frame, region), position in sorted(zip(key_frames, keys)):
        out.setdefault(region, []).append(int(position))
    return out


def place_chunks(cache, first, last):
    for start in range(first, last, CHUNK):
        cache.begin_chunk(list(range(start, start + CHUNK)))


# ---- tri-region RoPE --------------------------------------------------------------------------------------------
def test_wan_sized_example_gets_sink_0_2_junction_6_8_local_12_20_queries_18_20():
    preset = load_preset("anchor-forcing")
    layout = preset.layout()
    cache = KVCache(layout, num_layers=1, batch_size=1, tokens_per_frame=1, num_heads=1, head_dim=2)
    policy = preset.position_policy(layout, CHUNK)

    place_chunks(cache, 0, 30)
    cache.mark("junction", [30, 31, 32])  # a switch before frame 30
    place_chunks(cache, 30, 60)
    query = [57, 58, 59]
    assert cache.frames_in("junction") == [30, 31, 32] and cache.frames_in("window") == list(range(51, 60))
    keys, queries = policy(cache.attention_frames(), query)
    assert positions_by_region(cache.attention_frames(), keys.tolist()) == {
        "sink": [0, 1, 2], "junction": [6, 7, 8], "window": list(range(12, 21)),
    }
    assert queries.tolist() == [18, 19, 20]


def test_tri_region_keeps_absolute_positions_until_the_range_end_and_no_junction_before_a_switch():
    preset = load_preset("anchor-forcing")
    layout = preset.layout()
    cache = KVCache(layout, num_layers=1, batch_size=1, tokens_per_frame=1, num_heads=1, head_dim=2)
    policy = preset.position_policy(layout, CHUNK)
    for start in range(0, 30, CHUNK):
        frames = list(range(start, start + CHUNK))
        cache.begin_chunk(frames)
        keys, queries = policy(cache.attention_frames(), frames)
        by_region = positions_by_region(cache.attention_frames(), keys.tolist())
        assert "junction" not in by_region  # before any switch the sink is the stream's only anchor
        if start + CHUNK <= 21:  # the first 21 frames see exactly the absolute positions they were trained with
            assert keys.tolist() == [f for f, _ in cache.attention_frames()] and queries.tolist() == frames
        else:
            assert by_region == {"sink": [0, 1, 2], "window": list(range(12, 21))}
            assert queries.tolist() == [18, 19, 20]


def test_a_junction_held_early_pushes_the_window_past_it_instead_of_overlapping():
    preset = load_preset("anchor-forcing")
    layout = preset.layout()
    cache = KVCache(layout, num_layers=1, batch_size=1, tokens_per_frame=1, num_heads=1, head_dim=2)
    place_chunks(cache, 0, 3)
    cache.mark("junction", [3, 4, 5])  # a switch right after the sink chunk
    place_chunks(cache, 3, 15)  # frames 3..5 leave the 9-frame window when 12..14 arrive
    keys, queries = preset.position_policy(layout, CHUNK)(cache.attention_frames(), [12, 13, 14])
    assert positions_by_region(cache.attention_frames(), keys.tolist()) == {
        "sink": [0, 1, 2], "junction": [6, 7, 8], "window": list(range(9, 18)),
    }
    assert queries.tolist() == [15, 16, 17]


def test_indices_stay_in_the_trained_range_and_cache_bytes_stay_constant_over_a_long_stream(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "anchor-forcing")
    cache = engine.cache
    pointers, nbytes = (cache.k.data_ptr(), cache.v.data_ptr()), cache.nbytes
    engine.set_prompt(prompts[0])
    generate(engine, 1)
    switches = 0
    for chunk in range(1, 210):
        if chunk == 1 or chunk % 23 == 0:  # one switch right after the sink, then every 23 chunks
            switches += 1
            engine.set_prompt(prompts[switches % len(prompts)])
        generate(engine, 1)
    assert switches >= 9 and cache.frames_in("junction")
    top = load_preset("anchor-forcing").rope_range - 1
    for key_frames, query_frames, keys, queries in engine.positions.calls:
        assert all(0 <= p <= top for p in keys + queries), (query_frames, keys)
        assert len(set(keys)) == len(keys), (key_frames, keys)  # regions never share a position
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pointers and cache.nbytes == nbytes
    assert cache.k.shape[2] == (3 + 3 + 9) * cache.tokens_per_frame


# ---- junction -----------------------------------------------------------------------------------------------------
def test_the_junction_holds_the_first_post_switch_chunk_once_it_leaves_the_window(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, PAPER_READING)
    cache = engine.cache
    engine.set_prompt(prompts[0])
    generate(engine, 5)
    engine.set_prompt(prompts[1])  # switch at frame 15
    generate(engine, 1)
    first_k, first_v = kv_of(cache, [15, 16, 17])
    generate(engine, 2)
    assert cache.frames_in("junction") == [] and 15 in cache.frames_in("window")  # still inside the window
    generate(engine, 1)  # frames 15..17 are evicted from the window ...
    assert cache.frames_in("junction") == [15, 16, 17] and 15 not in cache.frames_in("window")
    generate(engine, 10)  # ... and kept, untouched, however long the stream goes on
    k, v = kv_of(cache, [15, 16, 17])
    assert torch.equal(k, first_k) and torch.equal(v, first_v)

    engine.set_prompt(prompts[2])  # a later switch keeps the old junction until the new first chunk leaves
    switch = engine.frame
    generate(engine, 1)
    second_k, second_v = kv_of(cache, [switch, switch + 1, switch + 2])
    generate(engine, 2)
    assert cache.frames_in("junction") == [15, 16, 17]
    generate(engine, 1)
    assert cache.frames_in("junction") == [switch, switch + 1, switch + 2]
    k, v = kv_of(cache, cache.frames_in("junction"))
    assert torch.equal(k, second_k) and torch.equal(v, second_v)


def junction_chunks(engine, first_chunk):
    """Start frames of the generated chunks from ``first_chunk`` on whose passes attended to the junction."""
    return sorted({query_frames[0] for key_frames, query_frames, _, _ in engine.positions.calls[first_chunk:]
                   if len(query_frames) == CHUNK and any(region == "junction" for _, region in key_frames)})


@pytest.mark.parametrize("asked, played, first_attended", [(120, 120, 132), (40, 42, 51), (80, 81, 90)])
def test_the_release_junction_is_a_copy_attended_from_the_asked_index_past_the_window(tiny_wan_config, asked, played,
                                                                                      first_attended):
    engine, prompts = make_engine(tiny_wan_config, "anchor-forcing")
    cache = engine.cache
    engine.set_prompt(prompts[0])
    generate(engine, played // CHUNK)
    engine.set_prompt(prompts[1], switch_index=asked)
    calls = len(engine.positions.calls)
    generate(engine, 1)
    assert cache.frames_in("junction") == [played, played + 1, played + 2]  # a copy: the window holds them too
    assert played in cache.frames_in("window")
    generate(engine, (first_attended - played) // CHUNK + 1)
    assert junction_chunks(engine, calls)[0] == first_attended


def test_the_release_drops_the_previous_junction_after_the_switch_re_cache(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "anchor-forcing")
    engine.set_prompt(prompts[0])
    generate(engine, 5)
    engine.set_prompt(prompts[1])  # at 15: junction 15..17, attended from 27
    generate(engine, 9)
    calls = len(engine.positions.calls)
    engine.set_prompt(prompts[2])  # at 42: its re-cache pass (span from 30) still attends to junction 15..17
    assert any(region == "junction" for _, region in engine.positions.calls[calls][0])
    generate(engine, 6)
    assert junction_chunks(engine, calls + 1) == [54, 57]  # none until 42 + 9 < start
    assert engine.cache.frames_in("junction") == [42, 43, 44]


def test_junction_promotion_needs_an_evicting_source_region():
    with pytest.raises(ValueError, match="promoted_from must name an evicting region"):
        RegionLayout((Region("sink", 3), Region("junction", 3, promoted_from="sink"), Region("window", 9, evict=True)))


# ---- anchor-guided re-cache ------------------------------------------------------------------------------------
def reencode_reference(engine, context_frames, context_positions, run, run_positions):
    """The run's clean K/V, computed by hand: a fresh cache holding only ``context_frames`` (copied from the
    engine's cache) at ``context_positions``, the run at ``run_positions``, under the engine's current prompt."""
    cache, model = engine.cache, engine.transformer
    fresh = KVCache(RegionLayout((Region("context", len(context_frames) + len(run)),)), num_layers=cache.k.shape[0],
                    batch_size=1, tokens_per_frame=cache.tokens_per_frame, num_heads=model.num_heads,
                    head_dim=model.head_dim)
    fresh.begin_chunk(context_frames)
    k, v = kv_of(cache, context_frames)
    fresh.k[:, :, : k.shape[2]], fresh.v[:, :, : v.shape[2]] = k, v
    fresh.begin_chunk(run)
    rotary = model.rotary(torch.tensor(context_positions + run_positions, dtype=torch.float64),
                          torch.tensor(run_positions, dtype=torch.float64), LATENT, LATENT)
    with torch.no_grad():
        model.forward_chunk(engine.history.get(run), 0.0, engine.prompt_kv, fresh, rotary)
    run_tokens = slice(k.shape[2], None)
    return fresh.k[:, :, run_tokens], fresh.v[:, :, run_tokens]


def test_anchor_recache_reencodes_the_window_against_sink_and_previous_junction(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, PAPER_READING)
    cache = engine.cache
    engine.set_prompt(prompts[0])
    generate(engine, 2)
    engine.set_prompt(prompts[1])  # switch at frame 6: frames 6..8 become the junction
    generate(engine, 8)
    assert cache.frames_in("junction") == [6, 7, 8]
    window = cache.frames_in("window")
    calls_before = len(engine.positions.calls)

    engine.set_prompt(prompts[2])

    reencode_calls = engine.positions.calls[calls_before:]
    runs = [window[i : i + CHUNK] for i in range(0, len(window), CHUNK)]
    assert [query for _, query, _, _ in reencode_calls] == runs
    for i, (key_frames, run, keys, queries) in enumerate(reencode_calls):
        # sink + previous junction + the frames re-encoded so far (this run included)
        assert key_frames == [(0, "sink"), (1, "sink"), (2, "sink"), (6, "junction"), (7, "junction"),
                              (8, "junction")] + [(f, "window") for f in window[: (i + 1) * CHUNK]]
        assert queries == [18, 19, 20]
    assert cache.frames_in("junction") == [6, 7, 8]  # kept through the switch

    first = runs[0]
    k, v = kv_of(cache, first)
    anchored_k, anchored_v = reencode_reference(engine, [0, 1, 2, 6, 7, 8], [0, 1, 2, 6, 7, 8], first, [18, 19, 20])
    assert torch.allclose(k, anchored_k, atol=1e-5) and torch.allclose(v, anchored_v, atol=1e-5)
    plain_k, _ = reencode_reference(engine, [0, 1, 2], [0, 1, 2], first, [18, 19, 20])  # LongLive: sink only
    assert not torch.allclose(k, plain_k, atol=1e-3)


def test_a_plain_recache_drops_the_junction_whose_latents_left_the_history(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "anchor-forcing")
    engine.set_prompt(prompts[0])
    generate(engine, 2)
    engine.set_prompt(prompts[1])
    generate(engine, 10)  # the junction (frames 6..8) is older than the 15-frame latent history
    engine.context.switch = Recache()  # e.g. comparing LongLive's re-cache on the same stream
    engine.set_prompt(prompts[2])
    assert engine.cache.frames_in("junction") == [] and engine.cache.frames_in("window") == list(range(27, 36))


# ---- Infinity-RoPE flush -----------------------------------------------------------------------------------------
def test_flush_keeps_the_sink_and_the_two_most_recent_frames_as_computed(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "infinity-rope")
    cache = engine.cache
    engine.set_prompt(prompts[0])
    generate(engine, 6)  # frames 0..17
    kept_k, kept_v = kv_of(cache, [0, 16, 17])
    engine.set_prompt(prompts[1])
    assert cache.frames_in("sink") == [0] and cache.frames_in("window") == [16, 17]
    k, v = kv_of(cache, [0, 16, 17])
    assert torch.equal(k, kept_k) and torch.equal(v, kept_v)  # flushed, not re-encoded
    generate(engine, 1)
    key_frames, query, keys, queries = engine.positions.calls[-1]
    by_frame = sorted((f, p) for (f, _), p in zip(key_frames, keys))
    # Infinity-RoPE's block-relative indices: sink 0, kept frames 1..2, the new prompt's first chunk 3..5
    assert by_frame == [(0, 0), (16, 1), (17, 2), (18, 3), (19, 4), (20, 5)] and queries == [3, 4, 5]


def test_flush_on_a_wider_window_drops_all_but_the_kept_frames(tiny_wan_config, tmp_path):
    path = tmp_path / "wide-flush.yaml"
    path.write_text(
        "name: wide-flush\nregions:\n  - {name: sink, frames: 3}\n  - {name: window, frames: 9, evict: true}\n"
        "positions: block-relative\nswitch: flush\nswitch_options: {keep_recent: 2}\n"
    )
    engine, prompts = make_engine(tiny_wan_config, str(path))
    engine.set_prompt(prompts[0])
    generate(engine, 5)  # window holds 6..14
    engine.set_prompt(prompts[1])
    assert engine.cache.frames_in("sink") == [0, 1, 2] and engine.cache.frames_in("window") == [13, 14]
    generate(engine, 1)
    assert engine.cache.frames_in("window") == [13, 14, 15, 16, 17]


# ---- preset files ------------------------------------------------------------------------------------------------
ANCHOR_REGIONS = (
    "regions:\n  - {name: sink, frames: 3}\n  - {name: junction, frames: 3, promoted_from: window}\n"
    "  - {name: window, frames: 9, evict: true}\n"
)


@pytest.mark.parametrize(
    "body, message",
    [
        (ANCHOR_REGIONS + "positions: tri-region\nswitch: anchor-recache\n", "tri-region positions need rope_range"),
        (ANCHOR_REGIONS + "positions: tri-region\nrope_range: 12\nswitch: anchor-recache\n",
         r"sink 3 \+ junction 3 \+ window 9 = 15 frames do not fit rope_range 12"),
        (ANCHOR_REGIONS + "positions: tri-region\nrope_range: twenty\n", "rope_range must be a positive integer"),
        (ANCHOR_REGIONS + "positions: absolute\nrope_range: 21\n", "rope_range only applies to tri-region"),
        ("regions:\n  - {name: sink, frames: 3}\n  - {name: window, frames: 9, evict: true}\n"
         "positions: absolute\nswitch: anchor-recache\n", "anchor_region 'junction' must be a region promoted"),
        ("regions:\n  - {name: sink, frames: 3}\n  - {name: junction, frames: 3, promoted_from: sink}\n"
         "  - {name: window, frames: 9, evict: true}\n", "promoted_from must name an evicting region"),
        ("regions:\n  - {name: sink, frames: 3, pinned: true}\n", r"region 'sink': unknown keys \['pinned'\]"),
        ("regions:\n  - {name: window, frames: -9, evict: true}\n", "region 'window': frames must be a positive"),
        ("regions:\n  - {name: sink, frames: 1}\n  - {name: window, frames: 5, evict: true}\n"
         "switch: flush\nswitch_options: {keep_recent: -1}\n", "keep_recent must be a non-negative integer"),
        ("regions:\n  - {name: sink, frames: 1}\n  - {name: window, frames: 5, evict: true}\n"
         "switch: flush\nswitch_options: {keep_latest: 2}\n", "unexpected keyword argument 'keep_latest'"),
    ],
)
def test_bad_preset_files_fail_naming_the_file_and_the_key(tmp_path, body, message):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\n" + body)
    with pytest.raises(ValueError, match=message) as err:
        load_preset(str(path))
    assert str(path) in str(err.value)


def test_peer_presets_load_as_configurations_of_the_engine():
    anchor = load_preset("anchor-forcing")
    assert [(r.name, r.frames, r.evict, r.promoted_from) for r in anchor.regions] == [
        ("sink", 3, False, None), ("junction", 3, False, "window"), ("window", 9, True, None),
    ]
    assert (anchor.positions, anchor.rope_range, anchor.switch) == ("tri-region", 21, "anchor-recache")
    infinity = load_preset("infinity-rope")
    assert (infinity.positions, infinity.switch) == ("block-relative", "flush")
    assert infinity.switch_options == {"keep_recent": 2}
