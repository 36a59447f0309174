"""``anchor-recache``: Anchor Forcing's anchor-guided re-cache and its junction (arXiv 2603.13405).

At a switch the window is re-encoded under the new prompt against the kept anchors (the sink and the junction), and
the first chunk of the new prompt becomes the next junction. Two readings of when that junction exists:

- ``junction: promote`` (the paper's reading): the first chunk is marked and moves into the junction when the window
  evicts it; the previous junction serves until then.
- ``junction: copy`` (the release, vivoCameraResearch/Anchor-Forcing at 25bdfba): the junction is a copy of the first
  chunk's clean K/V, taken as soon as the chunk is generated; the previous junction serves the switch's own re-cache
  and is dropped after it. A junction is attended only by passes that start more than the window's frames after the
  index the switch was asked for (the index before it moved to a chunk boundary), and the re-cache pass counts as
  starting at the first frame of its span, the cache's capacity back. So a switch asked for at 120 first attends its
  junction at 132, not when it leaves the window at 129; one asked for at 40 (played at 42) at 51.

``refresh_chunks`` (with ``junction: copy``) plays the release's single-prompt pipeline: until the first switch,
every ``refresh_chunks``-th chunk (from chunk 0) is copied into the junction, which is attended as if a switch had
been asked for at ``refresh_index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mechanisms import SwitchStrategy, register_switch_strategy
from .switching import Recache
from .values import is_int

JUNCTION_TIMINGS = ("promote", "copy")


@register_switch_strategy("anchor-recache")
@dataclass
class AnchorRecache(SwitchStrategy):
    """``anchor-recache`` (Anchor Forcing): a re-cache warm-started from anchored context. The sink and the
    ``anchor_region`` (the junction) are kept, so the window's frames, re-encoded under the NEW prompt, attend to
    sink + junction + the frames re-encoded with them. ``sink`` and ``reencode`` are :class:`Recache`'s options
    (the release: ``keep-once-full``, ``joint``); ``junction``, ``refresh_chunks`` and ``refresh_index`` are
    described in :mod:`streamgen.cache.anchor_switch`.
    """

    keep_regions: tuple[str, ...] = ("sink",)
    anchor_region: str = "junction"
    sink: str = "keep"
    reencode: str = "chunked"
    junction: str = "promote"
    refresh_chunks: int = 0
    refresh_index: int = 0
    # Per stream: the frame a junction copy is attended after, and the chunk to copy once generated.
    _attended_after: int | None = field(default=None, init=False, repr=False)
    _copy_at: int | None = field(default=None, init=False, repr=False)
    _switched: bool = field(default=False, init=False, repr=False)

    def __post_init__(self):
        self._recache = Recache(keep_regions=(*self.keep_regions, self.anchor_region), sink=self.sink,
                                reencode=self.reencode)
        if self.junction not in JUNCTION_TIMINGS:
            raise ValueError(f"switch option junction must be one of {', '.join(JUNCTION_TIMINGS)}, "
                             f"got {self.junction!r}")
        for option in ("refresh_chunks", "refresh_index"):
            value = getattr(self, option)
            if not is_int(value) or value < 0:
                raise ValueError(f"switch option {option} must be a non-negative integer, got {value!r}")
        if self.refresh_chunks and self.junction != "copy":
            raise ValueError("switch option refresh_chunks needs junction: copy (a refreshed junction is a copy)")

    def check(self, plan):
        layout = plan.layout
        names = [r.name for r in layout.regions]
        if self.anchor_region not in names or layout.region(self.anchor_region).promoted_from is None:
            raise ValueError(
                f"anchor_region {self.anchor_region!r} must be a region promoted from the window "
                f"({{name: {self.anchor_region}, frames: N, promoted_from: <window>}}); regions are {names}"
            )

    def attach(self, ctx):
        if self.refresh_chunks:
            self._attended_after = self._after_window(ctx, self.refresh_index)
            ctx.cache.mute(self.anchor_region)

    def on_switch(self, ctx, transition):
        cache, region = ctx.cache, self.anchor_region
        size = cache.layout.region(region).frames
        if self.junction == "promote":
            self._recache.on_switch(ctx, transition)
            cache.mark(region, list(range(ctx.frame, ctx.frame + size)))
            return
        capacity = sum(r.frames for r in cache.layout.regions if r.promoted_from is None and not r.external)
        span_start = ctx.frame - min(capacity, ctx.frame)
        cache.mute(region, not self._attended(span_start))
        self._recache.on_switch(ctx, transition)
        cache.clear(region)
        self._switched = True
        asked = ctx.switch_index if ctx.switch_index is not None else ctx.frame
        self._attended_after = self._after_window(ctx, asked)
        self._copy_at = ctx.frame

    def after_chunk(self, ctx):
        if self.junction != "copy":
            return
        start = ctx.frame - ctx.chunk_frames  # the chunk just generated
        refresh = (self.refresh_chunks and not self._switched
                   and (start // ctx.chunk_frames) % self.refresh_chunks == 0)
        if start == self._copy_at or refresh:
            size = ctx.cache.layout.region(self.anchor_region).frames
            ctx.cache.copy_into(self.anchor_region, list(range(start, start + size)))
        ctx.cache.mute(self.anchor_region, not self._attended(ctx.frame))

    def _after_window(self, ctx, index: int) -> int:
        window = ctx.cache.layout.region(self.anchor_region).promoted_from
        return index + ctx.cache.layout.region(window).frames

    def _attended(self, start: int) -> bool:
        """Whether a pass starting at latent frame ``start`` attends to the junction copy."""
        return self._attended_after is not None and start > self._attended_after
