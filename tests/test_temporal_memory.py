"""Echo-Forcing's hierarchical temporal memory in the echo-forcing preset: the scene fills its 21 slots in order,
then sees ping-pong rolled anchors + a compressed history picked by the drift-gated phase score + the window."""

import math

import pytest
import torch

from streamgen.cache.presets import PRESET_DIR
from streamgen.cache.temporal_memory import anchor_frames_at, ping_pong_block

from recording_engine import generate as generate_chunks, make_engine, regions

OPTIONS = {"history_frames": 21, "exclude_recent": 3, "offsets": (1, 2, 4, 8, 16), "max_reuse": 8, "drift": 3.0}


def generate(engine, chunks, prompts):
    if engine.prompt_kv is None:
        engine.set_prompt(prompts[0], prompt="a scene")
    generate_chunks(engine, chunks)


def test_ping_pong_walks_forward_then_back_through_the_first_twelve_frames():
    blocks = [tuple(ping_pong_block(chunk, 3, 12, 21)) for chunk in range(4, 15)]
    assert blocks == [(3, 4, 5), (6, 7, 8), (9, 10, 11),  # the fill phase's own frames: chunks 4..6
                      (11, 10, 9), (8, 7, 6), (5, 4, 3), (2, 1, 0), (0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)]
    assert anchor_frames_at(7, 3, 12, 21) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9]
    assert anchor_frames_at(10, 3, 12, 21) == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert anchor_frames_at(15, 3, 12, 21) == anchor_frames_at(7, 3, 12, 21)  # a period of 8 chunks


def test_a_scene_fills_its_slots_in_order_then_rolls_anchors_from_its_recorded_first_frames(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "echo-forcing")
    generate(engine, 7, prompts)  # frames 0..20: exactly the scene budget
    for n, (key_frames, query, keys, queries) in enumerate(engine.positions.calls):
        assert len(keys) == 3 * n + 3 and queries == query  # dense scene-local slots, in time order
        assert all(p == f for (f, _), p in zip(key_frames, keys))
    by_region = {}
    for f, r in engine.positions.calls[-1][0]:  # what chunk 6 (frames 18..20) attended
        by_region.setdefault(r, []).append(f)
    by_region["window"].sort()  # a ring: slot order wraps, positions go by frame (checked above)
    assert by_region == {"anchors": list(range(12)), "compressed": [12, 13, 14], "window": list(range(15, 21))}
    recorder = engine.switch_strategy.recorder
    generate(engine, 1, prompts)  # frames 21..23: the first rolled chunk
    key_frames, query, keys, queries = engine.positions.calls[-1]
    rolled = [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9]
    placed = {(f, r): p for (f, r), p in zip(key_frames, keys) if r != "anchors"}
    assert [f for f, r in key_frames if r == "anchors"] == rolled and sorted(keys) == list(range(21))
    assert [p for (f, r), p in zip(key_frames, keys) if r == "anchors"] == list(range(12))  # in rolled order
    assert {f: p for (f, r), p in placed.items() if r == "window"} == {f: f - 3 for f in range(18, 24)}
    assert queries == [18, 19, 20]
    after = anchor_frames_at(8, 3, 12, 21)  # the cache already holds the next chunk's anchors
    assert engine.cache.frames_in("anchors") == after
    anchors_k, anchors_v = engine.cache.region_kv("anchors")
    assert torch.equal(anchors_k, recorder.k[:, :, after].flatten(2, 3))
    assert torch.equal(anchors_v, recorder.v[:, :, after].flatten(2, 3))


def hand_selection(ring_k, ring_frames, frame, q_first, mean, mean_abs, inv_t, tokens_per_frame, uses, compressed):
    """The compressed tokens of one layer (batch 0) by the published formula, in float64 loops over pairs."""
    heads, dim = ring_k.shape[-2:]
    pairs = dim // 2
    c = lambda x: torch.complex(x[..., 0::2].double(), x[..., 1::2].double())  # noqa: E731
    qr = c(q_first).mean(dim=0)  # [H, P]
    a, b = torch.view_as_real(qr).flatten(), torch.view_as_real(mean.cdouble()).flatten()
    gate = math.exp(-OPTIONS["drift"] * (1 - float(a @ b / (a.norm() * b.norm()))))
    scores = []
    for j in range(ring_k.shape[0]):
        f = ring_frames[j // tokens_per_frame]
        if f < 0 or uses[j] >= OPTIONS["max_reuse"]:
            scores.append(-math.inf)
            continue
        if f >= frame - OPTIONS["exclude_recent"]:
            scores.append(-1e30)
            continue
        k = c(ring_k[j])
        total = 0.0
        for o in OPTIONS["offsets"]:
            for h in range(heads):
                for m in range(pairs):
                    w = float(inv_t[m]) if m < len(inv_t) else 0.0
                    q = complex(mean[h, m])
                    kk = complex(k[h, m])
                    total += abs(q) * abs(kk) * math.cos((frame - f + o) * w + math.atan2(
                        (q * kk.conjugate()).imag, (q * kk.conjugate()).real))
                    total += gate * (float(mean_abs[h, m]) - abs(q)) * abs(kk)
        scores.append(total / (heads * len(OPTIONS["offsets"])))
    order = sorted(range(len(scores)), key=lambda j: -scores[j])[:compressed]
    return sorted(order, key=lambda j: (ring_frames[j // tokens_per_frame], j % tokens_per_frame))


def test_the_compressed_history_is_the_top_tokens_of_the_hand_computed_phase_score(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "echo-forcing")
    memory = engine.memory
    generate(engine, 7, prompts)
    snapshot = {}
    select = memory.observe_first_query

    def spy(layer, q):
        if layer == 1:
            snapshot.update(ring=memory.ring_k[1, 0].clone(), frames=list(memory.ring_frame), q=q[0].clone(),
                            uses=memory.uses[1, 0].clone(), frame=engine.frame,
                            mean=(memory.query_sum[1, 0] / memory.query_tokens[1]).clone(),
                            mean_abs=(memory.query_abs_sum[1, 0] / memory.query_tokens[1]).clone())
        select(layer, q)
        if layer == 1:
            snapshot["compressed"] = engine.cache.region_kv("compressed")[0][1, 0].clone()

    memory.observe_first_query = spy
    generate(engine, 1, prompts)
    tpf = engine.cache.tokens_per_frame
    assert memory.query_tokens[1] == 21 * tpf  # the scene's first 21 frames' clean queries
    picked = hand_selection(snapshot["ring"], snapshot["frames"], snapshot["frame"], snapshot["q"], snapshot["mean"],
                            snapshot["mean_abs"], memory.temporal_frequencies, tpf, snapshot["uses"], 3 * tpf)
    assert {snapshot["frames"][j // tpf] for j in picked} <= set(range(0, 18))  # never the window's frames
    torch.testing.assert_close(snapshot["compressed"], snapshot["ring"][picked])


def test_no_token_is_compressed_more_often_than_max_reuse(tiny_wan_config, tmp_path):
    path = tmp_path / "reuse-once.yaml"
    path.write_text((PRESET_DIR / "echo-forcing.yaml").read_text().replace("max_reuse: 8", "max_reuse: 1"))
    engine, prompts = make_engine(tiny_wan_config, str(path))
    memory = engine.memory
    generate(engine, 7, prompts)
    chosen = []
    select = memory.observe_first_query

    def spy(layer, q):
        select(layer, q)
        if layer == 0:
            chosen.append(engine.cache.region_kv("compressed")[0][0, 0].clone())  # layer 0, batch 0

    memory.observe_first_query = spy
    seen = set()
    for _ in range(5):
        generate(engine, 1, prompts)
        assert int(memory.uses.max()) <= 1
        picked = {tuple(t.flatten().tolist()) for t in chosen[-1]}
        assert len(picked) == len(chosen[-1])
        assert not picked & seen  # a token picked once is never picked again
        seen |= picked


def test_a_switch_restarts_the_hierarchy_and_long_streams_stay_in_range_with_constant_memory(tiny_wan_config):
    engine, prompts = make_engine(tiny_wan_config, "echo-forcing")
    memory = engine.memory
    nbytes = engine.cache.nbytes + engine.switch_strategy.nbytes + memory.nbytes
    generate(engine, 9, prompts)
    engine.set_prompt(prompts[1], "cut", prompt="another scene")
    assert regions(engine)["anchors"] == [] and regions(engine)["compressed"] == []
    assert memory.ring_frame == [-1] * OPTIONS["history_frames"]
    for chunk in range(40):
        if chunk % 12 == 11:
            engine.set_prompt(prompts[chunk % 3], ("smooth", "recall")[chunk % 2], prompt=f"scene {chunk}")
        generate(engine, 1, prompts)
    for key_frames, _, keys, queries in engine.positions.calls:
        assert all(0 <= p <= 20 for p in keys + queries) and len(key_frames) <= 21
    assert engine.cache.nbytes + engine.switch_strategy.nbytes + memory.nbytes == nbytes


def test_bad_temporal_memory_layouts_fail_clearly(tmp_path):
    from streamgen.cache import load_preset

    text = (PRESET_DIR / "echo-forcing.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("recall_frames: 12", "recall_frames: 9"))
    engine_error = pytest.raises(ValueError, match="the scene recorder keeps 9 frames, the anchors need 12")
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(height=16, width=16)
    with engine_error:
        pipe.stream("a red circle", num_frames=9, cache=load_preset(str(path)))
