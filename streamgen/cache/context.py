"""What a cache mechanism sees of the stream it serves: the :class:`StreamContext` the engine hands every hook.

Mechanisms never see the engine. Everything they may read or call is listed here, so ``streamgen.cache`` does not
import the engine and a mechanism's reach is written down in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kv_cache import KVCache
from .mechanisms import BetweenSwitchMemory, PositionPolicy, SwitchStrategy


@dataclass
class StreamContext:
    """One stream's cache and mechanisms, and how far it has played. The engine owns and updates it; mechanisms
    read it and call ``reencode`` and the cache's methods, and never assign to it.

    ``reencode(frames, in_place=False, joint=False)`` rewrites the K/V of already generated latent ``frames`` from
    their clean latents under the current prompt, chunk by chunk (``joint``: in one pass, the frames attending to each
    other both ways): placed into the cache as new frames are, or (``in_place``) in the slots of whatever region
    holds them now, while they attend to everything held.
    """

    cache: KVCache
    positions: PositionPolicy  # JUMP-capable if a mechanism declared it needs that (checked at load)
    switch: SwitchStrategy  # a memory may use what it declared it needs from it (e.g. the scene's first frames)
    memory: BetweenSwitchMemory
    chunk_frames: int  # latent frames per chunk (the pipeline's)
    rope_range: int | None  # temporal positions the backbone was trained on, where the preset states it
    temporal_frequencies: torch.Tensor  # the backbone's temporal RoPE frequencies [P_t], for scores of roped attention
    reencode: Callable[..., None]
    frame: int = 0  # latent frames generated so far: the next chunk's first frame
    prompt: str | None = None  # the current prompt's text, when the caller gives it
    recall_scene: int | None = None  # scene id the latest switch asked to recall (scenes count from 0), if any
    # The latent frame the latest switch was asked for, before it moved to a chunk boundary, when the caller gives it.
    switch_index: int | None = None

    @property
    def mechanisms(self) -> tuple[SwitchStrategy, BetweenSwitchMemory]:
        """The mechanisms with hooks, in the order the engine calls them."""
        return self.switch, self.memory
