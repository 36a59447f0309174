"""``scene-memory`` (Echo-Forcing): a switch keeps a compressed memory of a scene instead of re-encoding anything.

Every scene is recorded while it plays (:class:`~streamgen.cache.scene_memory.SceneRecorder`) and compressed into
one memory frame per layer when it ends, kept in a bounded pool (:class:`~streamgen.cache.scene_pool.ScenePool`).
At a switch the cache is truncated to one memory frame (held in the external ``memory_region``) plus, for modes
that carry them, the most recent frames as computed (moved to the external ``carry_region``); everything else is
dropped, so the new scene's first chunk starts right after them (scene-local time restarts in the
:class:`~streamgen.cache.positions.SceneRelativePositions` policy, which also applies the mode's RoPE jump to that
chunk). The cross-attention K/V were already replaced by the engine. The kept frames then fade
(:class:`~streamgen.cache.memory_decay.MemoryDecay`) and are dropped after a few chunks.

Transition modes (``switch_options.modes``; every number comes from the preset):

- ``memory``: which scene's memory frame is kept — ``previous`` (the scene that just ended), ``run-start`` (the
  first scene since the latest non-smooth switch: a run of smooth switches keeps one identity anchor) or ``match``
  (a recall: the scene named by id, else the pooled scene whose prompt matches best);
- ``carry``: how many of the most recent frames are kept as computed; with ``recache_carry: true`` (optional,
  default false) they are re-encoded under the NEW prompt while they attend to the kept memory frame (an
  anchor-guided re-cache of the carried frames, as Anchor Forcing does for its window);
- ``jump``: RoPE distance added between the kept frames and the new scene's first chunk: a number, or
  [min, max] scaled by how poorly the recalled scene matches (``match`` only);
- ``first_chunk_weight``: factor on the memory frame's K/V for the first chunk;
- ``decay``: a fixed rate, or [min_rate, max_rate] for difference-aware rates; ``evict_after``: chunks until the
  kept frames are dropped.

The recorded first frames of the playing scene are lent to a between-switch memory that reads them
(:meth:`SceneMemorySwitch.scene_frames_kv`: the anchors of Echo-Forcing's hierarchical temporal memory,
``memory: hierarchical``), so they are kept once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..transitions import TRANSITIONS, Transition
from .mechanisms import JUMP, SwitchStrategy, register_switch_strategy
from .memory_decay import MemoryDecay
from .scene_memory import SceneRecorder
from .scene_pool import SceneEntry, ScenePool
from .values import is_int, is_number

MEMORY_SOURCES = ("previous", "run-start", "match")
MODE_KEYS = {"memory", "carry", "jump", "first_chunk_weight", "decay", "evict_after"}
OPTIONAL_MODE_KEYS = {"recache_carry": False}


def _is_rate(value) -> bool:
    return is_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class TransitionMode:
    memory: str
    carry: int
    jump: int | tuple[int, int]
    first_chunk_weight: float
    decay: float | tuple[float, float]
    evict_after: int
    recache_carry: bool = False

    @classmethod
    def from_dict(cls, name: str, data) -> "TransitionMode":
        key = f"modes.{name}"
        if not isinstance(data, dict):
            raise ValueError(f"switch option {key} must be a mapping of {sorted(MODE_KEYS)}, got {data!r}")
        if not MODE_KEYS <= set(data) <= MODE_KEYS | set(OPTIONAL_MODE_KEYS):
            raise ValueError(
                f"switch option {key}: missing keys {sorted(MODE_KEYS - set(data))}, "
                f"unknown keys {sorted(set(data) - MODE_KEYS - set(OPTIONAL_MODE_KEYS))}"
            )
        recache_carry = data.get("recache_carry", OPTIONAL_MODE_KEYS["recache_carry"])
        if not isinstance(recache_carry, bool):
            raise ValueError(f"switch option {key}.recache_carry must be true or false, got {recache_carry!r}")
        if recache_carry and not (is_int(data["carry"]) and data["carry"] > 0):
            raise ValueError(f"switch option {key}.recache_carry re-encodes carried frames, so carry must be > 0")
        memory, carry, jump = data["memory"], data["carry"], data["jump"]
        weight, decay, evict_after = data["first_chunk_weight"], data["decay"], data["evict_after"]
        if memory not in MEMORY_SOURCES:
            raise ValueError(f"switch option {key}.memory must be one of {list(MEMORY_SOURCES)}, got {memory!r}")
        if not (is_int(carry) and carry >= 0):
            raise ValueError(f"switch option {key}.carry must be a non-negative integer, got {carry!r}")
        jump_range = isinstance(jump, list) and len(jump) == 2 and all(is_int(j) and j >= 0 for j in jump)
        if jump_range and jump[0] <= jump[1]:
            if memory != "match":
                raise ValueError(f"switch option {key}.jump: a [min, max] jump scales with a recall match, "
                                 f"so it needs memory: match, not {memory!r}")
            jump = (jump[0], jump[1])
        elif not (is_int(jump) and jump >= 0):
            raise ValueError(f"switch option {key}.jump must be a non-negative integer or [min, max], got {jump!r}")
        if not _is_rate(weight):
            raise ValueError(f"switch option {key}.first_chunk_weight must be in (0, 1], got {weight!r}")
        if isinstance(decay, list) and len(decay) == 2 and all(_is_rate(r) for r in decay) and decay[0] <= decay[1]:
            decay = (float(decay[0]), float(decay[1]))
        elif _is_rate(decay):
            decay = float(decay)
        else:
            raise ValueError(
                f"switch option {key}.decay must be a rate in (0, 1] or [min_rate, max_rate] with "
                f"0 < min_rate <= max_rate <= 1, got {decay!r}"
            )
        if not (is_int(evict_after) and evict_after > 0):
            raise ValueError(f"switch option {key}.evict_after must be a positive integer, got {evict_after!r}")
        return cls(memory, carry, jump, float(weight), decay, evict_after, recache_carry)


@register_switch_strategy("scene-memory")
@dataclass
class SceneMemorySwitch(SwitchStrategy):
    """The ``scene-memory`` switch strategy. One instance follows one stream (:meth:`attach`)."""

    needs_positions = frozenset({JUMP})  # the new scene's first chunk jumps away from the kept frames

    recall_frames: int  # first latent frames of each scene recorded for its memory
    recall_stride: int  # memory compressed from recorded frames 0, stride, 2 * stride, ...
    base_weight: float  # weight of the scene's first frame in its memory frame
    pool_size: int  # scene memories kept
    shared_word_fraction: float  # words in at least this fraction of scene prompts do not identify a scene
    modes: dict
    pool_device: str | None = None  # None: the cache's device
    memory_region: str = "memory"
    carry_region: str = "carry"
    _transitions: dict = field(init=False, repr=False)

    def __post_init__(self):
        for key in ("recall_frames", "recall_stride", "pool_size"):
            value = getattr(self, key)
            if not (is_int(value) and value > 0):
                raise ValueError(f"switch option {key} must be a positive integer, got {value!r}")
        if not (is_number(self.base_weight) and 0 <= self.base_weight <= 1):
            raise ValueError(f"switch option base_weight must be in [0, 1], got {self.base_weight!r}")
        if not (is_number(self.shared_word_fraction) and 0 < self.shared_word_fraction <= 1):
            raise ValueError(
                f"switch option shared_word_fraction must be in (0, 1], got {self.shared_word_fraction!r}"
            )
        if not isinstance(self.modes, dict) or set(self.modes) != set(TRANSITIONS):
            raise ValueError(f"switch option modes must map exactly {list(TRANSITIONS)} to their settings, "
                             f"got {sorted(self.modes) if isinstance(self.modes, dict) else self.modes!r}")
        self._transitions = {name: TransitionMode.from_dict(name, self.modes[name]) for name in TRANSITIONS}
        if self.pool_device is not None:
            try:
                torch.device(self.pool_device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(
                    f"switch option pool_device must name a torch device, got {self.pool_device!r}"
                ) from err

    def check(self, plan) -> None:
        layout = plan.layout
        names = [r.name for r in layout.regions]
        needs = {self.memory_region: 1}
        carry = max(mode.carry for mode in self._transitions.values())
        if carry:
            needs[self.carry_region] = carry
        for name, frames in needs.items():
            if name not in names or not layout.region(name).external or layout.region(name).frames < frames:
                raise ValueError(
                    f"region {name!r} must be an external region of at least {frames} frame(s) "
                    f"({{name: {name}, frames: {frames}, external: true}}); regions are {names}"
                )
        if layout.region(self.memory_region).frames != 1:
            raise ValueError(f"region {self.memory_region!r} holds one memory frame: it must have frames: 1")

    # ---- following the stream ----------------------------------------------------------------------------------
    def attach(self, ctx) -> None:
        """Allocate this stream's recorder and pool (once: memory stays constant however long the stream)."""
        layers, batch, _, heads, dim = ctx.cache.k.shape
        sizes = dict(num_layers=layers, batch_size=batch, tokens_per_frame=ctx.cache.tokens_per_frame,
                     num_heads=heads, head_dim=dim, dtype=ctx.cache.k.dtype)
        self.recorder = SceneRecorder(self.recall_frames, self.recall_stride, device=ctx.cache.k.device, **sizes)
        self.pool = ScenePool(self.pool_size, device=self.pool_device or ctx.cache.k.device, **sizes)
        self.scene = 0  # id of the scene playing
        self.scene_start = ctx.frame
        self.scene_prompt: str | None = None
        self.run_start = 0  # first scene since the latest non-smooth switch
        self.decay: MemoryDecay | None = None
        self._check_rope_budget(ctx)

    def _check_rope_budget(self, ctx) -> None:
        """The memory and carried frames plus the new scene's frames attended before they are dropped must fit the
        trained position range (the streamed regions alone are checked by the position policy). Needs the chunk
        size, so it waits for the stream."""
        layout = ctx.cache.layout
        scene = sum(r.frames for r in layout.regions if r.name not in (self.memory_region, self.carry_region))
        for name, mode in self._transitions.items():
            attended = 1 + mode.carry + min(scene, mode.evict_after * ctx.chunk_frames)
            if attended > ctx.rope_range:
                raise ValueError(
                    f"switch mode {name}: memory 1 + carry {mode.carry} + {mode.evict_after} chunk(s) of the new "
                    f"scene = {attended} frames attended, more than rope_range {ctx.rope_range}"
                )

    @property
    def nbytes(self) -> int:
        return self.recorder.nbytes + self.pool.nbytes

    def recorded_scene_frames(self) -> int:
        return self.recall_frames

    def scene_frames_kv(self, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(frames, device=self.recorder.k.device)
        k, v = self.recorder.k.index_select(2, index), self.recorder.v.index_select(2, index)
        return k.flatten(2, 3), v.flatten(2, 3)

    def observe_query(self, layer: int, q: torch.Tensor) -> None:
        self.recorder.observe_query(layer, q)

    def after_chunk(self, ctx) -> None:
        """Record the clean chunk for the scene's memory; fade (and in time drop) what the last switch kept."""
        if self.recorder.recorded == 0:
            self.scene_prompt = ctx.prompt
        k, v = ctx.cache.chunk_kv()
        self.recorder.record(k, v)
        if self.decay is not None:
            first_frame_k = k[:, :, : ctx.cache.tokens_per_frame]
            if self.decay.after_chunk(ctx.cache, first_frame_k):
                self.decay = None

    # ---- the switch ----------------------------------------------------------------------------------------------
    def on_switch(self, ctx, transition: Transition) -> None:
        mode = self._transitions[transition]
        self._check_recall_request(ctx, mode)
        self._end_scene()
        entry, jump = self._memory(ctx, mode)
        self._truncate(ctx, mode, entry)
        if mode.recache_carry:
            ctx.reencode(ctx.cache.frames_in(self.carry_region), in_place=True)
        ctx.positions.jump_next_chunk(jump)
        kept = (self.memory_region, self.carry_region) if mode.carry else (self.memory_region,)
        self.decay = MemoryDecay(kept, mode.decay, mode.evict_after)
        self.scene += 1
        self.scene_start = ctx.frame
        self.recorder.reset()
        if transition != Transition.SMOOTH:
            self.run_start = self.scene

    def _check_recall_request(self, ctx, mode: TransitionMode) -> None:
        """Fail before anything changes if the switch names a scene that cannot be recalled."""
        wanted = ctx.recall_scene
        if wanted is None:
            return
        if mode.memory != "match":
            raise ValueError(f"a scene id ({wanted}) can only be given to a recall switch")
        known = [e.scene for e in self.pool.entries] + ([self.scene] if self.recorder.recorded else [])
        if wanted not in known:
            raise ValueError(f"scene {wanted} cannot be recalled: the pool holds scenes {known}")

    def _end_scene(self) -> None:
        """Compress the scene that just ended into the pool (a scene that generated nothing leaves nothing)."""
        if self.recorder.recorded:
            k, v = self.recorder.compress(self.base_weight)
            self.pool.add(self.scene, self.scene_prompt, self.scene_start, k, v)

    def _memory(self, ctx, mode: TransitionMode) -> tuple[SceneEntry | None, int]:
        """The pooled scene whose memory frame is kept, and the RoPE jump for the new scene's first chunk."""
        if mode.memory == "previous":
            return self.pool.latest(), mode.jump
        if mode.memory == "run-start":
            return self.pool.find(self.run_start) or self.pool.latest(), mode.jump
        best, similarities = None, None
        if ctx.prompt is not None and all(e.prompt is not None for e in self.pool.entries):
            best, similarities = self.pool.match(ctx.prompt, self.shared_word_fraction)
        entry = best if ctx.recall_scene is None else self.pool.find(ctx.recall_scene)
        if entry is None:
            raise ValueError("a recall needs the new prompt's text (and the pooled scenes') or a scene id")
        if isinstance(mode.jump, int):
            return entry, mode.jump
        low, high = mode.jump
        if similarities is None:  # nothing says how well the scene matches: as far as allowed
            return entry, high
        gaps = [1 - s for s in similarities]
        share = gaps[self.pool.entries.index(entry)] / sum(gaps) if sum(gaps) > 0 else 0.0
        return entry, round(low + share * (high - low))

    def _truncate(self, ctx, mode: TransitionMode, entry: SceneEntry | None) -> None:
        """Leave the cache holding only the memory frame (scaled for the first chunk) and the carried frames."""
        cache = ctx.cache
        streamed = [r.name for r in cache.layout.regions if not r.external]
        if mode.carry:
            recent = sorted(f for name in streamed for f in cache.frames_in(name))[-mode.carry :]
            cache.carry(recent, self.carry_region)
        elif self.carry_region in [r.name for r in cache.layout.regions]:
            cache.clear(self.carry_region)
        for name in streamed:
            cache.clear(name)
        if entry is None:  # no earlier scene left a memory (e.g. only prefilled context so far)
            cache.clear(self.memory_region)
            return
        k, v = self.pool.memory(entry)
        weight = mode.first_chunk_weight
        cache.hold(self.memory_region, [entry.first_frame], k.to(cache.k.device) * weight,
                   v.to(cache.v.device) * weight)
