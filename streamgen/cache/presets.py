"""Cache presets: region sizes + position policy + switch strategy, shipped as ``streamgen/presets/*.yaml``.

A peer's method is a preset of this one engine, never a fork of it, so presets run side by side on the same model
and seeds. A preset file looks like::

    name: rolling
    description: LongLive — a window of 12 latent frames incl. a pinned 3-frame sink; KV re-cache at switches
    regions:
      - {name: sink, frames: 3}
      - {name: window, frames: 9, evict: true}
    positions: absolute          # absolute | block-relative | tri-region | scene-relative
    switch: recache              # none | recache | anchor-recache | flush | scene-memory
    switch_options: {}           # keyword arguments of the switch strategy

``frames: auto`` sizes a region to the whole requested stream (the ``global`` preset), which only works when the
stream length is known in advance. ``promoted_from: <region>`` makes a region that only receives frames a switch
strategy marked, as the named evicting region drops them (Anchor Forcing's junction). ``external: true`` makes a
region only a switch strategy writes (Echo-Forcing's scene memory and carried frames).

``rope_range`` is the number of temporal positions the backbone was trained on (21 latent frames for Wan /
Self-Forcing checkpoints). It belongs to the preset because the position policy is built from the preset alone and
a method's region sizes are chosen for that range (a peer's published preset states its checkpoint's range).
``rope_range: auto`` takes the range of the checkpoint that plays it (the pipeline config's ``rope_range``, via
:meth:`CachePreset.with_rope_range`, which re-runs every check). ``tri-region`` and ``scene-relative`` positions
need it.

A preset with fixed region sizes is checked whole when it is built (regions, position policy, switch options), so
a bad file fails at load time, naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..resources import preset_dir
from .positions import (
    AbsolutePositions, BlockRelativePositions, PositionPolicy, SceneRelativePositions, TriRegionPositions,
)
from .regions import Region, RegionLayout
from .scene_switch import is_int
from .switching import STRATEGIES, SwitchStrategy

PRESET_DIR = preset_dir()  # the shipped presets: package data, so a wheel has them too
POSITIONS = ("absolute", "block-relative", "tri-region", "scene-relative")
RANGED_POSITIONS = ("tri-region", "scene-relative")  # policies that keep indices inside rope_range
AUTO = "auto"  # rope_range: the range of the checkpoint that plays the preset
PRESET_KEYS = {"name", "regions", "positions", "switch", "query_origin", "pinned_regions", "rope_range", "description",
               "switch_options"}
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
    switch: str = "none"
    query_origin: int | None = None  # block-relative only; default: the end of the cache's position range
    pinned_regions: tuple[str, ...] = ("sink",)
    rope_range: int | str | None = None  # trained temporal positions, or "auto": the checkpoint's; ranged policies only
    description: str = ""
    switch_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(
                f"cache preset {self.name!r}: unknown positions {self.positions!r}; known: {list(POSITIONS)}"
            )
        if self.switch not in STRATEGIES:
            raise ValueError(f"cache preset {self.name!r}: unknown switch {self.switch!r}; known: {list(STRATEGIES)}")
        if self.switch == "scene-memory" and self.positions != "scene-relative":
            raise ValueError(
                f"cache preset {self.name!r}: the scene-memory switch moves scene-relative positions (its RoPE jump), "
                f"so it needs positions: scene-relative, got {self.positions!r}"
            )
        if self.rope_range not in (None, AUTO) and not (is_int(self.rope_range) and self.rope_range > 0):
            raise ValueError(
                f"cache preset {self.name!r}: rope_range must be a positive integer or 'auto', got {self.rope_range!r}"
            )
        if self.positions in RANGED_POSITIONS and self.rope_range is None:
            raise ValueError(
                f"cache preset {self.name!r}: {self.positions} positions need rope_range (the trained temporal "
                "positions)"
            )
        if self.positions not in RANGED_POSITIONS and self.rope_range is not None:
            raise ValueError(
                f"cache preset {self.name!r}: rope_range only applies to {' and '.join(RANGED_POSITIONS)} positions"
            )
        if self.rope_range == AUTO:  # the regions are checked against the range once a checkpoint gives it
            self.switch_strategy()
            return
        self.switch_strategy(layout=None if self.needs_stream_length else self._checked_layout())

    def with_rope_range(self, rope_range: int) -> "CachePreset":
        """This preset on a checkpoint trained on ``rope_range`` temporal positions: a ``rope_range: auto`` preset
        takes it (and is checked against it); a preset that states its own range keeps it."""
        if self.rope_range != AUTO:
            return self
        try:
            return replace(self, rope_range=rope_range)
        except ValueError as err:
            raise ValueError(f"{err} (rope_range: auto took the pipeline's rope_range {rope_range})") from None

    def _checked_layout(self) -> RegionLayout:
        """The fixed-size layout, with the position policy's constraints on it checked."""
        try:
            layout = self.layout()
            if self.positions == "tri-region":
                TriRegionPositions.from_layout(layout, self.rope_range)
            if self.positions == "scene-relative":
                SceneRelativePositions.from_layout(layout, self.rope_range)
        except ValueError as err:
            raise ValueError(f"cache preset {self.name!r}: {err}") from err
        return layout

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
        generated if the cache would fill up: a preset that never evicts must hold the whole stream."""
        layout = self.layout(stream_frames)
        if not any(r.evict for r in layout.regions):
            room = sum(r.frames for r in layout.regions if not r.external and r.promoted_from is None)
            if stream_frames is None or stream_frames > room:
                wanted = "an open-ended stream" if stream_frames is None else f"{stream_frames} latent frames"
                raise ValueError(
                    f"cache preset {self.name!r} holds {room} latent frames and never evicts, so it cannot play "
                    f"{wanted}; use a rolling preset (e.g. rolling, self-forcing) or a shorter stream"
                )
        return layout

    def position_policy(self, layout: RegionLayout, chunk_frames: int) -> PositionPolicy:
        if self.rope_range == AUTO:
            raise ValueError(f"cache preset {self.name!r} has rope_range: auto; resolve it with with_rope_range() "
                             "(the pipeline does, from its config's rope_range)")
        if self.positions == "absolute":
            return AbsolutePositions()
        if self.positions == "tri-region":
            return TriRegionPositions.from_layout(layout, self.rope_range)
        if self.positions == "scene-relative":
            return SceneRelativePositions.from_layout(layout, self.rope_range)
        origin = self.query_origin if self.query_origin is not None else layout.num_slots - chunk_frames
        return BlockRelativePositions(query_origin=origin, pinned_regions=self.pinned_regions)

    def switch_strategy(self, override: str | None = None, layout: RegionLayout | None = None) -> SwitchStrategy:
        """The switch strategy (``override`` by name, else the preset's), checked against ``layout`` if given."""
        name = override or self.switch
        if name not in STRATEGIES:
            raise ValueError(f"unknown switch strategy {name!r}; known: {list(STRATEGIES)}")
        options = self.switch_options if name == self.switch else {}
        try:
            strategy = STRATEGIES[name](**options)
            if layout is not None:
                strategy.validate(layout)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"cache preset {self.name!r}: switch {name!r} with switch_options {options}: {err}"
            ) from err
        return strategy

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "CachePreset":
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a mapping of preset keys, got {type(data).__name__}")
            unknown = set(data) - PRESET_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(PRESET_KEYS)}")
            return cls(
                name=str(data["name"]),
                regions=tuple(_region_spec(r) for r in data["regions"]),
                positions=data.get("positions", "absolute"),
                switch=data.get("switch", "none"),
                query_origin=data.get("query_origin"),
                pinned_regions=tuple(data.get("pinned_regions", ("sink",))),
                rope_range=data.get("rope_range"),
                description=data.get("description", ""),
                switch_options=dict(data.get("switch_options") or {}),
            )
        except KeyError as err:
            raise ValueError(f"invalid cache preset {source}: missing key {err}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid cache preset {source}: {err}") from err


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
    return CachePreset.from_dict(yaml.safe_load(path.read_text()), source=str(path))
