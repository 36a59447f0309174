"""Switch strategies: what happens to the KV cache when the prompt changes.

The engine has already replaced the cross-attention K/V with the new prompt's when a strategy runs; a strategy only
rewrites self-attention memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..engine import StreamEngine


class SwitchStrategy(Protocol):
    def __call__(self, engine: "StreamEngine", transition: str) -> None: ...


@dataclass(frozen=True)
class KeepCache:
    """``none``: keep every cached frame as it was computed under the old prompt."""

    def __call__(self, engine, transition):
        return None


@dataclass(frozen=True)
class Recache:
    """``recache`` (LongLive KV re-cache): keep ``keep_regions`` (the attention sink), and re-encode every other
    cached frame from its clean latents at the context timestep under the NEW prompt, oldest first, chunk by
    chunk, so the memory the next chunk reads agrees with the prompt it is asked to follow.
    """

    keep_regions: tuple[str, ...] = ("sink",)

    def __call__(self, engine, transition):
        cache = engine.cache
        rebuilt = [r.name for r in cache.layout.regions if r.name not in self.keep_regions]
        frames = sorted(f for name in rebuilt for f in cache.frames_in(name))
        for name in rebuilt:
            cache.clear(name)
        engine.reencode(frames)


STRATEGIES = {"none": KeepCache, "recache": Recache}
