"""Named regions of a KV cache and the slot bookkeeping that assigns latent frames to them.

A cache holds a fixed number of frame *slots*; each slot stores the K/V of one latent frame (tokens_per_frame
tokens). A :class:`RegionLayout` cuts the slots into named, contiguous regions. A region either fills once and
keeps what it holds (``evict=False``: the attention sink of LongLive, or the whole history of Self-Forcing's global
cache) or is a ring that overwrites its oldest frame (``evict=True``: LongLive's local window).

New frames go to the first region, in layout order, that has a free slot; when every region is full they
overwrite the oldest frame of the first evicting region. The chunk being denoised is placed like any other frame,
so a rolling window of W frames *includes* the current chunk, as in Self-Forcing and LongLive.

A *promoted* region (``promoted_from=SOURCE``: Anchor Forcing's junction) never takes new frames. It receives the
frames a switch strategy marked for it (:meth:`SlotTable.mark`) at the moment the evicting SOURCE region drops them,
so a frame is never held twice and nothing is kept before it has left the window. A newly marked set replaces what
the region held when its first frame arrives. Or a strategy fills it at once with a copy of frames the stream still
holds (:meth:`SlotTable.fill`; Anchor Forcing's release keeps its junction as such a copy): those frames are then
held twice, once in each region.

An *external* region (``external=True``: Echo-Forcing's scene memory, carried frames, and its hierarchical memory's
anchors and compressed history) never takes new frames either: a cache mechanism (switch strategy or between-switch
memory) puts frames into it directly (:meth:`SlotTable.hold`) and writes their K/V itself.

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
    promoted_from: str | None = None  # filled only with marked frames evicted from this region
    external: bool = False  # filled only by a cache mechanism (SlotTable.hold)

    def __post_init__(self):
        if self.frames <= 0:
            raise ValueError(f"cache region {self.name!r}: frames must be positive, got {self.frames}")
        if self.external and (self.evict or self.promoted_from is not None):
            raise ValueError(
                f"cache region {self.name!r}: an external region is written only by a cache mechanism, it cannot "
                "evict or be promoted into"
            )
        if self.promoted_from is not None and self.evict:
            raise ValueError(
                f"cache region {self.name!r}: a promoted region is replaced whole by each marked set, it cannot evict"
            )


@dataclass(frozen=True)
class RegionLayout:
    regions: tuple[Region, ...]

    def __post_init__(self):
        names = [r.name for r in self.regions]
        if not names:
            raise ValueError("a cache layout needs at least one region")
        if len(set(names)) != len(names):
            raise ValueError(f"cache region names must be unique, got {names}")
        for region in self.regions:
            if region.promoted_from is None:
                continue
            if region.promoted_from not in names or not self.region(region.promoted_from).evict:
                raise ValueError(
                    f"cache region {region.name!r}: promoted_from must name an evicting region of "
                    f"{[r.name for r in self.regions if r.evict]}, got {region.promoted_from!r}"
                )

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
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(f"no cache region named {name!r}; regions are {[r.name for r in self.regions]}")

    def promoted_into(self, source: str) -> list[Region]:
        """Regions that receive marked frames evicted from ``source``."""
        return [r for r in self.regions if r.promoted_from == source]


class SlotTable:
    """Which latent frame each slot holds, per region in age order. -1 marks an empty slot."""

    def __init__(self, layout: RegionLayout):
        self.layout = layout
        self.frame_of_slot = [-1] * layout.num_slots
        self.region_of_slot = [r.name for r in layout.regions for _ in range(r.frames)]
        self._free = {r.name: deque(range(layout.offset(r.name), layout.offset(r.name) + r.frames)) for r in layout.regions}
        self._age = {r.name: deque() for r in layout.regions}  # occupied slots, oldest first
        self._marked = {r.name: set() for r in layout.regions if r.promoted_from}  # frames still to promote
        self._replace = {r.name: False for r in layout.regions if r.promoted_from}  # next promotion starts a new set

    def place(self, frame: int) -> tuple[int, tuple[int, int] | None]:
        """Assign ``frame`` a slot, evicting the oldest frame of the first evicting region if all are full.

        Returns (slot, promotion): promotion is (from_slot, to_slot) when the evicted frame was marked for a
        promoted region, whose K/V the caller must copy before overwriting ``slot``.
        """
        for region in self.layout.regions:
            if region.promoted_from is None and not region.external and self._free[region.name]:
                return self._occupy(region.name, self._free[region.name].popleft(), frame), None
        for region in self.layout.regions:
            if region.evict:
                slot = self._age[region.name].popleft()
                promotion = self._promote(region.name, slot)
                return self._occupy(region.name, slot, frame), promotion
        raise CacheFullError(
            f"KV cache is full ({self.layout.num_slots} latent frames in regions "
            f"{[(r.name, r.frames) for r in self.layout.regions]}) and no region may evict; "
            "use a larger budget or a rolling preset"
        )

    def mark(self, region: str, frames: list[int]) -> None:
        """Promote ``frames`` into ``region`` when its source region evicts them, replacing what it holds then."""
        spec = self.layout.region(region)
        if spec.promoted_from is None:
            raise ValueError(f"cache region {region!r} has no promoted_from region; frames cannot be marked for it")
        if len(frames) > spec.frames:
            raise ValueError(f"cache region {region!r} holds {spec.frames} frames, {len(frames)} were marked for it")
        self._marked[region] = set(frames)
        self._replace[region] = True

    def hold(self, region: str, frames: list[int]) -> list[int]:
        """Make the external ``region`` hold exactly ``frames`` (replacing what it held); returns their slots, whose
        K/V the caller writes."""
        spec = self.layout.region(region)
        if not spec.external:
            raise ValueError(f"cache region {region!r} is not external; only external regions can be held")
        if len(frames) > spec.frames:
            raise ValueError(f"cache region {region!r} holds {spec.frames} frames, {len(frames)} were given")
        self.clear(region)
        return [self._occupy(region, self._free[region].popleft(), frame) for frame in frames]

    def fill(self, region: str, frames: list[int]) -> list[int]:
        """Make the promoted ``region`` hold exactly ``frames`` now (replacing what it held, cancelling any marked
        set); returns their slots, whose K/V the caller copies from where the stream holds the frames."""
        spec = self.layout.region(region)
        if spec.promoted_from is None:
            raise ValueError(f"cache region {region!r} has no promoted_from region; it cannot be filled with copies")
        if len(frames) > spec.frames:
            raise ValueError(f"cache region {region!r} holds {spec.frames} frames, {len(frames)} were given")
        self.clear(region)
        self._marked[region] = set()
        return [self._occupy(region, self._free[region].popleft(), frame) for frame in frames]

    def _promote(self, source: str, slot: int) -> tuple[int, int] | None:
        frame = self.frame_of_slot[slot]
        for target in self.layout.promoted_into(source):
            if frame in self._marked[target.name]:
                if self._replace[target.name]:
                    self.clear(target.name)
                    self._replace[target.name] = False
                self._marked[target.name].discard(frame)
                return slot, self._occupy(target.name, self._free[target.name].popleft(), frame)
        return None

    def _occupy(self, region: str, slot: int, frame: int) -> int:
        self.frame_of_slot[slot] = frame
        self._age[region].append(slot)
        return slot

    def retain(self, region: str, frames: list[int]) -> None:
        """Forget every frame of ``region`` except ``frames``, which keep their slots (and so their K/V)."""
        kept = deque(s for s in self._age[region] if self.frame_of_slot[s] in frames)
        start = self.layout.offset(region)
        self._free[region] = deque(
            s for s in range(start, start + self.layout.region(region).frames) if s not in kept
        )
        for slot in self._free[region]:
            self.frame_of_slot[slot] = -1
        self._age[region] = kept

    def clear(self, region: str) -> None:
        """Forget every frame held by ``region``."""
        self.retain(region, [])

    def occupied(self) -> list[int]:
        """Occupied slots in slot order."""
        return [s for s, f in enumerate(self.frame_of_slot) if f >= 0]

    def slots_of(self, region: str) -> list[int]:
        """Occupied slots of ``region``, oldest first."""
        return list(self._age[region])
