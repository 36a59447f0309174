"""Training data: deterministic clips with switches, captions and labels, from the right split only."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import streamgen.world.data as data_module
from streamgen.world import (
    ATTRIBUTE_NAMES, ShapeWorldClips, ShapeWorldStream, collate_clips, read_frames, sample_segments, split_of,
)
from streamgen.world.data import measure_throughput


def test_a_sample_has_frames_video_captions_and_labels():
    sample = ShapeWorldClips(4, 24, seed=3)[1]
    assert sample["frames"].shape == (24, 32, 32, 3) and sample["frames"].dtype == torch.uint8
    assert sample["video"].shape == (3, 24, 32, 32) and sample["video"].dtype == torch.float32
    assert sample["video"].min() >= -1 and sample["video"].max() <= 1
    assert torch.allclose(sample["video"].permute(1, 2, 3, 0), sample["frames"].float() / 127.5 - 1)
    assert sample["labels"].shape == (24, len(ATTRIBUTE_NAMES))
    assert len(sample["captions"]) == len(sample["segment_starts"]) == len(sample["transitions"])
    assert sample["segment_starts"][0] == 0 and sample["transitions"][0] == "cut"
    assert all(s % 3 == 0 for s in sample["segment_starts"])  # switches on chunk boundaries (3 frames)
    seg = sample["frame_segment"].numpy()
    assert list(np.flatnonzero(np.diff(seg)) + 1) == sample["segment_starts"][1:]


def test_datasets_are_deterministic_and_map_and_iterable_agree():
    a, b = ShapeWorldClips(5, 12, seed=1), ShapeWorldClips(5, 12, seed=1)
    assert all(torch.equal(a[i]["frames"], b[i]["frames"]) and a[i]["captions"] == b[i]["captions"]
               for i in range(5))
    assert not torch.equal(a[0]["frames"], ShapeWorldClips(5, 12, seed=2)[0]["frames"])
    stream = list(ShapeWorldStream(12, length=5, seed=1))
    assert [s["captions"] for s in stream] == [a[i]["captions"] for i in range(5)]
    with pytest.raises(IndexError):
        a[5]


def test_the_iterable_dataset_splits_indices_across_workers(monkeypatch):
    class Info:
        id, num_workers = 1, 3

    monkeypatch.setattr(data_module, "get_worker_info", lambda: Info)
    ours = [s["scene_seeds"] for s in ShapeWorldStream(6, length=8, seed=4)]
    clips = ShapeWorldClips(8, 6, seed=4)
    assert ours == [clips[i]["scene_seeds"] for i in (1, 4, 7)]


def test_every_layout_and_transition_appears_and_scenes_come_from_the_split():
    modes, counts = set(), set()
    for i in range(300):
        segments = sample_segments(i, 48, split="train", switch_multiple=3)
        counts.add(len(segments))
        modes.update(s.transition for s in segments[1:])
        assert all(split_of(s.scene.seed) == "train" for s in segments)
        assert all(s.frames >= 6 for s in segments) and sum(s.frames for s in segments) == 48
        for j, s in enumerate(segments[1:], 1):
            assert s.scene.attributes != segments[j - 1].scene.attributes
            if s.transition == "recall":
                assert s.scene is segments[j - 2].scene
    assert counts == {1, 2, 3} and modes == {"cut", "smooth", "recall"}
    held = ShapeWorldClips(20, 12, split="heldout", seed=0)
    assert all(split_of(seed) == "heldout" for i in range(20) for seed in held[i]["scene_seeds"])


def test_labels_agree_with_the_oracle():
    clips = ShapeWorldClips(20, 24, seed=9, modes=("cut", "recall"))
    for i in range(20):
        sample = clips[i]
        r = read_frames(sample["frames"].numpy())
        labels = sample["labels"].numpy()
        assert np.array_equal(r.background, labels[:, 0]) and np.array_equal(r.color, labels[:, 1])
        assert np.array_equal(r.shape, labels[:, 2])


def test_a_dataloader_batches_clips(tmp_path):
    loader = DataLoader(ShapeWorldClips(6, 9, seed=0), batch_size=3, collate_fn=collate_clips)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 9, 32, 32) and batch["labels"].shape == (3, 9, 5)
    assert len(batch["captions"]) == 3 and isinstance(batch["captions"][0], list)


def test_throughput_is_far_above_what_training_needs():
    result = measure_throughput(seconds=0.5, num_frames=48)
    assert result["clips"] >= 5 and result["clips_per_s"] > 10  # ~150-200 clips/s measured on 2 busy cores
