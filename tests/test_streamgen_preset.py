"""The ``streamgen`` preset: scene memory + a pinned scene anchor + a rolling window, scene-relative RoPE inside the
checkpoint's own range (``rope_range: auto``), and the optional anchor-guided re-cache of the frames a smooth switch
carries (``recache_carry``)."""

from dataclasses import replace

import pytest
import torch

from streamgen.cache import CachePreset, load_preset
from streamgen.schedule import Schedule, Segment
from streamgen.tiny import build_tiny_pipeline

from recording_engine import generate, make_engine as make_recording_engine, regions

TRAINED_RANGE = 12  # the shipped ShapeWorld model's clips


def make_engine(config, rope_range=TRAINED_RANGE, recache_carry=False):
    preset = load_preset("streamgen").with_rope_range(rope_range)
    if recache_carry:  # the switch option the shipped preset measured and left off
        modes = preset.switch_options["modes"]
        options = {**preset.switch_options, "modes": {**modes, "smooth": {**modes["smooth"], "recache_carry": True}}}
        preset = replace(preset, switch_options=options)
    return make_recording_engine(config, preset, num_prompts=4)


def test_rope_range_auto_takes_the_checkpoint_range_and_is_checked_against_it():
    preset = load_preset("streamgen")
    assert preset.rope_range == "auto"
    assert preset.with_rope_range(12).rope_range == 12 and preset.with_rope_range(21).rope_range == 21
    with pytest.raises(ValueError, match=r"more than rope_range 8 .*pipeline's rope_range 8"):
        preset.with_rope_range(8)  # anchor 3 + window 6 streamed frames cannot fit 8 positions
    with pytest.raises(ValueError, match="rope_range: auto"):
        preset.position_policy(preset.layout(), chunk_frames=3)
    assert load_preset("echo-forcing").with_rope_range(12).rope_range == 21  # a stated range is the method's own
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        CachePreset.from_dict({**vars(preset), "regions": [vars(r) for r in preset.regions], "rope_range": "big"})


def test_the_pipeline_resolves_auto_from_its_config_and_streams_through_switches():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.rope_range == 21  # Wan's default
    assert pipe.cache_preset("streamgen").rope_range == 21
    assert pipe.cache_preset("rolling") == load_preset("rolling")
    pipe.register_to_config(rope_range=12)
    assert pipe.cache_preset("streamgen").rope_range == 12
    schedule = Schedule([Segment("a red circle", 6, "latent_frames"),
                         Segment("a blue square", 6, "latent_frames", transition="smooth"),
                         Segment("a red circle", 6, "latent_frames", transition="recall")])
    video = pipe(schedule=schedule, num_frames=18, cache="streamgen", generator=torch.Generator().manual_seed(0))
    assert video.frames.shape[1] == 18


def test_the_anchor_is_each_scene_first_chunk_and_every_index_stays_in_range(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt="a")
    generate(engine, 5)  # frames 0..14
    assert regions(engine)["anchor"] == [0, 1, 2] and regions(engine)["window"] == [9, 10, 11, 12, 13, 14]
    for scene, mode in enumerate(["cut", "smooth", "recall", "cut", "smooth"], start=1):
        start = engine.frame
        engine.set_prompt(prompts[scene % 4], mode, prompt="abcd"[scene % 4])
        generate(engine, 4)
        assert regions(engine)["anchor"] == [start, start + 1, start + 2]  # refilled at the switch, then pinned
        assert regions(engine)["window"] == list(range(start + 6, start + 12))
    positions = [p for _, _, keys, queries in engine.positions.calls for p in keys + queries]
    assert min(positions) >= 0 and max(positions) < TRAINED_RANGE


def test_a_smooth_switch_re_encodes_the_carried_frames_against_the_memory_frame(tiny_wan_config):
    def carried_after_smooth_switch(new_prompt, recache_carry=True):
        engine, prompts = make_engine(tiny_wan_config, recache_carry=recache_carry)
        engine.set_prompt(prompts[0], prompt="a")
        generate(engine, 3)  # frames 0..8
        tpf = engine.cache.tokens_per_frame
        slots = engine.cache.slots.slots_of("window")[-2:]
        as_computed = engine.cache.k[:, :, [s * tpf + i for s in slots for i in range(tpf)]].clone()
        memory_before = len(engine.positions.calls)
        engine.set_prompt(prompts[new_prompt], "smooth", prompt="b")
        assert regions(engine) == {"memory": [0], "carry": [7, 8], "anchor": [], "window": []}
        rewrite = engine.positions.calls[memory_before:]
        if recache_carry:
            assert [(q, k) for _, _, k, q in rewrite] == [([1, 2], [0, 1, 2])]  # memory 0, the carried frames 1..2
        else:
            assert rewrite == []
        return as_computed, engine.cache.region_kv("carry")[0], engine.cache.region_kv("memory")[0], engine

    as_computed, carried, memory, engine = carried_after_smooth_switch(1)
    assert not torch.allclose(carried, as_computed)  # re-encoded under the new prompt, in the carry slots
    pool = engine.switch_strategy.pool
    assert torch.equal(memory, pool.memory(pool.find(0))[0])  # the memory frame itself is untouched
    _, carried_other, _, _ = carried_after_smooth_switch(2)
    assert not torch.allclose(carried, carried_other)  # ... and it is the new prompt that they follow
    as_computed, kept, _, _ = carried_after_smooth_switch(1, recache_carry=False)  # the shipped preset's smooth
    assert torch.equal(kept, as_computed)
    generate(engine, 1)
    _, _, keys, queries = engine.positions.calls[-1]
    assert keys == [0, 1, 2, 3, 4, 5] and queries == [3, 4, 5]


def test_recache_carry_needs_carried_frames():
    data = {"name": "x", "regions": [{"name": "memory", "frames": 1, "external": True},
                                     {"name": "window", "frames": 6, "evict": True}],
            "positions": "scene-relative", "rope_range": 12, "switch": "scene-memory",
            "switch_options": {**load_preset("streamgen").switch_options}}
    modes = dict(data["switch_options"]["modes"])
    modes["cut"] = {**modes["cut"], "recache_carry": True}
    data["switch_options"] = {**data["switch_options"], "modes": modes}
    with pytest.raises(ValueError, match="recache_carry re-encodes carried frames, so carry must be > 0"):
        CachePreset.from_dict(data)
