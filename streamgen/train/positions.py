"""RoPE re-alignment: train a model under the temporal positions a cache preset gives it at inference.

A model trained on clips at positions 0..F-1 meets other indices when it streams: ``rolling`` reaches position 2,000
after 2,000 frames, ``anchor-forcing``'s tri-region RoPE puts the window at the end of a 21-position range with a gap
after the sink. :class:`StreamPositions` gives a training clip the positions its frames would have if they were the
frames the cache attends to at the end of a simulated stream: the clip's first chunk plays the pinned regions (the
sink; a preset without one: the clip is just the most recent frames), its later chunks the most recent frames, and the preset's own position policy numbers them for the clip's
last chunk. The stream length is drawn per step, so a short fine-tune sees every stage of a long stream.

Used by the trainer (``positions:`` in the training config): the student sees these positions while its target is
the data's velocity, or (``target: teacher``) the prediction of the model as it was resumed at the standard
positions 0..F-1 it was trained on: the student learns to produce under the new positions what it already produces
under the old ones (Anchor Forcing's RoPE re-alignment).
"""

from __future__ import annotations

import torch

from ..cache.presets import AUTO, CachePreset, load_preset
from ..cache.regions import SlotTable

__all__ = ["StreamPositions"]


class StreamPositions:
    """``positions(stream_frames)`` -> temporal positions [clip_frames] of a clip played as the last attended frames
    of a ``stream_frames``-long stream under ``preset`` (a preset with ``rope_range: auto`` takes ``rope_range``)."""

    def __init__(self, preset: str | CachePreset, clip_frames: int, chunk_frames: int, rope_range: int | None = None):
        preset = load_preset(preset)
        if rope_range is not None:
            preset = preset.with_rope_range(rope_range)
        where = f"training positions: cache preset {preset.name!r}"
        if preset.rope_range == AUTO:
            raise ValueError(f"{where} has rope_range: auto, so positions.rope_range must give the range")
        if preset.needs_stream_length or not preset.bounded:
            raise ValueError(f"{where} never evicts; re-alignment simulates a long stream through a rolling cache")
        layout = preset.layout()
        # A stream without switches: regions a switch strategy writes (junction, scene memory) stay empty.
        streamed = [r for r in layout.regions if not (r.external or r.promoted_from)]
        attended = sum(r.frames for r in streamed)
        if attended < clip_frames:
            raise ValueError(f"{where} attends to {attended} frames between switches, fewer than a training clip "
                             f"({clip_frames})")
        self.pinned = any(not r.evict for r in streamed)
        self.preset, self.layout = preset, layout
        self.clip_frames, self.chunk_frames = clip_frames, chunk_frames
        self.rope_range = preset.rope_range

    def __call__(self, stream_frames: int) -> torch.Tensor:
        if stream_frames < self.clip_frames or stream_frames % self.chunk_frames:
            raise ValueError(f"stream_frames must be a multiple of {self.chunk_frames} and at least the clip's "
                             f"{self.clip_frames} frames, got {stream_frames}")
        table = SlotTable(self.layout)
        for frame in range(stream_frames):
            table.place(frame)
        keys = [(table.frame_of_slot[s], table.region_of_slot[s]) for s in table.occupied()]
        query = list(range(stream_frames - self.chunk_frames, stream_frames))
        key_positions, _ = self.preset.position_policy(self.layout, self.chunk_frames)(keys, query)
        by_frame = sorted(zip((f for f, _ in keys), key_positions.tolist()))
        # With a pinned region (a sink) the clip's first chunk plays it and the rest the most recent frames;
        # otherwise the clip is simply the most recent frames.
        recent = by_frame[-(self.clip_frames - self.chunk_frames):] if self.pinned else by_frame[-self.clip_frames:]
        chosen = (by_frame[: self.chunk_frames] if self.pinned else []) + recent
        return torch.tensor([p for _, p in chosen], dtype=torch.float64)
