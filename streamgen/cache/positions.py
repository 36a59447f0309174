"""The built-in position policies: the temporal RoPE index of every cached key frame and of the query frames.

Keys are cached un-roped, so a policy is free to give a cached frame a different temporal index at every chunk.
Only the spatial axes keep their fixed grid positions. The contract: :class:`streamgen.cache.mechanisms.PositionPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mechanisms import JUMP, PositionPolicy, register_position_policy
from .regions import RegionLayout


@register_position_policy("absolute")
@dataclass(frozen=True)
class AbsolutePositions(PositionPolicy):
    """Self-Forcing / LongLive: a frame's temporal index is its index in the stream (grows without bound)."""

    stable_key_positions = True  # a frame keeps its index, so its key is rotated once, when written

    def __call__(self, key_frames, query_frames):
        keys = torch.tensor([f for f, _ in key_frames], dtype=torch.float64)
        return keys, torch.tensor(query_frames, dtype=torch.float64)


@register_position_policy("block-relative")
@dataclass(frozen=True)
class BlockRelativePositions(PositionPolicy):
    """Infinity-RoPE style: the query chunk always sits at ``query_origin``; other frames keep their distance to
    it, while frames of ``pinned_regions`` (the attention sink) keep their own stream indices. Indices stay
    bounded however long the stream, and a uniform shift leaves every query-key distance inside the window
    unchanged.

    ``position_options``: ``query_origin`` (default: the end of the cache's position range, its slots less a chunk)
    and ``pinned_regions`` (default: the sink).
    """

    query_origin: int
    pinned_regions: tuple[str, ...] = ("sink",)

    @classmethod
    def from_layout(cls, layout, *, chunk_frames, rope_range, query_origin: int | None = None,
                    pinned_regions=("sink",)) -> "BlockRelativePositions":
        origin = query_origin if query_origin is not None else layout.num_slots - chunk_frames
        return cls(query_origin=origin, pinned_regions=tuple(pinned_regions))

    def __call__(self, key_frames, query_frames):
        shift = self.query_origin - query_frames[0]
        keys = [f if region in self.pinned_regions else f + shift for f, region in key_frames]
        queries = [f + shift for f in query_frames]
        return torch.tensor(keys, dtype=torch.float64), torch.tensor(queries, dtype=torch.float64)


@register_position_policy("tri-region")
@dataclass(frozen=True)
class TriRegionPositions(PositionPolicy):
    """Anchor Forcing's tri-region RoPE: one temporal origin per region, so every index stays inside the backbone's
    trained range [0, rope_range - 1] however long the stream.

    Origins are derived from the region sizes and the range: the sink starts at 0; the local window (every frame
    of the evicting region, queries included) keeps its stream distances and ends at the query, whose last frame
    sits at its stream index until that would leave the range, then at ``rope_range - 1`` (so the first
    ``rope_range`` frames see exactly the absolute positions they were trained with); the junction is centred in
    the gap between the sink and the full window's span [rope_range - window, rope_range). For Wan (21 positions)
    with sink 3 / junction 3 / window 9: sink 0..2, junction 6..8, local keys 12..20, queries 18..20.

    A junction can already be held while the stream is still inside its first ``rope_range`` frames (a switch right
    after the sink); the local window is then moved up just past the junction's span, so regions never overlap.
    Queries take the positions of their own keys (the chunk being denoised is in the cache), which keeps a chunk
    that lands in the sink consistent with itself.
    """

    needs_rope_range = True

    rope_range: int
    sink: str
    junction: str
    junction_origin: int
    junction_frames: int

    @classmethod
    def from_layout(cls, layout: RegionLayout, *, chunk_frames: int, rope_range: int) -> "TriRegionPositions":
        """Roles from the layout: the junction is the promoted region, the window the region it is promoted from,
        the sink the remaining one."""
        promoted = [r for r in layout.regions if r.promoted_from is not None]
        if len(layout.regions) != 3 or len(promoted) != 1:
            raise ValueError(
                "tri-region positions need exactly three regions: a sink, a junction (promoted_from: <window>) and "
                f"the evicting window; got {[(r.name, r.frames) for r in layout.regions]}"
            )
        junction = promoted[0]
        window = layout.region(junction.promoted_from)
        (sink,) = [r for r in layout.regions if r.name not in (junction.name, window.name)]
        needed = sink.frames + junction.frames + window.frames
        if needed > rope_range:
            raise ValueError(
                f"tri-region positions: {sink.name} {sink.frames} + {junction.name} {junction.frames} + "
                f"{window.name} {window.frames} = {needed} frames do not fit rope_range {rope_range}"
            )
        gap_start, gap_end = sink.frames, rope_range - window.frames
        origin = gap_start + (gap_end - gap_start - junction.frames) // 2
        return cls(rope_range, sink.name, junction.name, origin, junction.frames)

    def __call__(self, key_frames, query_frames):
        sink = sorted(f for f, region in key_frames if region == self.sink)
        junction = sorted(f for f, region in key_frames if region == self.junction)
        local = [f for f, region in key_frames if region not in (self.sink, self.junction)]
        shift = min(0, self.rope_range - 1 - max(query_frames))
        if junction and local:
            shift = max(shift, self.junction_origin + self.junction_frames - min(local))

        def position(frame: int, region: str) -> int:
            if region == self.sink:
                return sink.index(frame)
            if region == self.junction:
                return self.junction_origin + junction.index(frame)
            return frame + shift

        keys = [position(f, region) for f, region in key_frames]
        of_frame = {f: p for (f, _), p in zip(key_frames, keys)}
        queries = [of_frame[f] for f in query_frames]
        return torch.tensor(keys, dtype=torch.float64), torch.tensor(queries, dtype=torch.float64)


@register_position_policy("scene-relative")
class SceneRelativePositions(PositionPolicy):
    """Echo-Forcing's slot-relative RoPE with a scene-local restart: every attended frame's temporal index is its
    rank in the cache, regions in layout order; inside a region, frames the stream fills go by stream index and
    frames a strategy wrote (external regions: the scene memory, carried frames, the rolled anchors of the
    hierarchical temporal memory) in the order they were written, repeats included. Frames the cache dropped leave
    no gap, so at a switch, when the cache is truncated to the memory (and carried frames), the new scene's first
    chunk sits right after them: scene-local time restarts. With at most ``rope_range`` frames attended every index
    stays inside the backbone's trained range however long the stream.

    A switch strategy may ask for a RoPE jump (:meth:`jump_next_chunk`): the next chunk's frames (queries and their
    own keys) move that many positions further from everything cached before them, clamped so the chunk still ends
    inside the range. Queries take the positions of their own keys (the chunk being denoised is in the cache).

    Stateful (the pending jump), so every stream builds its own.
    """

    capabilities = frozenset({JUMP})
    needs_rope_range = True

    def __init__(self, rope_range: int, region_order: tuple[str, ...], written_regions: tuple[str, ...]):
        self.rope_range = rope_range
        self.region_order = region_order
        self.written_regions = written_regions
        self._jump = 0

    @classmethod
    def from_layout(cls, layout: RegionLayout, *, chunk_frames: int, rope_range: int) -> "SceneRelativePositions":
        streamed = [(r.name, r.frames) for r in layout.regions if not r.external]
        held = sum(frames for _, frames in streamed)
        if held > rope_range:
            raise ValueError(
                f"scene-relative positions: the streamed regions {streamed} hold {held} frames, more than rope_range "
                f"{rope_range}"
            )
        return cls(rope_range, tuple(r.name for r in layout.regions),
                   tuple(r.name for r in layout.regions if r.external))

    def jump_next_chunk(self, frames: int) -> None:
        self._jump = frames

    def __call__(self, key_frames, query_frames):
        if len(key_frames) > self.rope_range:
            raise RuntimeError(
                f"scene-relative positions: {len(key_frames)} frames are attended, more than rope_range "
                f"{self.rope_range}; the preset's regions and eviction must keep the attended frames within it"
            )

        def order(i: int):
            frame, region = key_frames[i]
            return self.region_order.index(region), i if region in self.written_regions else frame

        rank = [0] * len(key_frames)
        for r, i in enumerate(sorted(range(len(key_frames)), key=order)):
            rank[i] = r
        jump = max(0, min(self._jump, self.rope_range - len(key_frames)))
        self._jump = 0
        chunk = set(query_frames)
        keys = [rank[i] + (jump if region not in self.written_regions and frame in chunk else 0)
                for i, (frame, region) in enumerate(key_frames)]
        # A query's own key: the streamed copy if there is one, else the written one (a carried frame re-encoded in
        # place at a switch).
        of_frame = {f: p for (f, region), p in zip(key_frames, keys) if region in self.written_regions}
        of_frame.update({f: p for (f, region), p in zip(key_frames, keys) if region not in self.written_regions})
        queries = [of_frame[f] for f in query_frames]
        return torch.tensor(keys, dtype=torch.float64), torch.tensor(queries, dtype=torch.float64)
