"""Cache presets: regions + a position policy, a switch strategy and a between-switch memory, shipped as
``streamgen/presets/*.yaml``.

A peer's method is a preset of this one engine, never a fork of it, so presets run side by side on the same model
and seeds. A preset file looks like::

    name: rolling
    description: LongLive — a window of 12 latent frames incl. a pinned 3-frame sink; KV re-cache at switches
    regions:
      - {name: sink, frames: 3}
      - {name: window, frames: 9, evict: true}
    positions: absolute          # absolute | block-relative | tri-region | scene-relative
    position_options: {}         # keyword arguments of the position policy
    switch: recache              # none | recache | anchor-recache | flush | scene-memory
    switch_options: {}           # keyword arguments of the switch strategy
    memory: none                 # none | hierarchical: what the cache holds between switches
    memory_options: {}           # keyword arguments of the between-switch memory

``positions``, ``switch`` and ``memory`` name registered mechanisms (the lists above are the built-in ones; see
:mod:`streamgen.cache.mechanisms` to add one); each ``*_options`` holds the keyword arguments of its class.

``extends: <preset>`` (a shipped preset's name, or a YAML path relative to the file) makes a file a set of changes
to another preset, key by key: mappings merge, anything else replaces. ``name`` and ``description`` are never
inherited, and a file that names another mechanism of a kind (``switch: flush``) starts its options afresh.

``frames: auto`` sizes a region to the whole requested stream (the ``global`` preset), which only works when the
stream length is known in advance. ``promoted_from: <region>`` makes a region that only receives frames a switch
strategy marked, as the named evicting region drops them (Anchor Forcing's junction). ``external: true`` makes a
region only a mechanism writes (Echo-Forcing's scene memory and carried frames, its hierarchical memory's anchors).

``rope_range`` is the number of temporal positions the backbone was trained on (21 latent frames for Wan /
Self-Forcing checkpoints). It belongs to the preset because the position policy is built from the preset alone and
a method's region sizes are chosen for that range (a peer's published preset states its checkpoint's range).
``rope_range: auto`` takes the range of the checkpoint that plays it (the pipeline config's ``rope_range``, via
:meth:`CachePreset.with_rope_range`, which re-runs every check). ``tri-region`` and ``scene-relative`` positions
need it.

A preset is checked whole when it is built, so a bad file fails at load time, naming the file and the key: the
mechanisms' names and options, what each needs from the others (position capabilities, regions, the other
mechanisms' settings) and the position policy against the regions and ``rope_range``. Only what needs the stream
waits for it: the regions of a ``frames: auto`` preset, and checks that need the pipeline's chunk size.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..resources import preset_dir
# The registries hold the built-in mechanisms once the package is imported (streamgen/cache/__init__.py).
from .mechanisms import (
    MEMORIES, POSITION_POLICIES, SWITCH_STRATEGIES, BetweenSwitchMemory, PositionPolicy, PresetPlan, SwitchStrategy,
)
from .regions import Region, RegionLayout
from .values import is_int

PRESET_DIR = preset_dir()  # the shipped presets: package data, so a wheel has them too
AUTO = "auto"  # rope_range: the range of the checkpoint that plays the preset
# Each kind of mechanism: the preset key naming it and the key of its options.
KINDS = (("positions", "position_options"), ("switch", "switch_options"), ("memory", "memory_options"))
PRESET_KEYS = {"name", "description", "regions", "rope_range", *(key for kind in KINDS for key in kind)}
OWN_KEYS = ("name", "description")  # what ``extends:`` never inherits
REGION_KEYS = {"name", "frames", "evict", "promoted_from", "external"}


@dataclass(frozen=True)
class RegionSpec:
    name: str
    frames: int | None  # None: "auto", the stream's length
    evict: bool = False
    promoted_from: str | None = None
    external: bool = False

    def __post_init__(self):
        if self.frames is not None and not (is_int(self.frames) and self.frames > 0):
            raise ValueError(f"region {self.name!r}: frames must be a positive integer or 'auto', got {self.frames!r}")
        for key in ("evict", "external"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"region {self.name!r}: {key} must be true or false, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class CachePreset:
    name: str
    regions: tuple[RegionSpec, ...]
    positions: str = "absolute"
    position_options: dict = field(default_factory=dict)
    switch: str = "none"
    switch_options: dict = field(default_factory=dict)
    memory: str = "none"
    memory_options: dict = field(default_factory=dict)
    rope_range: int | str | None = None  # trained temporal positions, or "auto": the checkpoint's; ranged policies only
    description: str = ""

    def __post_init__(self):
        try:
            self._check()
        except ValueError as err:
            raise ValueError(f"cache preset {self.name!r}: {err}") from err

    def _check(self) -> None:
        """Everything the preset alone decides, in the order a reader fixes it: which mechanisms, what they need of
        each other, the range, then the regions (once their sizes are known)."""
        policy, switch, memory = self._mechanisms()
        for key, mechanism in (("switch", switch), ("memory", memory)):
            needs = mechanism.needs_positions
            missing = needs - policy.capabilities
            if missing:
                able = [name for name, cls in POSITION_POLICIES.items() if needs <= cls.capabilities]
                raise ValueError(f"{key} {getattr(self, key)!r} needs positions: {' | '.join(able) or '(none)'} (a "
                                 f"policy that can {' and '.join(sorted(missing))}), got {self.positions!r}")
        if self.rope_range not in (None, AUTO) and not (is_int(self.rope_range) and self.rope_range > 0):
            raise ValueError(f"rope_range must be a positive integer or 'auto', got {self.rope_range!r}")
        if policy.needs_rope_range and self.rope_range is None:
            raise ValueError(f"{self.positions} positions need rope_range (the trained temporal positions)")
        if not policy.needs_rope_range and self.rope_range is not None:
            ranged = [name for name, cls in POSITION_POLICIES.items() if cls.needs_rope_range]
            raise ValueError(f"rope_range only applies to {' and '.join(ranged)} positions")
        if not self.needs_stream_length:
            self._check_layout(self.layout(), policy, switch, memory)

    def _mechanisms(self) -> tuple[type[PositionPolicy], SwitchStrategy, BetweenSwitchMemory]:
        return POSITION_POLICIES[self.positions], self.switch_strategy(), self.between_switch_memory()

    def _check_layout(self, layout: RegionLayout, policy: type[PositionPolicy], switch: SwitchStrategy,
                      memory: BetweenSwitchMemory) -> None:
        if self.rope_range != AUTO:  # a policy is checked against the range once a checkpoint gives it
            with _naming("positions", self.positions, "position_options"):
                policy.check(layout, rope_range=self.rope_range, **self.position_options)
        plan = PresetPlan(layout, self.rope_range, policy, switch, memory)
        for key, mechanism in (("switch", switch), ("memory", memory)):
            with _naming(key, getattr(self, key)):
                mechanism.check(plan)

    def with_rope_range(self, rope_range: int) -> "CachePreset":
        """This preset on a checkpoint trained on ``rope_range`` temporal positions: a ``rope_range: auto`` preset
        takes it (and is checked against it); a preset that states its own range keeps it."""
        if self.rope_range != AUTO:
            return self
        try:
            return replace(self, rope_range=rope_range)
        except ValueError as err:
            raise ValueError(f"{err} (rope_range: auto took the pipeline's rope_range {rope_range})") from None

    def with_switch(self, switch: str) -> "CachePreset":
        """This preset with the switch strategy ``switch`` (its options kept if it is the preset's own, else none),
        checked as a loaded preset is."""
        return self if switch == self.switch else replace(self, switch=switch, switch_options={})

    @property
    def needs_stream_length(self) -> bool:
        return any(r.frames is None for r in self.regions)

    @property
    def bounded(self) -> bool:
        """True when the cache can run forever (some region evicts)."""
        return any(r.evict for r in self.regions)

    def layout(self, stream_frames: int | None = None) -> RegionLayout:
        if self.needs_stream_length and stream_frames is None:
            raise ValueError(
                f"cache preset {self.name!r} keeps the whole stream ('frames: auto'), so it needs the number of "
                "frames up front; use a rolling preset for open-ended streams"
            )
        return RegionLayout(
            tuple(Region(r.name, r.frames or stream_frames, r.evict, r.promoted_from, r.external) for r in self.regions)
        )

    def stream_layout(self, stream_frames: int | None) -> RegionLayout:
        """The layout of a stream of ``stream_frames`` latent frames (None: open-ended), refused before anything is
        generated if the cache would fill up (a preset that never evicts must hold the whole stream) or, for a
        ``frames: auto`` preset, if its mechanisms do not fit the regions sized now."""
        layout = self.layout(stream_frames)
        if not any(r.evict for r in layout.regions):
            room = sum(r.frames for r in layout.regions if not r.external and r.promoted_from is None)
            if stream_frames is None or stream_frames > room:
                wanted = "an open-ended stream" if stream_frames is None else f"{stream_frames} latent frames"
                raise ValueError(
                    f"cache preset {self.name!r} holds {room} latent frames and never evicts, so it cannot play "
                    f"{wanted}; use a rolling preset (e.g. rolling, self-forcing) or a shorter stream"
                )
        if self.needs_stream_length:
            try:
                self._check_layout(layout, *self._mechanisms())
            except ValueError as err:
                raise ValueError(f"cache preset {self.name!r}: {err}") from err
        return layout

    # ---- one stream's mechanisms (fresh instances: they keep per-stream state) ----------------------------------
    def position_policy(self, layout: RegionLayout, chunk_frames: int) -> PositionPolicy:
        if self.rope_range == AUTO:
            raise ValueError(f"cache preset {self.name!r} has rope_range: auto; resolve it with with_rope_range() "
                             "(the pipeline does, from its config's rope_range)")
        policy = POSITION_POLICIES[self.positions]
        with _naming("positions", self.positions, "position_options"):
            return policy.from_layout(layout, chunk_frames=chunk_frames, rope_range=self.rope_range,
                                      **self.position_options)

    def switch_strategy(self) -> SwitchStrategy:
        strategy = SWITCH_STRATEGIES[self.switch]
        with _naming("switch", self.switch, "switch_options"):
            return strategy(**self.switch_options)

    def between_switch_memory(self) -> BetweenSwitchMemory:
        memory = MEMORIES[self.memory]
        with _naming("memory", self.memory, "memory_options"):
            return memory(**self.memory_options)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "CachePreset":
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a mapping of preset keys, got {type(data).__name__}")
            unknown = set(data) - PRESET_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(PRESET_KEYS)}")
            given = {key: data[key] for key in PRESET_KEYS - {"name", "regions"} if key in data}
            for _, key in KINDS:
                options = given.pop(key, None) or {}
                if not isinstance(options, dict):
                    raise ValueError(f"{key} must be a mapping of keyword arguments, got {options!r}")
                given[key] = dict(options)
            return cls(name=str(data["name"]), regions=tuple(_region_spec(r) for r in data["regions"]), **given)
        except KeyError as err:
            raise ValueError(f"invalid cache preset {source}: missing key {err}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid cache preset {source}: {err}") from err


@contextmanager
def _naming(key: str, name: str, options_key: str | None = None):
    """Errors of one mechanism, as ValueErrors that name it (and the key of its options, where they were used)."""
    try:
        yield
    except (TypeError, ValueError) as err:
        where = f"{key} {name!r}" + (f", {options_key}" if options_key else "")
        raise ValueError(f"{where}: {err}") from err


def _region_spec(data: dict) -> RegionSpec:
    if not isinstance(data, dict):
        raise ValueError(f"each region must be a mapping like {{name: window, frames: 9}}, got {data!r}")
    unknown = set(data) - REGION_KEYS
    if unknown:
        raise ValueError(f"region {data.get('name')!r}: unknown keys {sorted(unknown)}; known: {sorted(REGION_KEYS)}")
    frames = data["frames"]
    return RegionSpec(
        str(data["name"]), None if frames == "auto" else frames, data.get("evict", False), data.get("promoted_from"),
        data.get("external", False),
    )


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | CachePreset) -> CachePreset:
    """A preset by name (``streamgen/presets/NAME.yaml``) or by path to a YAML file."""
    if isinstance(name_or_path, CachePreset):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown cache preset {name_or_path!r}; available: {available_presets()}")
    return CachePreset.from_dict(_read_preset(path), source=str(path))


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping of the preset file ``path``, with its ``extends:`` chain applied."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"invalid cache preset {seen[-1]}: extends loops back to {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "extends" not in data:
        return data
    data = dict(data)
    base = data.pop("extends")
    if not isinstance(base, str):
        raise ValueError(f"invalid cache preset {path}: extends must name a preset or a YAML path, got {base!r}")
    # A name is a shipped preset, as for load_preset; a path is relative to the file that extends it.
    base_path = path.parent / base if Path(base).suffix else PRESET_DIR / f"{base}.yaml"
    if not base_path.is_file():
        raise ValueError(f"invalid cache preset {path}: extends: no preset {base!r}; shipped: {available_presets()}")
    return _extended(_read_preset(base_path, (*seen, path)), data)


def _extended(base: dict, changes: dict) -> dict:
    """``base`` changed key by key by ``changes`` (mappings merge, anything else replaces), less what a preset never
    inherits: its name and description, and the options of a kind whose mechanism ``changes`` replaces."""
    defaults = {f.name: f.default for f in fields(CachePreset)}
    out = {key: value for key, value in base.items() if key not in OWN_KEYS}
    for kind, options_key in KINDS:
        if kind in changes and changes[kind] != base.get(kind, defaults[kind]):
            out.pop(options_key, None)
    return _merged(out, changes)


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
