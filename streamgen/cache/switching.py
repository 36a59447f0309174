"""Switch strategies: what happens to the KV cache when the prompt changes.

The engine has already replaced the cross-attention K/V with the new prompt's when a strategy runs; a strategy only
rewrites self-attention memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .regions import RegionLayout
from .scene_switch import SceneMemorySwitch, is_int

if TYPE_CHECKING:
    from ..engine import StreamEngine


class SwitchStrategy(Protocol):
    """A strategy that must follow the stream between switches (Echo-Forcing's scene memory) may also define
    ``attach(engine)`` (once, when the engine is built), ``observe_query(layer, q)`` (the clean pass's queries) and
    ``after_chunk(engine)`` (after every generated chunk); the engine calls whichever exist."""

    def __call__(self, engine: "StreamEngine", transition: str) -> None: ...

    def validate(self, layout: RegionLayout) -> None:
        """Raise ValueError if the strategy cannot work on ``layout`` (checked when a preset is loaded)."""
        ...


class _FitsAnyLayout:
    def validate(self, layout: RegionLayout) -> None:
        """Any layout works (regions to keep that a layout lacks are simply not there to keep)."""
        return None


@dataclass(frozen=True)
class KeepCache(_FitsAnyLayout):
    """``none``: keep every cached frame as it was computed under the old prompt."""

    def __call__(self, engine, transition):
        return None


@dataclass(frozen=True)
class Recache(_FitsAnyLayout):
    """``recache`` (LongLive KV re-cache): keep ``keep_regions`` (the attention sink), and re-encode every other
    cached frame from its clean latents at the context timestep under the NEW prompt, oldest first, chunk by
    chunk, so the memory the next chunk reads agrees with the prompt it is asked to follow.
    """

    keep_regions: tuple[str, ...] = ("sink",)

    def __call__(self, engine, transition):
        cache = engine.cache
        dropped = [r.name for r in cache.layout.regions if r.name not in self.keep_regions]
        # A promoted region (junction) holds frames that left the window long ago, whose clean latents may be gone
        # from the history: it is dropped, not re-encoded.
        rebuilt = [name for name in dropped if cache.layout.region(name).promoted_from is None]
        frames = sorted(f for name in rebuilt for f in cache.frames_in(name))
        for name in dropped:
            cache.clear(name)
        engine.reencode(frames)


@dataclass(frozen=True)
class AnchorRecache:
    """``anchor-recache`` (Anchor Forcing): a re-cache warm-started from anchored context. The sink and the
    ``anchor_region`` (the junction: the first chunk after the previous switch) are kept, so the window's frames,
    re-encoded under the NEW prompt oldest first, attend to sink + previous junction + the frames re-encoded so far.
    The first ``anchor_region``-sized run of frames generated after the switch is then marked as the new junction:
    it moves there when it leaves the window (until then the previous junction stays in place).
    """

    keep_regions: tuple[str, ...] = ("sink",)
    anchor_region: str = "junction"

    def __call__(self, engine, transition):
        Recache(keep_regions=(*self.keep_regions, self.anchor_region))(engine, transition)
        size = engine.cache.layout.region(self.anchor_region).frames
        engine.cache.mark(self.anchor_region, list(range(engine.frame, engine.frame + size)))

    def validate(self, layout):
        names = [r.name for r in layout.regions]
        if self.anchor_region not in names or layout.region(self.anchor_region).promoted_from is None:
            raise ValueError(
                f"anchor_region {self.anchor_region!r} must be a region promoted from the window "
                f"({{name: {self.anchor_region}, frames: N, promoted_from: <window>}}); regions are {names}"
            )


@dataclass(frozen=True)
class Flush(_FitsAnyLayout):
    """``flush`` (Infinity-RoPE KV flush): keep ``keep_regions`` (the sink) and the ``keep_recent`` most recent
    frames of the rest exactly as computed (no re-encode), drop everything else. With block-relative positions the
    kept frames are simply re-indexed next to the new prompt's first chunk, which continues motion from them while
    the replaced cross-attention carries the new prompt.
    """

    keep_regions: tuple[str, ...] = ("sink",)
    keep_recent: int = 2

    def __post_init__(self):
        if not is_int(self.keep_recent) or self.keep_recent < 0:
            raise ValueError(f"switch option keep_recent must be a non-negative integer, got {self.keep_recent!r}")

    def __call__(self, engine, transition):
        cache = engine.cache
        flushed = [r.name for r in cache.layout.regions if r.name not in self.keep_regions]
        frames = sorted(f for name in flushed for f in cache.frames_in(name))
        recent = frames[-self.keep_recent :] if self.keep_recent else []
        for name in flushed:
            cache.retain(name, recent)


STRATEGIES = {
    "none": KeepCache, "recache": Recache, "anchor-recache": AnchorRecache, "flush": Flush,
    "scene-memory": SceneMemorySwitch,
}
