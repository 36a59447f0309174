"""The built-in switch strategies: what happens to the KV cache when the prompt changes.

The engine has already replaced the cross-attention K/V with the new prompt's when a strategy runs; a strategy only
rewrites self-attention memory. Regions to keep that a layout lacks are simply not there to keep, so these fit any
layout unless they say otherwise. The contract is :class:`~streamgen.cache.mechanisms.SwitchStrategy`; Anchor
Forcing's anchor-guided re-cache is :mod:`streamgen.cache.anchor_switch`, Echo-Forcing's scene memory
:mod:`streamgen.cache.scene_switch`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mechanisms import SwitchStrategy, register_switch_strategy
from .values import is_int


@register_switch_strategy("none")
@dataclass(frozen=True)
class KeepCache(SwitchStrategy):
    """``none``: keep every cached frame as it was computed under the old prompt."""

    reads_keys = False

    def on_switch(self, ctx, transition):
        return None


# How a re-cache treats the kept regions (the sink), and how it runs its re-encode pass.
SINK_POLICIES = ("keep", "keep-once-full", "reencode")
REENCODE_PASSES = ("chunked", "joint")


@register_switch_strategy("recache")
@dataclass(frozen=True)
class Recache(SwitchStrategy):
    """``recache`` (LongLive KV re-cache): re-encode cached frames from their clean latents at the context timestep
    under the NEW prompt, so the memory the next chunk reads agrees with the prompt it is asked to follow.

    ``sink`` decides what happens to ``keep_regions`` (the attention sink):

    - ``keep``: kept as computed; every other cached frame is re-encoded;
    - ``keep-once-full``: as ``keep`` once the stream has outgrown the regions it fills; until then (no frame has
      been evicted) the sink's frames are re-encoded with the rest (LongLive's ``global_sink: true``: its re-encoded
      span then starts at frame 0, which its cache only protects when the span starts later);
    - ``reencode``: the cache is emptied and the most recent frames, as many as the filled regions hold, are
      re-encoded into it as new frames, so the sink becomes the first of them, under the new prompt (LongLive's
      ``global_sink: false``).

    ``reencode`` is ``chunked`` (oldest chunk first, each attending to the kept regions and the chunks before it) or
    ``joint`` (one pass in which the re-encoded frames attend to each other in both directions, as LongLive's
    KV-cache attention does: it builds a block-causal mask for the pass but never applies it).
    """

    reads_keys = False  # it only clears regions and re-encodes frames through ctx.reencode

    keep_regions: tuple[str, ...] = ("sink",)
    sink: str = "keep"
    reencode: str = "chunked"

    def __post_init__(self):
        for option, value, allowed in (("sink", self.sink, SINK_POLICIES),
                                       ("reencode", self.reencode, REENCODE_PASSES)):
            if value not in allowed:
                raise ValueError(f"switch option {option} must be one of {', '.join(allowed)}, got {value!r}")

    def on_switch(self, ctx, transition):
        cache = ctx.cache
        capacity = sum(r.frames for r in cache.layout.regions if r.promoted_from is None and not r.external)
        fresh = self.sink == "reencode" or (self.sink == "keep-once-full" and ctx.frame <= capacity)
        kept = () if fresh else self.keep_regions
        dropped = [r.name for r in cache.layout.regions if r.name not in kept]
        if self.sink == "reencode":
            frames = list(range(max(ctx.frame - capacity, 0), ctx.frame))
        else:
            # A promoted region (junction) holds frames that left the window long ago, whose clean latents may be
            # gone from the history: it is dropped, not re-encoded.
            rebuilt = [name for name in dropped if cache.layout.region(name).promoted_from is None]
            frames = sorted(f for name in rebuilt for f in cache.frames_in(name))
        for name in dropped:
            cache.clear(name)
        ctx.reencode(frames, joint=self.reencode == "joint")


@register_switch_strategy("flush")
@dataclass(frozen=True)
class Flush(SwitchStrategy):
    """``flush`` (Infinity-RoPE KV flush): keep ``keep_regions`` (the sink) and the ``keep_recent`` most recent
    frames of the rest exactly as computed (no re-encode), drop everything else. With block-relative positions the
    kept frames are simply re-indexed next to the new prompt's first chunk, which continues motion from them while
    the replaced cross-attention carries the new prompt.
    """

    reads_keys = False  # it only drops frames; the kept ones stay where they are

    keep_regions: tuple[str, ...] = ("sink",)
    keep_recent: int = 2

    def __post_init__(self):
        if not is_int(self.keep_recent) or self.keep_recent < 0:
            raise ValueError(f"switch option keep_recent must be a non-negative integer, got {self.keep_recent!r}")

    def on_switch(self, ctx, transition):
        cache = ctx.cache
        flushed = [r.name for r in cache.layout.regions if r.name not in self.keep_regions]
        frames = sorted(f for name in flushed for f in cache.frames_in(name))
        recent = frames[-self.keep_recent :] if self.keep_recent else []
        for name in flushed:
            cache.retain(name, recent)
