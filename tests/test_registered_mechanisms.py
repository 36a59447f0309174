"""The shared battery: every shipped preset, and through them every registered position policy, switch strategy and
between-switch memory, streams through a switch of each transition on the tiny random pipeline, reproducibly, with
bounded, preallocated memory and every position finite (inside the trained range where the preset states one). A
new preset or mechanism is tested by shipping or registering it: nothing here names one."""

import math

import pytest
import torch

from streamgen.cache import MEMORIES, POSITION_POLICIES, SWITCH_STRATEGIES, available_presets, load_preset
from streamgen.schedule import Schedule, Segment
from streamgen.tiny import build_tiny_pipeline
from streamgen.transitions import TRANSITIONS

from recording_engine import RecordingPositions

CHUNK = 3  # the tiny pipeline's chunk_frames; a pixel-space VAE makes latent frames video frames
SCENE_CHUNKS = 2  # per segment: each switch is followed by one chunk more than a switch strategy acts on
PRESETS = available_presets()
KINDS = {"positions": POSITION_POLICIES, "switch": SWITCH_STRATEGIES, "memory": MEMORIES}


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(height=16, width=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def every_transition() -> Schedule:
    """A first scene, then one switch of each transition (a recall brings the first scene's prompt back)."""
    prompts = ["a red circle", "a blue square", "a green triangle", "a red circle"]
    entries = ("cut", *TRANSITIONS)
    frames = SCENE_CHUNKS * CHUNK
    return Schedule(tuple(Segment(p, frames, "latent_frames", transition=t) for p, t in zip(prompts, entries)), seed=0)


class RecordingSwitch:
    """Wraps a switch strategy, keeping the transition of every switch it is asked to make."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.transitions = []

    def __getattr__(self, name):  # every other hook and capability reaches the wrapped strategy
        return getattr(self.strategy, name)

    def on_switch(self, ctx, transition):
        self.transitions.append(transition.value)
        self.strategy.on_switch(ctx, transition)


def play(pipe, name):
    """The stream's latents [B, C, total, h, w], what it recorded, and its tensors' (addresses, bytes) before and
    after it played."""
    schedule = every_transition()
    stream = pipe.stream(schedule=schedule, num_frames=SCENE_CHUNKS * CHUNK * len(schedule.segments), cache=name)
    context = stream.engine.context
    positions = context.positions = RecordingPositions(context.positions)
    switch = context.switch = RecordingSwitch(context.switch)

    def kept():
        return (context.cache.k.data_ptr(), context.cache.v.data_ptr()), stream.memory_bytes

    before = kept()
    latents = torch.cat([chunk.latents for chunk in stream], dim=2)
    return latents, positions, switch, (before, kept())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_streams_every_transition_reproducibly_in_constant_memory(pipe, name):
    latents, recorded, switch, (before, after) = play(pipe, name)
    assert latents.shape[2] == SCENE_CHUNKS * CHUNK * (1 + len(TRANSITIONS)) and torch.isfinite(latents).all()
    assert switch.transitions == list(TRANSITIONS)
    assert after == before  # the same tensors, the same bytes: nothing grew
    rope_range = pipe.cache_preset(name).rope_range
    for key_frames, query_frames, keys, queries in recorded.calls:
        assert len(keys) == len(key_frames) and len(queries) == len(query_frames)
        assert all(math.isfinite(p) for p in keys + queries)
        if rope_range is not None:
            assert all(0 <= p < rope_range for p in keys + queries), (key_frames, keys)
    assert torch.equal(play(pipe, name)[0], latents)


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, registry in KINDS.items() for name in registry])
def test_every_registered_mechanism_is_played_by_a_shipped_preset(kind, name):
    players = [preset for preset in PRESETS if getattr(load_preset(preset), kind) == name]
    assert players, f"no shipped preset plays {kind}: {name}; add one to streamgen/presets/ (see CONTRIBUTING.md)"
