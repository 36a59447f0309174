"""Position policies: the temporal RoPE index of every cached key frame and of the query frames.

Keys are cached un-roped, so a policy is free to give a cached frame a different temporal index at every chunk.
Only the spatial axes keep their fixed grid positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class PositionPolicy(Protocol):
    def __call__(
        self, key_frames: list[tuple[int, str]], query_frames: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(key positions [N_key_frames], query positions [N_query_frames]) as float64 tensors."""
        ...


@dataclass(frozen=True)
class AbsolutePositions:
    """Self-Forcing / LongLive: a frame's temporal index is its index in the stream (grows without bound)."""

    def __call__(self, key_frames, query_frames):
        keys = torch.tensor([f for f, _ in key_frames], dtype=torch.float64)
        return keys, torch.tensor(query_frames, dtype=torch.float64)


@dataclass(frozen=True)
class BlockRelativePositions:
    """Infinity-RoPE style: the query chunk always sits at ``query_origin``; other frames keep their distance to
    it, while frames of ``pinned_regions`` (the attention sink) keep their own stream indices. Indices stay
    bounded however long the stream, and a uniform shift leaves every query-key distance inside the window
    unchanged.
    """

    query_origin: int
    pinned_regions: tuple[str, ...] = ("sink",)

    def __call__(self, key_frames, query_frames):
        shift = self.query_origin - query_frames[0]
        keys = [f if region in self.pinned_regions else f + shift for f, region in key_frames]
        queries = [f + shift for f in query_frames]
        return torch.tensor(keys, dtype=torch.float64), torch.tensor(queries, dtype=torch.float64)
