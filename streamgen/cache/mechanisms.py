"""The plug-in contract of the cache engine: one base class and one registry per kind of mechanism.

A preset (:mod:`streamgen.cache.presets`) combines, on its regions, one mechanism of each kind:

- a **position policy** (``positions:``): the temporal RoPE index of every key and query frame, per chunk;
- a **switch strategy** (``switch:``): what happens to the cache at a prompt switch;
- a **between-switch memory** (``memory:``): what the cache holds while a scene plays, beyond its regions' plain
  filling and eviction (Echo-Forcing's hierarchical temporal memory).

A mechanism subclasses its kind's base class, overrides the hooks it needs (every hook is a documented no-op that
the engine always calls) and registers itself by name (``@register_switch_strategy("name")``). It declares what
it needs from the others: position capabilities in ``needs_positions``, regions and the other mechanisms' settings
in :meth:`CacheMechanism.check`. The preset checks all of that once, when it loads. While a stream plays, a
mechanism sees only the :class:`~streamgen.cache.context.StreamContext` the engine hands it, never the engine.

The engine calls, for every stream, switch strategy first, then memory:

1. ``attach(ctx)`` once, before the first chunk;
2. per chunk: ``observe_first_query(layer, q)`` during its first denoising pass, ``observe_query(layer, q)`` during
   its clean pass (the pass that leaves its clean K/V in the cache), then ``after_chunk(ctx)``;
3. per prompt switch: ``on_switch(ctx, transition)``, after the cross-attention K/V were replaced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..transitions import Transition
from .regions import RegionLayout
from .registry import Registry

if TYPE_CHECKING:
    from .context import StreamContext

# Position capabilities a mechanism may need (``needs_positions``) and a policy may have (``capabilities``).
JUMP = "jump"  # PositionPolicy.jump_next_chunk: move the next chunk away from everything cached before it
# Latent frames: a preset is checked before the pipeline's chunk size is known (PositionPolicy.check).
SMALLEST_CHUNK = 1


# ---- position policies -----------------------------------------------------------------------------------------
class PositionPolicy(ABC):
    """The temporal RoPE index of every attended key frame and of the query frames, once per chunk (and per run of
    re-encoded frames). Keys are cached un-roped, so a policy may give a cached frame a new index at every chunk.

    A policy is built per stream (:meth:`from_layout`) and may keep state (a pending jump).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    # Stable key positions: a frame's temporal index depends on the frame alone (never on the chunk reading it), and
    # the query frames sit at the indices of their own keys. Keys may then be rotated once, when they are written,
    # instead of at every read (see :attr:`CacheMechanism.reads_keys` for what else that needs). A policy that moves
    # keys (a new index per chunk) leaves this False and keys are rotated at read time.
    stable_key_positions: ClassVar[bool] = False
    # Keeps every index inside the backbone's trained range: the preset must state rope_range (else must not).
    needs_rope_range: ClassVar[bool] = False

    @classmethod
    def from_layout(cls, layout: RegionLayout, *, chunk_frames: int, rope_range: int | None,
                    **options) -> "PositionPolicy":
        """This policy for one stream over ``layout``; ``options`` are the preset's ``position_options``. Raise
        ValueError if the layout or the options do not suit the policy. Default: ``cls(**options)``."""
        return cls(**options)

    @classmethod
    def check(cls, layout: RegionLayout, *, rope_range: int | None, **options) -> None:
        """Raise ValueError (TypeError for an unknown option) if this policy cannot position ``layout``; called
        once, when the preset loads. The chunk size is the pipeline's, unknown then, so by default the policy is
        built for the smallest chunk."""
        cls.from_layout(layout, chunk_frames=SMALLEST_CHUNK, rope_range=rope_range, **options)

    @abstractmethod
    def __call__(
        self, key_frames: list[tuple[int, str]], query_frames: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(key positions [N_key_frames], query positions [N_query_frames]) as float64 tensors, for ``key_frames``
        given as (latent frame, region) in the cache's read order."""

    def jump_next_chunk(self, frames: int) -> None:
        """Move the next chunk ``frames`` positions away from everything cached before it (once). Only a policy
        with the JUMP capability implements this; a mechanism that calls it declares ``needs_positions = {JUMP}``."""
        raise NotImplementedError(f"{type(self).__name__} cannot jump: it lacks the {JUMP!r} capability")


# ---- switch strategies and between-switch memories ---------------------------------------------------------------
@dataclass(frozen=True)
class PresetPlan:
    """What a mechanism checks its needs against, once, when its preset loads (for a ``frames: auto`` preset, when
    the stream length sizes its regions)."""

    layout: RegionLayout
    rope_range: int | str | None  # as the preset states it: None, a number, or "auto" until a checkpoint resolves it
    positions: type[PositionPolicy]
    switch: "SwitchStrategy"
    memory: "BetweenSwitchMemory"


class CacheMechanism:
    """The hooks a switch strategy and a between-switch memory share. Each is a no-op here; override what you need.

    One instance serves one stream: per-stream state is allocated in :meth:`attach`, bounded (memory must not grow
    with stream length), and reported by :attr:`nbytes`. A stream snapshot (:mod:`streamgen.snapshot`) saves and
    restores every attribute of the instance, so keep per-stream state in attributes of plain types: numbers,
    strings, lists, dicts, tuples, sets, deques, tensors, dataclasses and other streamgen objects of such
    attributes (a reference to the :class:`StreamContext` is fine). Anything else makes ``snapshot()`` fail naming
    the attribute.
    """

    # Capabilities the stream's position policy must have (e.g. {JUMP}); checked when the preset loads.
    needs_positions: ClassVar[frozenset[str]] = frozenset()
    # Whether this mechanism reads, copies, scales or re-holds cached keys (``chunk_kv``, ``region_kv``, ``hold``,
    # ``copy_into``, ``scale_region``, ``cache.k`` ...), which it then gets un-roped. Only when no mechanism of a
    # stream does, and its position policy has stable key positions, are keys stored already rotated.
    reads_keys: ClassVar[bool] = True

    def check(self, plan: PresetPlan) -> None:
        """Raise ValueError if the preset cannot serve this mechanism: a region it needs, something it needs from
        the other mechanisms. Called once, when the preset loads."""

    def attach(self, ctx: "StreamContext") -> None:
        """Once per stream, before its first chunk: allocate per-stream state. Checks that need the pipeline (the
        chunk size) go here; everything the preset alone decides belongs in :meth:`check`."""

    def observe_first_query(self, layer: int, q: torch.Tensor) -> None:
        """The un-roped self-attention queries [B, n, H, D] of ``layer`` in the chunk's first denoising pass, before
        that layer reads the cache: a mechanism may still rewrite the layer's cached K/V here. Read-only ``q``."""

    def observe_query(self, layer: int, q: torch.Tensor) -> None:
        """The un-roped queries [B, n, H, D] of ``layer`` in the chunk's clean pass. Read-only ``q``."""

    def after_chunk(self, ctx: "StreamContext") -> None:
        """After every generated chunk; its clean K/V are in the cache (``ctx.cache.chunk_kv()``)."""

    def on_switch(self, ctx: "StreamContext", transition: Transition) -> None:
        """At a prompt switch entered with ``transition``; the cross-attention K/V already follow the new prompt."""

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors this mechanism keeps between chunks (constant for a stream)."""
        return 0


class SwitchStrategy(CacheMechanism, ABC):
    """What happens to the self-attention memory (the KV cache) at a prompt switch."""

    @abstractmethod
    def on_switch(self, ctx: "StreamContext", transition: Transition) -> None:
        """Rewrite the cache for the new prompt (keep, drop, re-encode with ``ctx.reencode``, hold new frames)."""

    def recorded_scene_frames(self) -> int:
        """How many of each scene's first latent frames this strategy records (K/V of every layer) and lends
        through :meth:`scene_frames_kv`; 0: none. A memory that reads them checks this at load."""
        return 0

    def scene_frames_kv(self, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [layers, B, len(frames) * tokens_per_frame, H, D] of the playing scene's frames ``frames``
        (scene-local indices below :meth:`recorded_scene_frames`)."""
        raise NotImplementedError(f"{type(self).__name__} records no scene frames")


class BetweenSwitchMemory(CacheMechanism):
    """What the cache holds while a scene plays, beyond its regions' plain filling and eviction (what each chunk's
    external regions hold, chosen from the scene so far). :meth:`on_switch` runs after the switch strategy's."""


POSITION_POLICIES: Registry[type[PositionPolicy]] = Registry("positions", PositionPolicy)
SWITCH_STRATEGIES: Registry[type[SwitchStrategy]] = Registry("switch", SwitchStrategy)
MEMORIES: Registry[type[BetweenSwitchMemory]] = Registry("memory", BetweenSwitchMemory)
register_position_policy = POSITION_POLICIES.register
register_switch_strategy = SWITCH_STRATEGIES.register
register_memory = MEMORIES.register


@register_memory("none")
class NoMemory(BetweenSwitchMemory):
    """``none``: between switches the regions simply fill and evict as the preset lays them out."""

    reads_keys = False
