"""Cache presets: region sizes + position policy + switch strategy, loaded from ``configs/cache/*.yaml``.

A peer's method is a preset of this one engine, never a fork of it, so presets run side by side on the same model
and seeds. A preset file looks like::

    name: rolling
    description: LongLive — a window of 12 latent frames incl. a pinned 3-frame sink; KV re-cache at switches
    regions:
      - {name: sink, frames: 3}
      - {name: window, frames: 9, evict: true}
    positions: absolute          # absolute | block-relative
    switch: recache              # none | recache

``frames: auto`` sizes a region to the whole requested stream (the ``global`` preset), which only works when the
stream length is known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .positions import AbsolutePositions, BlockRelativePositions, PositionPolicy
from .regions import Region, RegionLayout
from .switching import STRATEGIES, SwitchStrategy

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "cache"


@dataclass(frozen=True)
class RegionSpec:
    name: str
    frames: int | None  # None: "auto", the stream's length
    evict: bool = False


@dataclass(frozen=True)
class CachePreset:
    name: str
    regions: tuple[RegionSpec, ...]
    positions: str = "absolute"
    switch: str = "none"
    query_origin: int | None = None  # block-relative only; default: the end of the cache's position range
    pinned_regions: tuple[str, ...] = ("sink",)
    description: str = ""
    switch_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.positions not in ("absolute", "block-relative"):
            raise ValueError(f"cache preset {self.name!r}: unknown positions {self.positions!r}")
        if self.switch not in STRATEGIES:
            raise ValueError(f"cache preset {self.name!r}: unknown switch {self.switch!r}; known: {list(STRATEGIES)}")

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
        return RegionLayout(tuple(Region(r.name, r.frames or stream_frames, r.evict) for r in self.regions))

    def position_policy(self, layout: RegionLayout, chunk_frames: int) -> PositionPolicy:
        if self.positions == "absolute":
            return AbsolutePositions()
        origin = self.query_origin if self.query_origin is not None else layout.num_slots - chunk_frames
        return BlockRelativePositions(query_origin=origin, pinned_regions=self.pinned_regions)

    def switch_strategy(self, override: str | None = None) -> SwitchStrategy:
        name = override or self.switch
        if name not in STRATEGIES:
            raise ValueError(f"unknown switch strategy {name!r}; known: {list(STRATEGIES)}")
        return STRATEGIES[name](**(self.switch_options if name == self.switch else {}))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "CachePreset":
        try:
            regions = tuple(
                RegionSpec(r["name"], None if r["frames"] == "auto" else int(r["frames"]), bool(r.get("evict", False)))
                for r in data["regions"]
            )
            known = {"name", "regions", "positions", "switch", "query_origin", "pinned_regions", "description",
                     "switch_options"}
            unknown = set(data) - known
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            return cls(
                name=str(data["name"]),
                regions=regions,
                positions=data.get("positions", "absolute"),
                switch=data.get("switch", "none"),
                query_origin=data.get("query_origin"),
                pinned_regions=tuple(data.get("pinned_regions", ("sink",))),
                description=data.get("description", ""),
                switch_options=dict(data.get("switch_options") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"invalid cache preset {source}: {err}") from err


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | CachePreset) -> CachePreset:
    """A preset by name (``configs/cache/NAME.yaml``) or by path to a YAML file."""
    if isinstance(name_or_path, CachePreset):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown cache preset {name_or_path!r}; available: {available_presets()}")
    return CachePreset.from_dict(yaml.safe_load(path.read_text()), source=str(path))
