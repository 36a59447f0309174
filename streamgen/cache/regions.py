"""Named regions of a KV cache and the slot bookkeeping that assigns latent frames to them.

A cache holds a fixed number of frame *slots*; each slot stores the K/V of one latent frame (tokens_per_frame
tokens). A :class:`RegionLayout` cuts the slots into named, contiguous regions. A region either fills once and
keeps what it holds (``evict=False``: the attention sink of LongLive, or the whole history of Self-Forcing's global
cache) or is a ring that overwrites its oldest frame (``evict=True``: LongLive's local window).

New frames go to the first region, in layout order, that has a free slot; when every region is full they
overwrite the oldest frame of the first evicting region. The chunk being denoised is placed like any other frame,
so a rolling window of W frames *includes* the current chunk, as in Self-Forcing and LongLive.

Everything here is Python bookkeeping over a handful of slots; the tensors live in :mod:`streamgen.cache.kv_cache`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


class CacheFullError(RuntimeError):
    """A frame was added to a cache whose regions are all full and none may evict."""


@dataclass(frozen=True)
class Region:
    name: str
    frames: int
    evict: bool = False

    def __post_init__(self):
        if self.frames <= 0:
            raise ValueError(f"cache region {self.name!r}: frames must be positive, got {self.frames}")


@dataclass(frozen=True)
class RegionLayout:
    regions: tuple[Region, ...]

    def __post_init__(self):
        names = [r.name for r in self.regions]
        if not names:
            raise ValueError("a cache layout needs at least one region")
        if len(set(names)) != len(names):
            raise ValueError(f"cache region names must be unique, got {names}")

    @property
    def num_slots(self) -> int:
        return sum(r.frames for r in self.regions)

    def offset(self, name: str) -> int:
        start = 0
        for region in self.regions:
            if region.name == name:
                return start
            start += region.frames
        raise KeyError(f"no cache region named {name!r}; regions are {[r.name for r in self.regions]}")

    def region(self, name: str) -> Region:
        return self.regions[[r.name for r in self.regions].index(name)]


class SlotTable:
    """Which latent frame each slot holds, per region in age order. -1 marks an empty slot."""

    def __init__(self, layout: RegionLayout):
        self.layout = layout
        self.frame_of_slot = [-1] * layout.num_slots
        self.region_of_slot = [r.name for r in layout.regions for _ in range(r.frames)]
        self._free = {r.name: deque(range(layout.offset(r.name), layout.offset(r.name) + r.frames)) for r in layout.regions}
        self._age = {r.name: deque() for r in layout.regions}  # occupied slots, oldest first

    def place(self, frame: int) -> int:
        """Assign ``frame`` a slot (evicting the oldest frame of the first evicting region if all are full)."""
        for region in self.layout.regions:
            if self._free[region.name]:
                return self._occupy(region.name, self._free[region.name].popleft(), frame)
        for region in self.layout.regions:
            if region.evict:
                return self._occupy(region.name, self._age[region.name].popleft(), frame)
        raise CacheFullError(
            f"KV cache is full ({self.layout.num_slots} latent frames in regions "
            f"{[(r.name, r.frames) for r in self.layout.regions]}) and no region may evict; "
            "use a larger budget or a rolling preset"
        )

    def _occupy(self, region: str, slot: int, frame: int) -> int:
        self.frame_of_slot[slot] = frame
        self._age[region].append(slot)
        return slot

    def clear(self, region: str) -> None:
        """Forget every frame held by ``region``."""
        for slot in self._age[region]:
            self.frame_of_slot[slot] = -1
        start = self.layout.offset(region)
        self._free[region] = deque(range(start, start + self.layout.region(region).frames))
        self._age[region].clear()

    def occupied(self) -> list[int]:
        """Occupied slots in slot order."""
        return [s for s, f in enumerate(self.frame_of_slot) if f >= 0]

    def slots_of(self, region: str) -> list[int]:
        """Occupied slots of ``region``, oldest first."""
        return list(self._age[region])
