"""The tiered KV cache engine: regions, position policies, switch strategies, presets."""

from .kv_cache import KVCache
from .positions import (
    AbsolutePositions, BlockRelativePositions, PositionPolicy, SceneRelativePositions, TriRegionPositions,
)
from .presets import CachePreset, RegionSpec, available_presets, load_preset
from .regions import CacheFullError, Region, RegionLayout
from .scene_switch import SceneMemorySwitch
from .switching import AnchorRecache, Flush, KeepCache, Recache, SwitchStrategy

__all__ = [
    "AbsolutePositions", "AnchorRecache", "BlockRelativePositions", "CacheFullError", "CachePreset", "Flush",
    "KVCache", "KeepCache", "PositionPolicy", "Recache", "Region", "RegionLayout", "RegionSpec",
    "SceneMemorySwitch", "SceneRelativePositions", "SwitchStrategy", "TriRegionPositions", "available_presets", "load_preset",
]
