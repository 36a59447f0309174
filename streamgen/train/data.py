"""Training batches: ShapeWorld clips or a folder of captioned videos, and a cached, frozen caption encoder."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..world.data import ShapeWorldClips, collate_clips
from .config import TrainConfig


class FolderVideoClips(Dataset):
    """Captioned real videos: every ``name.mp4`` in ``path`` with a ``name.txt`` caption beside it.

    Item ``i`` is the first ``num_frames`` frames of video ``i`` (sorted by name; looped when shorter), resized to
    cover ``height`` x ``width`` and centre-cropped (:func:`streamgen.conditioning.fit_frames`), as a one-segment
    sample with the keys the trainer reads from ShapeWorld samples (``video`` [3, F, H, W] in [-1, 1],
    ``captions``, ``segment_starts``, ``frame_segment``)."""

    def __init__(self, path: str | Path, num_frames: int, height: int, width: int):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a folder")
        self.items = [(p, p.with_suffix(".txt")) for p in sorted(self.path.glob("*.mp4")) if p.with_suffix(".txt").is_file()]
        if not self.items:
            raise ValueError(f"{self.path}: no name.mp4 with a name.txt caption")
        self.num_frames, self.height, self.width = num_frames, height, width

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..conditioning import fit_frames
        from ..video_io import read_video

        video_path, caption_path = self.items[index]
        frames = read_video(video_path)
        if len(frames) < self.num_frames:
            frames = np.concatenate([frames] * (self.num_frames // len(frames) + 1))
        frames = fit_frames(np.ascontiguousarray(frames[: self.num_frames]), self.height, self.width)
        video = torch.from_numpy(frames.transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0)
        return {
            "frames": torch.from_numpy(frames),
            "video": video,
            "captions": [caption_path.read_text().strip()],
            "segment_starts": [0],
            "frame_segment": torch.zeros(self.num_frames, dtype=torch.int64),
        }


class ClipSource:
    """Batch ``step`` of process ``rank`` of ``world``: the step's batch is clips ``step * B .. step * B + B - 1``
    (``B``: the config's ``batch_size``, one optimizer step's over all processes), and rank r takes its r-th share of
    ``B / world`` clips. Deterministic, so a resumed run sees exactly the batches an uninterrupted one would, on any
    number of processes (no loader state to checkpoint); the shares of all ranks, in rank order, are exactly the
    batch one process takes."""

    def __init__(self, config: TrainConfig, split: str = "train"):
        d = config.data
        self.batch_size = config.batch_size
        self.overfit = d.overfit
        if d.kind == "shapeworld":
            self.dataset = ShapeWorldClips(
                2**62, d.clip_frames, split=split, seed=config.seed, switch_probs=d.switch_probs, modes=d.modes,
                switch_multiple=config.chunk_frames, min_segment=max(d.min_segment, config.chunk_frames),
                resolution=d.height,
            )
            if d.height != d.width:
                raise ValueError("ShapeWorld clips are square: data.height must equal data.width")
        else:
            self.dataset = FolderVideoClips(d.path, d.clip_frames, d.height, d.width)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
        share = shard_size(self.batch_size, world)
        first = (0 if self.overfit else step * self.batch_size) + rank * share
        n = len(self.dataset)
        return collate_clips([self.dataset[(first + i) % n] for i in range(share)])


def shard_size(batch_size: int, world: int) -> int:
    """One process's share of a step's ``batch_size`` clips over ``world`` processes."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} (one optimizer step's, over all processes) must be a multiple of "
                         f"the {world} processes")
    return batch_size // world


class CaptionEncoder:
    """Frozen text encoder with an LRU cache: caption -> token states [L, text_dim], zero past the caption's end
    (exactly :meth:`StreamingVideoPipeline.encode_prompt`)."""

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int, cache_size: int = 8192):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval().requires_grad_(False)
        self.max_len, self.cache_size = max_sequence_length, cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.max_len, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = self.text_encoder.device
        mask = tokens.attention_mask.to(device)
        states = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        return (states * mask[..., None]).float().cpu()

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """[B, L, text_dim] float32 on the CPU."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if missing:
            for caption, states in zip(missing, self._encode(missing)):
                self.cache[caption] = states
        for c in captions:
            self.cache.move_to_end(c)
        out = torch.stack([self.cache[c] for c in captions])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out
