import pytest
import torch

from streamgen.cache import (
    AbsolutePositions, BlockRelativePositions, CacheFullError, CachePreset, KVCache, Region, RegionLayout,
    load_preset,
)

ROLLING = RegionLayout((Region("sink", 3), Region("window", 9, evict=True)))


def make_cache(layout, tpf=2):
    return KVCache(layout, num_layers=2, batch_size=1, tokens_per_frame=tpf, num_heads=1, head_dim=4)


def test_rolling_window_pins_the_sink_and_overwrites_the_oldest_window_frames():
    cache = make_cache(ROLLING)
    for start in range(0, 21, 3):
        cache.begin_chunk(list(range(start, start + 3)))
    assert cache.frames_in("sink") == [0, 1, 2]
    assert cache.frames_in("window") == [12, 13, 14, 15, 16, 17, 18, 19, 20]
    # The window includes the chunk being denoised: the next chunk evicts 12..14 right away.
    cache.begin_chunk([21, 22, 23])
    assert sorted(f for f, _ in cache.attention_frames()) == [0, 1, 2] + list(range(15, 24))


def test_writes_land_in_the_chunk_slots_and_reads_return_every_attended_frame():
    cache = make_cache(ROLLING, tpf=2)
    cache.begin_chunk([0, 1, 2])
    k = torch.arange(6.0).reshape(1, 6, 1, 1).expand(1, 6, 1, 4)
    cache.write(0, k, -k)
    read_k, read_v = cache.read(0)
    assert torch.equal(read_k, k) and torch.equal(read_v, -k)
    cache.begin_chunk([3, 4, 5])
    cache.write(0, k + 100, k)
    read_k, _ = cache.read(0)
    assert read_k.shape[1] == 12
    assert torch.equal(read_k[0, :6, 0, 0], torch.arange(6.0))
    assert torch.equal(read_k[0, 6:, 0, 0], torch.arange(6.0) + 100)


def test_500_chunks_keep_the_same_tensors_and_bytes():
    cache = make_cache(ROLLING)
    pointers, nbytes = (cache.k.data_ptr(), cache.v.data_ptr()), cache.nbytes
    for chunk in range(500):
        frames = list(range(3 * chunk, 3 * chunk + 3))
        cache.begin_chunk(frames)
        cache.write(1, torch.full((1, 6, 1, 4), float(chunk)), torch.zeros(1, 6, 1, 4))
        assert len(cache.attention_frames()) <= 12
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pointers and cache.nbytes == nbytes
    assert sorted(f for f, _ in cache.attention_frames()) == [0, 1, 2] + list(range(1491, 1500))


def test_a_cache_that_cannot_evict_says_so_when_full():
    cache = make_cache(RegionLayout((Region("history", 6),)))
    cache.begin_chunk([0, 1, 2])
    cache.begin_chunk([3, 4, 5])
    with pytest.raises(CacheFullError, match="no region may evict"):
        cache.begin_chunk([6, 7, 8])


def test_a_preset_that_cannot_evict_refuses_a_longer_stream_before_generating(tmp_path):
    path = tmp_path / "fixed.yaml"
    path.write_text("name: fixed\nregions:\n  - {name: history, frames: 21}\npositions: absolute\nswitch: none\n")
    fixed = load_preset(str(path))
    assert fixed.stream_layout(21).num_slots == 21
    with pytest.raises(ValueError, match="'fixed' holds 21 latent frames and never evicts, so it cannot play 24"):
        fixed.stream_layout(24)
    with pytest.raises(ValueError, match="cannot play an open-ended stream"):
        fixed.stream_layout(None)
    self_forcing = load_preset("self-forcing")  # the release's rolling path: any length
    assert self_forcing.stream_layout(2000).num_slots == 21 and self_forcing.stream_layout(None).region("history").evict


def test_clearing_a_region_frees_its_slots_for_replay():
    cache = make_cache(ROLLING)
    for start in range(0, 15, 3):
        cache.begin_chunk(list(range(start, start + 3)))
    cache.clear("window")
    assert cache.frames_in("window") == [] and cache.frames_in("sink") == [0, 1, 2]
    cache.begin_chunk([9, 10, 11])
    assert cache.frames_in("window") == [9, 10, 11]


def test_absolute_positions_are_stream_indices():
    keys, queries = AbsolutePositions()([(0, "sink"), (500, "window")], [500, 501])
    assert keys.tolist() == [0.0, 500.0] and queries.tolist() == [500.0, 501.0]


def test_block_relative_positions_stay_bounded_and_keep_distances():
    policy = BlockRelativePositions(query_origin=9)
    key_frames = [(0, "sink"), (1, "sink"), (2, "sink")] + [(f, "window") for f in range(991, 1000)]
    keys, queries = policy(key_frames, [997, 998, 999])
    assert keys.tolist() == [0, 1, 2] + list(range(3, 12))
    assert queries.tolist() == [9, 10, 11]
    assert (queries[-1] - keys[-1]).item() == 999 - 999


def test_presets_load_from_configs():
    rolling = load_preset("rolling")
    assert [(r.name, r.frames, r.evict) for r in rolling.regions] == [("sink", 3, False), ("window", 9, True)]
    assert rolling.switch == "recache" and rolling.bounded
    glob = load_preset("global")
    assert glob.layout(stream_frames=21).num_slots == 21 and not glob.bounded
    with pytest.raises(ValueError, match="needs the number of frames"):
        glob.layout()
    relative = load_preset("block-relative")
    assert relative.position_policy(relative.layout(), chunk_frames=3).query_origin == 9


def test_bad_presets_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="unknown cache preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ValueError, match="unknown switch"):
        CachePreset.from_dict({"name": "x", "regions": [{"name": "a", "frames": 3}], "switch": "teleport"})
    with pytest.raises(ValueError, match="unknown keys"):
        CachePreset.from_dict({"name": "x", "regions": [{"name": "a", "frames": 3}], "windw": 3})
