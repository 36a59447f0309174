"""The tiered KV cache engine: regions, and the mechanisms a preset combines on them (position policies, switch
strategies, between-switch memories; their contract is :mod:`streamgen.cache.mechanisms`). Importing the package
registers the built-in mechanisms."""

from .context import StreamContext
from .kv_cache import KVCache
from .mechanisms import (
    JUMP, MEMORIES, POSITION_POLICIES, SWITCH_STRATEGIES, BetweenSwitchMemory, CacheMechanism, NoMemory,
    PositionPolicy, PresetPlan, SwitchStrategy, register_memory, register_position_policy, register_switch_strategy,
)
from .positions import AbsolutePositions, BlockRelativePositions, SceneRelativePositions, TriRegionPositions
from .presets import CachePreset, RegionSpec, available_presets, load_preset
from .regions import CacheFullError, Region, RegionLayout
# The built-in mechanisms register as they are imported; this order is the order messages and --help list them.
from .switching import Flush, KeepCache, Recache
from .anchor_switch import AnchorRecache
from .scene_switch import SceneMemorySwitch
from .temporal_memory import HierarchicalMemory

__all__ = [
    "AbsolutePositions", "AnchorRecache", "BetweenSwitchMemory", "BlockRelativePositions", "CacheFullError",
    "CacheMechanism", "CachePreset", "Flush", "HierarchicalMemory", "JUMP", "KVCache", "KeepCache", "MEMORIES",
    "NoMemory", "POSITION_POLICIES", "PositionPolicy", "PresetPlan", "Recache", "Region", "RegionLayout", "RegionSpec",
    "SWITCH_STRATEGIES", "SceneMemorySwitch", "SceneRelativePositions", "StreamContext", "SwitchStrategy",
    "TriRegionPositions", "available_presets", "load_preset", "register_memory", "register_position_policy",
    "register_switch_strategy",
]
