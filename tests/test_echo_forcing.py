"""Echo-Forcing as a preset of the one cache engine: scene recall frames compressed into a bounded pool, recall by
prompt or id, truncation at switches (smooth / cut / recall), scene-relative RoPE with jumps inside the trained range,
difference-aware decay of what a switch kept."""

import pytest
import torch
import torch.nn.functional as F

from streamgen.cache import load_preset
from streamgen.cache.presets import PRESET_DIR
from streamgen.cache.scene_memory import compress_scene
from streamgen.cache.scene_pool import prompt_similarities

from recording_engine import CHUNK, LATENT, generate, make_engine as make_recording_engine, regions

PRESET_FILE = PRESET_DIR / "echo-forcing.yaml"
PRESET = load_preset("echo-forcing")
OPTIONS = PRESET.switch_options
TEXTS = [
    "a woman in a red coat walks through a snowy forest",
    "a woman in a red coat drinks coffee in a busy cafe",
    "a woman in a red coat rides a bicycle along the beach",
    "a woman in a red coat walks back into the snowy forest at dusk",
]


def make_engine(config, preset=PRESET):
    return make_recording_engine(config, preset, num_prompts=len(TEXTS))


def switch(engine, prompts, scene, mode, **kwargs):
    engine.set_prompt(prompts[scene], mode, prompt=TEXTS[scene], **kwargs)


def pooled(engine, scene):
    strategy = engine.switch_strategy
    return strategy.pool.memory(strategy.pool.find(scene))


# ---- scene recall frames -----------------------------------------------------------------------------------------
def test_the_memory_frame_is_the_hand_computed_compression_of_frames_0_4_8(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    chunks_kv, queries = [], []
    strategy = engine.switch_strategy
    observe, after = strategy.observe_query, strategy.after_chunk
    strategy.observe_query = lambda layer, q: (queries.append((layer, q.clone())), observe(layer, q))
    strategy.after_chunk = lambda ctx: (chunks_kv.append(ctx.cache.chunk_kv()), after(ctx))
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 5)  # 15 frames: the first 12 are recorded, the mean query spans the whole scene
    switch(engine, prompts, 1, "cut")

    layers, tpf = engine.cache.k.shape[0], engine.cache.tokens_per_frame
    k = torch.cat([kv[0] for kv in chunks_kv], dim=2).unflatten(2, (-1, tpf))  # [L, B, 15, tpf, H, D]
    v = torch.cat([kv[1] for kv in chunks_kv], dim=2).unflatten(2, (-1, tpf))
    w0 = OPTIONS["base_weight"]
    picked = list(range(0, OPTIONS["recall_frames"], OPTIONS["recall_stride"]))
    assert picked == [0, 4, 8]
    memory_k, memory_v = pooled(engine, 0)
    for layer in range(layers):
        q = torch.cat([q for l, q in queries if l == layer], dim=1).mean(dim=1)[0]  # [H, D]
        for i in range(tpf):
            scores = torch.stack([(k[layer, 0, f, i] * q).sum(-1).mean() for f in picked])  # mean over heads
            w = scores.softmax(0)
            blend_k = sum(w[n] * k[layer, 0, f, i] for n, f in enumerate(picked))
            blend_v = sum(w[n] * v[layer, 0, f, i] for n, f in enumerate(picked))
            torch.testing.assert_close(memory_k[layer, 0, i], w0 * k[layer, 0, 0, i] + (1 - w0) * blend_k)
            torch.testing.assert_close(memory_v[layer, 0, i], w0 * v[layer, 0, 0, i] + (1 - w0) * blend_v)


def test_a_single_recorded_frame_is_its_own_memory():
    k, v = torch.randn(2, 1, 1, 4, 2, 6), torch.randn(2, 1, 1, 4, 2, 6)
    memory_k, memory_v = compress_scene(k, v, torch.randn(2, 1, 2, 6), base_weight=0.9)
    torch.testing.assert_close(memory_k, k[:, :, 0])
    torch.testing.assert_close(memory_v, v[:, :, 0])


def test_observing_queries_leaves_the_forward_unchanged(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0])
    generate(engine, 1)
    model, x = engine.transformer, torch.randn(1, 4, CHUNK, LATENT, LATENT)
    rotary = engine._begin([3, 4, 5])
    seen = []
    plain = model.forward_chunk(x, 500.0, prompts[0], engine.cache, rotary)
    observed = model.forward_chunk(x, 500.0, prompts[0], engine.cache, rotary,
                                   query_observer=lambda layer, q: seen.append(layer))
    assert torch.equal(plain, observed) and seen == list(range(len(model.blocks)))


# ---- recall ------------------------------------------------------------------------------------------------------
def test_shared_words_are_dropped_before_matching():
    query = "the knight walks slowly by the river"
    earlier = ["the knight walks in fog", "the knight eats slowly", "the knight sleeps slowly"]
    # "slowly" is in 3 of the 4 prompts (>= 70%): it says nothing about which scene is meant, "walks" does
    similarities = prompt_similarities(query, earlier, shared_fraction=0.7)
    assert similarities[0] > 0 and similarities[1] == similarities[2] == 0.0
    # dropping only the words every prompt has ("the", "knight") lets "slowly" pull the match elsewhere
    loose = prompt_similarities(query, earlier, shared_fraction=1.0)
    assert max(range(3), key=loose.__getitem__) == 1
    # a word in 2 of 4 prompts (< 70%) still identifies a scene
    assert prompt_similarities("a cafe scene", ["a cafe", "a beach", "a forest"], 0.7)[0] > 0


def test_recall_picks_the_best_matching_scene_and_places_exactly_its_memory(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 2)
    for scene, mode in ((1, "cut"), (2, "smooth")):
        switch(engine, prompts, scene, mode)
        generate(engine, 2)
    switch(engine, prompts, 3, "recall")
    assert [e.scene for e in engine.switch_strategy.pool.entries] == [0, 1, 2]
    assert regions(engine) == {"memory": [0], "carry": [], "anchors": [], "compressed": [], "window": []}  # scene 0 starts at frame 0
    k, v = engine.cache.region_kv("memory")
    memory_k, memory_v = pooled(engine, 0)
    assert OPTIONS["modes"]["recall"]["first_chunk_weight"] == 1.0
    assert torch.equal(k, memory_k) and torch.equal(v, memory_v)
    generate(engine, 1)
    key_frames, _, keys, queries = engine.positions.calls[-1]
    # the best match is not perfect: a jump between 0 and 6, by its share of the pool's mismatch
    jump = keys[-1] - CHUNK
    similarities = prompt_similarities(TEXTS[3], TEXTS[:3], 0.7)
    gaps = [1 - s for s in similarities]
    low, high = OPTIONS["modes"]["recall"]["jump"]
    assert jump == round(low + gaps[0] / sum(gaps) * (high - low)) and 0 < jump <= high
    assert keys == [0] + [1 + jump + i for i in range(CHUNK)] and queries == keys[1:]


def test_recall_by_scene_id_overrides_the_match_and_bad_ids_change_nothing(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 2)
    switch(engine, prompts, 1, "cut")  # scene 1 starts at frame 6
    generate(engine, 2)
    before = regions(engine)
    with pytest.raises(ValueError, match=r"scene 7 cannot be recalled: the pool holds scenes \[0, 1\]"):
        switch(engine, prompts, 3, "recall", recall_scene=7)
    assert regions(engine) == before and len(engine.switch_strategy.pool.entries) == 1
    with pytest.raises(ValueError, match="only be given to a recall"):
        switch(engine, prompts, 3, "cut", recall_scene=0)
    switch(engine, prompts, 3, "recall", recall_scene=1)  # the prompt matches scene 0, the id says scene 1
    assert regions(engine)["memory"] == [6]
    assert torch.equal(engine.cache.region_kv("memory")[0], pooled(engine, 1)[0])


# ---- truncation at a switch --------------------------------------------------------------------------------------
def test_cut_keeps_only_the_previous_scene_memory_weighted_for_one_chunk(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 2)
    switch(engine, prompts, 1, "smooth")  # scene 1 starts at frame 6
    generate(engine, 3)
    switch(engine, prompts, 2, "cut")
    assert regions(engine) == {"memory": [6], "carry": [], "anchors": [], "compressed": [], "window": []}
    weight = OPTIONS["modes"]["cut"]["first_chunk_weight"]
    memory_k, memory_v = pooled(engine, 1)
    k, v = engine.cache.region_kv("memory")
    assert torch.equal(k, memory_k * weight) and torch.equal(v, memory_v * weight)
    generate(engine, 1)
    _, query, keys, queries = engine.positions.calls[-1]
    top = PRESET.rope_range - 1
    # the 45-frame jump is clamped so the chunk ends at the top of the trained range
    assert query == [15, 16, 17] and keys == [0, top - 2, top - 1, top] and queries == keys[1:]
    assert regions(engine)["memory"] == []  # evicted after one chunk
    generate(engine, 1)
    assert engine.positions.calls[-1][2] == list(range(6))  # scene-local time: the scene's frames 0..5


def test_smooth_keeps_the_run_start_memory_and_the_two_most_recent_frames_as_computed(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 2)
    switch(engine, prompts, 1, "cut")  # a run of smooth switches starts at scene 1 (frame 6)
    generate(engine, 2)
    switch(engine, prompts, 2, "smooth")
    generate(engine, 3)  # frames 12..20
    tpf = engine.cache.tokens_per_frame
    assert regions(engine)["window"][-2:] == [19, 20]
    recent_k = engine.cache.k[:, :, [s * tpf + i for s in engine.cache.slots.slots_of("window")[-2:]
                                     for i in range(tpf)]].clone()
    switch(engine, prompts, 3, "smooth")
    assert regions(engine) == {"memory": [6], "carry": [19, 20], "anchors": [], "compressed": [], "window": []}
    assert torch.equal(engine.cache.region_kv("carry")[0], recent_k)
    assert torch.equal(engine.cache.region_kv("memory")[0], pooled(engine, 1)[0])  # scene 1, not scene 2
    generate(engine, 1)
    _, _, keys, queries = engine.positions.calls[-1]
    assert keys == [0, 1, 2, 3, 4, 5] and queries == [3, 4, 5]  # memory, carried frames, the new chunk


# ---- difference-aware decay --------------------------------------------------------------------------------------
def hand_rates(new_k, memory_k, low, high):
    """Per layer and token: d = 1 - cos over all heads' channels (batch mean), min-max normalised."""
    layers, _, tokens = new_k.shape[:3]
    rates = torch.empty(layers, tokens)
    for layer in range(layers):
        d = torch.stack([1 - F.cosine_similarity(new_k[layer, 0, i].flatten(), memory_k[layer, 0, i].flatten(), 0)
                         for i in range(tokens)])
        d = (d - d.min()) / (d.max() - d.min())
        rates[layer] = high - (high - low) * d
    return rates


@pytest.mark.parametrize("mode", ["smooth", "recall"])
def test_decay_multiplies_by_the_running_product_and_evicts_after_n_chunks(tiny_wan_config, mode):
    engine, prompts = make_engine(tiny_wan_config)
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 3)
    switch(engine, prompts, 3, mode)
    settings = OPTIONS["modes"][mode]
    kept = ["memory", "carry"] if settings["carry"] else ["memory"]
    k0 = {r: engine.cache.region_kv(r) for r in kept}
    generate(engine, 1)
    tpf = engine.cache.tokens_per_frame
    first_frame_k = engine.cache.region_kv("window")[0][:, :, :tpf]
    rates = hand_rates(first_frame_k, k0["memory"][0], *settings["decay"])
    product = torch.ones_like(rates)
    for chunk in range(1, settings["evict_after"]):
        product = product * rates
        for region in kept:
            frames = len(engine.cache.frames_in(region))
            factor = product.repeat(1, frames)[:, None, :, None, None]
            k, v = engine.cache.region_kv(region)
            torch.testing.assert_close(k, k0[region][0] * factor, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(v, k0[region][1] * factor, rtol=1e-6, atol=1e-7)
        generate(engine, 1)
    assert all(engine.cache.frames_in(r) == [] for r in kept)  # dropped after evict_after chunks
    assert engine.switch_strategy.decay is None


# ---- long streams ------------------------------------------------------------------------------------------------
def test_indices_stay_in_range_and_memory_stays_constant_over_many_switches(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config)
    strategy = engine.switch_strategy
    pointers = (engine.cache.k.data_ptr(), strategy.pool.k.data_ptr(), strategy.recorder.k.data_ptr())
    nbytes = engine.cache.nbytes + strategy.nbytes
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 1)
    modes = ["smooth", "cut", "recall"]
    for chunk in range(1, 150):
        if chunk % 4 == 0:
            scene = (chunk // 4) % len(TEXTS)
            switch(engine, prompts, scene, modes[(chunk // 4) % 3])
        generate(engine, 1)
    assert strategy.scene == 37 and len(strategy.pool.entries) == 37  # under the pool's capacity of 64
    top = PRESET.rope_range - 1
    for key_frames, _, keys, queries in engine.positions.calls:
        assert all(0 <= p <= top for p in keys + queries), (key_frames, keys)
        assert len(set(keys)) == len(keys)
    assert (engine.cache.k.data_ptr(), strategy.pool.k.data_ptr(), strategy.recorder.k.data_ptr()) == pointers
    assert engine.cache.nbytes + strategy.nbytes == nbytes
    assert strategy.pool.k.device == torch.device(OPTIONS["pool_device"])


def test_the_pool_keeps_only_its_capacity_of_scenes(tiny_wan_config, tmp_path):
    path = tmp_path / "small-pool.yaml"
    path.write_text(PRESET_FILE.read_text().replace("pool_size: 64", "pool_size: 2"))
    engine, prompts = make_engine(tiny_wan_config, str(path))
    engine.set_prompt(prompts[0], prompt=TEXTS[0])
    generate(engine, 1)
    for scene in (1, 2, 3):
        switch(engine, prompts, scene, "cut")
        generate(engine, 1)
    assert [e.scene for e in engine.switch_strategy.pool.entries] == [1, 2]
    with pytest.raises(ValueError, match=r"scene 0 cannot be recalled"):
        switch(engine, prompts, 0, "recall", recall_scene=0)


# ---- preset files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old, new, message",
    [
        ("pool_size: 64", "pool_size: 0", "pool_size must be a positive integer"),
        ("base_weight: 0.9", "base_weight: 1.5", r"base_weight must be in \[0, 1\]"),
        ("decay: [0.80, 0.95]", "decay: [0.95, 0.80]", r"modes.smooth.decay must be a rate in \(0, 1\]"),
        ("decay: 1.0", "decay: 0", r"modes.cut.decay must be a rate"),
        ("evict_after: 1}", "evict_after: 0}", "modes.cut.evict_after must be a positive integer"),
        ("jump: 45", "jump: [0, 45]", "modes.cut.jump: a \\[min, max\\] jump .* needs memory: match"),
        ("memory: previous", "memory: latest", r"modes.cut.memory must be one of"),
        ("first_chunk_weight: 0.8", "first_chunk_weight: 2", "modes.cut.first_chunk_weight must be in"),
        ("carry: 2", "carry: 3", "region 'carry' must be an external region of at least 3"),
        ("frames: 6, evict: true", "frames: 22, evict: true", r"streamed regions .* hold 22 frames, more than rope_range 21"),
        ("max_reuse: 8", "max_reuse: 8\n  reuse: 2", "memory_options: .*unexpected keyword argument 'reuse'"),
        ("positions: scene-relative", "positions: absolute", "needs positions: scene-relative"),
        ("rope_range: 21\n", "", "scene-relative positions need rope_range"),
        ("frames: 1, external: true", "frames: 1, external: yes please", "external must be true or false"),
        ("  cut: {", "  hard-cut: {", r"modes must map exactly \['smooth', 'cut', 'recall'\]"),
        ("pool_device: cpu", "pool_device: toaster", "pool_device must name a torch device"),
        ("evict_after: 1}", "evict_after: 1, fade: 2}", r"modes.cut: missing keys \[\], unknown keys \['fade'\]"),
    ],
)
def test_bad_echo_preset_files_fail_naming_the_file_and_the_key(tmp_path, old, new, message):
    text = PRESET_FILE.read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=message) as err:
        load_preset(str(path))
    assert str(path) in str(err.value)


def test_echo_forcing_loads_as_a_configuration_of_the_engine():
    assert [(r.name, r.frames, r.evict, r.external) for r in PRESET.regions] == [
        ("memory", 1, False, True), ("carry", 2, False, True), ("anchors", 12, False, True),
        ("compressed", 3, False, True), ("window", 6, True, False),
    ]
    assert (PRESET.positions, PRESET.rope_range, PRESET.switch) == ("scene-relative", 21, "scene-memory")
    modes = OPTIONS["modes"]
    assert (modes["smooth"]["decay"], modes["smooth"]["evict_after"]) == ([0.80, 0.95], 5)
    assert (modes["cut"]["decay"], modes["cut"]["first_chunk_weight"], modes["cut"]["evict_after"]) == (1.0, 0.8, 1)
    assert (modes["recall"]["decay"], modes["recall"]["jump"]) == ([0.55, 0.90], [0, 6])


# ---- through the pipeline ----------------------------------------------------------------------------------------
def test_schedule_transitions_and_live_recalls_reach_the_scene_memory():
    from streamgen.schedule import Schedule, Segment
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(height=16, width=16)
    pipe.set_progress_bar_config(disable=True)
    schedule = Schedule((Segment(TEXTS[0], 6, "latent_frames"),
                         Segment(TEXTS[1], None, "latent_frames", transition="cut")), seed=0)
    stream = pipe.stream(schedule=schedule, cache="echo-forcing")
    for _ in range(3):
        next(stream)
    strategy = stream.engine.switch_strategy
    assert strategy.scene == 1 and strategy.pool.find(0).prompt == TEXTS[0]  # the schedule's cut reached it
    with pytest.raises(ValueError, match="scene= names the scene a recall"):
        stream.switch(TEXTS[2], mode="cut", scene=0)
    stream.switch(TEXTS[3], mode="recall", scene=1)
    next(stream)
    assert strategy.scene == 2 and stream.engine.recall_scene == 1
    assert stream.engine.cache.frames_in("memory") == [6]  # scene 1's memory frame, as asked
    assert [e.scene for e in strategy.pool.entries] == [0, 1]
