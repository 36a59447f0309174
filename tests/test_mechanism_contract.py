"""The plug-in contract of the cache mechanisms: the engine calls every hook, in a fixed order, with the stream's
context; registries find mechanisms by name; what a mechanism needs from the others is checked when its preset
loads; presets may extend one another."""

from dataclasses import dataclass

import pytest

from streamgen.cache import (
    MEMORIES, SWITCH_STRATEGIES, BetweenSwitchMemory, CachePreset, PositionPolicy, SwitchStrategy, load_preset,
)
from streamgen.cache.registry import Registry
from streamgen.transitions import Transition

from recording_engine import generate, make_engine

ROLLING = [{"name": "sink", "frames": 3}, {"name": "window", "frames": 9, "evict": True}]


# ---- the engine calls every hook, in order --------------------------------------------------------------------------
@dataclass
class Spy:
    """Keeps (mechanism, hook, detail) for every hook the engine calls."""

    events: list
    name: str

    def attach(self, ctx):
        self.events.append((self.name, "attach", ctx.frame))

    def observe_first_query(self, layer, q):
        self.events.append((self.name, "first query", layer))

    def observe_query(self, layer, q):
        self.events.append((self.name, "query", layer))

    def after_chunk(self, ctx):
        self.events.append((self.name, "after chunk", ctx.frame))

    def on_switch(self, ctx, transition):
        self.events.append((self.name, "switch", transition))


class SpySwitch(Spy, SwitchStrategy):
    pass


class SpyMemory(Spy, BetweenSwitchMemory):
    pass


def test_the_engine_calls_every_hook_of_both_mechanisms_in_order(tiny_wan_config, monkeypatch):
    events = []
    monkeypatch.setitem(SWITCH_STRATEGIES._classes, "spy", SpySwitch)  # registered for this test only
    monkeypatch.setitem(MEMORIES._classes, "spy", SpyMemory)
    preset = CachePreset.from_dict({"name": "spied", "regions": ROLLING, "switch": "spy", "memory": "spy",
                                    "switch_options": {"events": events, "name": "switch"},
                                    "memory_options": {"events": events, "name": "memory"}})
    engine, prompts = make_engine(tiny_wan_config, preset)
    layers = len(engine.transformer.blocks)
    assert events == [("switch", "attach", 0), ("memory", "attach", 0)]
    engine.set_prompt(prompts[0])
    generate(engine, 1)
    per_layer = lambda hook: [(m, hook, layer) for layer in range(layers) for m in ("switch", "memory")]  # noqa: E731
    chunk = per_layer("first query") + per_layer("query") + [("switch", "after chunk", 3), ("memory", "after chunk", 3)]
    assert events[2:] == chunk
    del events[:]
    engine.set_prompt(prompts[1], "CUT")  # the vocabulary's names, any case
    assert events == [("switch", "switch", Transition.CUT), ("memory", "switch", Transition.CUT)]
    with pytest.raises(ValueError, match="'sideways' is not a valid Transition"):
        engine.set_prompt(prompts[2], "sideways")


# ---- registries ---------------------------------------------------------------------------------------------------
def test_a_registry_refuses_a_taken_name_and_a_class_of_another_kind():
    registry = Registry("switch", SwitchStrategy)
    registry.register("mine")(SpySwitch)
    assert registry["mine"] is SpySwitch and list(registry) == ["mine"]
    with pytest.raises(ValueError, match="switch 'mine' is already registered"):
        registry.register("mine")(SpySwitch)
    with pytest.raises(TypeError, match="must be a subclass of SwitchStrategy"):
        registry.register("memory")(SpyMemory)
    with pytest.raises(ValueError, match=r"unknown switch 'yours'; known: \['mine'\]"):
        registry["yours"]


def test_a_policy_without_the_jump_capability_says_so():
    policy = load_preset("rolling").position_policy(load_preset("rolling").layout(), chunk_frames=3)
    assert isinstance(policy, PositionPolicy)
    with pytest.raises(NotImplementedError, match="AbsolutePositions cannot jump"):
        policy.jump_next_chunk(3)


# ---- needs, checked once, when the preset loads --------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"switch": "recache"}, r"memory 'hierarchical': temporal memory: the scene recorder keeps 0 frames"),
        ({"positions": "tri-region"}, r"switch 'scene-memory' needs positions: scene-relative \(a policy that can"),
        ({"memory_options": {"anchor_region": "sink"}}, r"memory 'hierarchical': .*region 'sink' must be an external"),
        ({"position_options": {"origin": 3}}, r"positions 'scene-relative', position_options: .*'origin'"),
        ({"memory": "teleport"}, r"unknown memory 'teleport'; known: \['none', 'hierarchical'"),
    ],
)
def test_what_a_mechanism_needs_is_checked_at_load_naming_the_file_and_key(tmp_path, changes, message):
    path = tmp_path / "child.yaml"
    path.write_text(f"extends: echo-forcing\nname: child\n{_yaml(changes)}")
    with pytest.raises(ValueError, match=message) as err:
        load_preset(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_switch_override_is_checked_as_a_loaded_preset_is():
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(height=16, width=16)
    with pytest.raises(ValueError, match="cache preset 'rolling': switch 'anchor-recache': anchor_region 'junction'"):
        pipe.stream("a red circle", num_frames=3, cache="rolling", switch="anchor-recache")
    with pytest.raises(ValueError, match=r"unknown switch 'teleport'; known: \['none', 'recache'"):
        pipe.stream("a red circle", num_frames=3, cache="rolling", switch="teleport")


def test_a_whole_stream_preset_checks_its_mechanisms_once_the_stream_sizes_it():
    preset = CachePreset.from_dict({"name": "whole", "regions": [{"name": "history", "frames": "auto"}],
                                    "switch": "anchor-recache"})  # nothing to check the junction against yet
    with pytest.raises(ValueError, match="cache preset 'whole': switch 'anchor-recache': anchor_region 'junction'"):
        preset.stream_layout(21)


# ---- extends -------------------------------------------------------------------------------------------------------
def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False) if data else ""


def test_a_preset_extends_another_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: echo-forcing\nname: base\ndescription: a base\n"
                                        "switch_options: {pool_size: 8}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nswitch_options: {modes: {cut: {jump: 9}}}\n"
                     "memory_options: {max_reuse: 2}\n")
    echo, preset = load_preset("echo-forcing"), load_preset(str(child))
    assert (preset.name, preset.description) == ("child", "")  # a file's own name and description are its own
    assert preset.switch_options["pool_size"] == 8 and preset.switch_options["modes"]["cut"]["jump"] == 9
    assert preset.switch_options["modes"]["cut"]["carry"] == echo.switch_options["modes"]["cut"]["carry"]
    assert preset.memory_options == {**echo.memory_options, "max_reuse": 2} and preset.regions == echo.regions


def test_naming_another_mechanism_starts_its_options_afresh(tmp_path):
    path = tmp_path / "flushing.yaml"
    path.write_text("extends: infinity-rope\nname: flushing\nswitch: recache\n")
    assert load_preset("infinity-rope").switch_options == {"keep_recent": 2}
    assert load_preset(str(path)).switch_options == {}  # keep_recent is flush's, not recache's


def test_the_shipped_streamgen_preset_is_echo_forcing_with_an_anchor_instead_of_the_hierarchical_memory():
    echo, ours = load_preset("echo-forcing"), load_preset("streamgen")
    assert (ours.switch, ours.positions, ours.memory) == ("scene-memory", "scene-relative", "none")
    assert {**ours.switch_options, "modes": None} == {**echo.switch_options, "modes": None}


def test_an_extends_loop_or_a_missing_base_fails_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ValueError, match=r"b.yaml: extends loops back to .*a.yaml"):
        load_preset(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: nowhere\nname: c\n")
    with pytest.raises(ValueError, match=r"c.yaml: extends: no preset 'nowhere'; shipped: \["):
        load_preset(str(tmp_path / "c.yaml"))
