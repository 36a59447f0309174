"""The tiered KV cache engine: regions, position policies, switch strategies, presets."""

from .kv_cache import KVCache
from .positions import AbsolutePositions, BlockRelativePositions, PositionPolicy
from .presets import CachePreset, RegionSpec, available_presets, load_preset
from .regions import CacheFullError, Region, RegionLayout
from .switching import KeepCache, Recache, SwitchStrategy

__all__ = [
    "AbsolutePositions", "BlockRelativePositions", "CacheFullError", "CachePreset", "KVCache", "KeepCache",
    "PositionPolicy", "Recache", "Region", "RegionLayout", "RegionSpec", "SwitchStrategy", "available_presets",
    "load_preset",
]
