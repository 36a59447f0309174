"""StreamEngine: the state of one live stream and the story of one chunk.

One chunk, start to end (:meth:`StreamEngine.generate_chunk`):

1. the cache places the chunk's frames (evicting per its regions) and the position policy gives every key and
   query frame its temporal RoPE index;
2. the sampler denoises the chunk's noise in a few steps; every transformer call reads the cache and writes the
   chunk's own (noisy) K/V into its slots;
3. the clean chunk is run once more at the context timestep, leaving its clean K/V in the cache;
4. the clean latents are kept in a bounded history, so a switch strategy can re-encode them under a new prompt;
5. the preset's switch strategy and between-switch memory run their per-chunk step (they have also seen the first
   denoising pass's queries in step 2, where Echo-Forcing's hierarchical memory chose the compressed history each
   layer reads, and the clean pass's in step 3).

At a prompt switch (:meth:`StreamEngine.set_prompt`) the cross-attention K/V are replaced, then the switch strategy
rewrites the cache and the memory starts the new scene. The mechanisms only ever see the stream's
:class:`~streamgen.cache.context.StreamContext`, and the engine calls every hook of their contract
(:mod:`streamgen.cache.mechanisms`) unconditionally. Everything is preallocated: memory does not grow with stream
length.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .cache.context import StreamContext
from .cache.kv_cache import KVCache
from .cache.mechanisms import BetweenSwitchMemory, CacheMechanism, PositionPolicy, SwitchStrategy
from .cache.presets import CachePreset
from .models.causal_wan import CausalWanTransformer3DModel, ChunkRotary, PromptKV
from .sampling import flow_from_sample
from .transitions import Transition


class LatentHistory:
    """The clean latents of the last ``capacity`` frames, in a preallocated ring [B, C, capacity, h, w]."""

    def __init__(self, capacity: int, like: torch.Tensor):
        batch, channels, _, height, width = like.shape
        self.capacity = capacity
        self.latents = torch.zeros(batch, channels, capacity, height, width, dtype=like.dtype, device=like.device)
        self.frame_of_slot = [-1] * capacity

    def push(self, first_frame: int, latents: torch.Tensor) -> None:
        for i in range(latents.shape[2]):
            slot = (first_frame + i) % self.capacity
            self.latents[:, :, slot] = latents[:, :, i]
            self.frame_of_slot[slot] = first_frame + i

    def holds(self, frame: int) -> bool:
        return self.frame_of_slot[frame % self.capacity] == frame

    def get(self, frames: list[int]) -> torch.Tensor:
        missing = [f for f in frames if not self.holds(f)]
        if missing:
            raise KeyError(f"latent frames {missing} are no longer in the history (it keeps {self.capacity})")
        return self.latents[:, :, [f % self.capacity for f in frames]]


class StreamEngine:
    def __init__(
        self,
        transformer: CausalWanTransformer3DModel,
        preset: CachePreset,
        sampler,
        *,
        batch_size: int,
        latent_channels: int,
        latent_height: int,
        latent_width: int,
        chunk_frames: int,
        stream_frames: int | None = None,
        switch: str | None = None,
        generator: torch.Generator | None = None,
    ):
        """``switch`` overrides the preset's switch strategy by name (checked as a loaded preset is)."""
        self.transformer = transformer
        self.sampler = sampler
        self.chunk_frames = chunk_frames
        self.latent_hw = (latent_height, latent_width)
        self.stream_frames = stream_frames  # None: open-ended
        self.generator = generator
        if switch is not None:
            preset = preset.with_switch(switch)
        self.preset = preset

        layout = preset.stream_layout(stream_frames)
        if layout.num_slots < chunk_frames:
            raise ValueError(f"cache preset {preset.name!r} holds {layout.num_slots} frames, fewer than a chunk ({chunk_frames})")
        positions = preset.position_policy(layout, chunk_frames)
        switch_strategy, memory = preset.switch_strategy(), preset.between_switch_memory()
        # Keys that never move and that no mechanism reads are rotated once, when written, not at every read.
        keys_roped = positions.stable_key_positions and not (switch_strategy.reads_keys or memory.reads_keys)
        self.cache = KVCache(
            layout,
            num_layers=len(transformer.blocks),
            batch_size=batch_size,
            tokens_per_frame=transformer.tokens_per_frame(latent_height, latent_width),
            num_heads=transformer.num_heads,
            head_dim=transformer.head_dim,
            dtype=transformer.dtype,
            device=transformer.device,
            keys_roped=keys_roped,
        )
        self.context = StreamContext(
            cache=self.cache,
            positions=positions,
            switch=switch_strategy,
            memory=memory,
            chunk_frames=chunk_frames,
            rope_range=preset.rope_range,  # resolved: position_policy() refuses 'auto'
            temporal_frequencies=transformer._rope().inv_t,
            reencode=self.reencode,
        )
        like = torch.empty(batch_size, latent_channels, 1, latent_height, latent_width, device=transformer.device)
        self.history = LatentHistory(layout.num_slots, like)
        self.prompt_kv: PromptKV | None = None
        # What the transformer predicts: "flow" (v = noise - x0, Wan and every release) or "sample" (x0; converted to
        # the flow the samplers step with, see streamgen.sampling.flow_from_sample).
        self.prediction_type = "flow"
        # Classifier-free guidance: v = v_neg + scale * (v - v_neg); off at scale 1.
        self.guidance_scale = 1.0
        self.negative_prompt_kv: PromptKV | None = None
        self.transformer_seconds = 0.0  # wall time inside transformer forwards (for overhead accounting)
        # On GPUs the time is only exact if every forward waits for its kernels, which costs overlap: benchmarks only.
        self.synchronize_timing = False
        self._first_pass = False  # the next forward is a chunk's first denoising pass
        # While a chunk is denoised, the temporal RoPE positions it runs at: (attended key frames, their positions, the
        # chunk's query positions), for whoever wraps the sampler (the erasure's rollout recorder); None between
        # chunks, so it is never part of a stream's state.
        self.chunk_positions: tuple[list[tuple[int, str]], torch.Tensor, torch.Tensor] | None = None
        # A camera-controlled stream's camera (streamgen.camera_control.StreamCamera): every forward of a run of
        # frames gets their camera tokens. None: no camera conditioning.
        self.camera = None
        self._camera_tokens: torch.Tensor | None = None
        for mechanism in self.context.mechanisms:
            mechanism.attach(self.context)

    # ---- what the mechanisms see, read-only here ---------------------------------------------------------------
    @property
    def frame(self) -> int:
        """Latent frames generated (or prefilled) so far."""
        return self.context.frame

    @property
    def prompt(self) -> str | None:
        return self.context.prompt

    @property
    def recall_scene(self) -> int | None:
        return self.context.recall_scene

    @property
    def positions(self) -> PositionPolicy:
        return self.context.positions

    @property
    def switch_strategy(self) -> SwitchStrategy:
        return self.context.switch

    @property
    def memory(self) -> BetweenSwitchMemory:
        return self.context.memory

    @property
    def mechanisms(self) -> tuple[CacheMechanism, ...]:
        return self.context.mechanisms

    # ---- prompts ------------------------------------------------------------------------------------------------
    def set_prompt(
        self, prompt_kv: PromptKV, transition: Transition | str = Transition.SMOOTH, *, prompt: str | None = None,
        recall_scene: int | None = None, switch_index: int | None = None,
    ) -> None:
        """Use ``prompt_kv`` from the next chunk on; after the first prompt this is a switch, entered with
        ``transition``. ``prompt`` (its text) and ``recall_scene`` (the id of the scene a recall brings back; scenes
        count from 0 at every switch) are for mechanisms that remember scenes; ``switch_index`` (the latent frame a
        schedule asked for, before the switch moved to this chunk boundary) for those that time from it."""
        transition = Transition(transition)
        switching = self.prompt_kv is not None and self.frame > 0
        self.prompt_kv = prompt_kv
        self.context.prompt = prompt
        self.context.recall_scene = recall_scene
        self.context.switch_index = switch_index
        if switching:
            for mechanism in self.mechanisms:
                mechanism.on_switch(self.context, transition)

    # ---- chunks -------------------------------------------------------------------------------------------------
    def generate_chunk(self, noise: torch.Tensor) -> torch.Tensor:
        """Denoise ``noise`` [B, C, f, h, w] into the next f clean latent frames, writing their K/V to the cache."""
        if self.prompt_kv is None:
            raise RuntimeError("set_prompt() must be called before generating")
        frames = list(range(self.frame, self.frame + noise.shape[2]))
        rotary = self._begin(frames, observed=True)
        self._first_pass = True
        try:
            x0 = self.sampler.sample(lambda x, t: self._guided(x, t, rotary), noise, self.generator)
        finally:
            self.chunk_positions = None
        self._forward(x0, self.sampler.context_timestep, rotary, observer=self._observe_query)
        self.history.push(self.frame, x0)
        self.context.frame += len(frames)
        for mechanism in self.mechanisms:
            mechanism.after_chunk(self.context)
        return x0

    def prefill(self, latents: torch.Tensor) -> None:
        """Push clean context latents [B, C, n, h, w] (an encoded picture or clip) into the cache as the stream's
        next n frames, so generation continues from them."""
        frames = list(range(self.frame, self.frame + latents.shape[2]))
        for start in range(0, len(frames), self.chunk_frames):
            run = frames[start : start + self.chunk_frames]
            rotary = self._begin(run)
            clean = latents[:, :, start : start + len(run)]
            self._forward(clean, self.sampler.context_timestep, rotary)
            self.history.push(run[0], clean)
        self.context.frame += len(frames)

    def reencode(self, frames: list[int], in_place: bool = False, joint: bool = False) -> None:
        """Rewrite the K/V of already generated ``frames`` from their clean latents under the current prompt: placed
        into the cache as new frames are, or (``in_place``) in the slots of whatever region holds them now. Chunk by
        chunk, each attending to the chunks before it; ``joint``: in one pass, every frame attending to all of them
        (LongLive's re-cache, whose KV-cache attention applies no mask)."""
        step = len(frames) if joint else self.chunk_frames
        runs = [frames[start : start + step] for start in range(0, len(frames), max(step, 1))]
        for run in runs:
            rotary = self._begin(run, in_place)
            self._forward(self.history.get(run), self.sampler.context_timestep, rotary)

    def _begin(self, frames: list[int], in_place: bool = False, observed: bool = False) -> ChunkRotary:
        if self.camera is not None:
            self._camera_tokens = self.camera.tokens(frames, self.history.latents.shape[0])
        if in_place:
            self.cache.begin_rewrite(frames)
        else:
            self.cache.begin_chunk(frames)
        attended = self.cache.attention_frames()
        key_pos, query_pos = self.context.positions(attended, frames)
        if observed:
            self.chunk_positions = (attended, key_pos, query_pos)
        return self.transformer.rotary(None if self.cache.keys_roped else key_pos, query_pos, *self.latent_hw)

    def _guided(self, x: torch.Tensor, t: float, rotary: ChunkRotary) -> torch.Tensor:
        """The flow at (x, t): the transformer's prediction, guided, as a flow whatever the model predicts."""
        if self.guidance_scale == 1.0 or self.negative_prompt_kv is None:
            out = self._forward(x, t, rotary)
        else:
            # Both passes write the chunk's own K/V before reading, so each sees itself plus the shared past; the
            # conditional clean pass that follows sampling leaves the conditional K/V in the cache. Guidance is
            # linear, so mixing x0 predictions and mixing flows are the same thing.
            negative = self._forward(x, t, rotary, self.negative_prompt_kv)
            out = self._forward(x, t, rotary)
            out = negative + self.guidance_scale * (out - negative)
        if self.prediction_type == "sample":
            return flow_from_sample(x, out, t / self.sampler.num_train_timesteps)
        return out

    def _observe_first_query(self, layer: int, q: torch.Tensor) -> None:
        for mechanism in self.mechanisms:
            mechanism.observe_first_query(layer, q)

    def _observe_query(self, layer: int, q: torch.Tensor) -> None:
        for mechanism in self.mechanisms:
            mechanism.observe_query(layer, q)

    def _forward(
        self, x: torch.Tensor, t: float, rotary: ChunkRotary, prompt_kv: PromptKV | None = None,
        observer: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """One transformer pass over the chunk; ``observer(layer, q)`` sees its queries (the clean pass's)."""
        start = time.perf_counter()
        if self._first_pass:  # the chunk's first denoising pass (a hierarchical memory picks its history here)
            observer, self._first_pass = self._observe_first_query, False
        prompt_kv = prompt_kv or self.prompt_kv
        residuals = None if self.camera is None else self.camera.residuals(x, t, prompt_kv)
        with torch.no_grad():
            out = self.transformer.forward_chunk(
                x, t, prompt_kv, self.cache, rotary, query_observer=observer,
                camera_tokens=self._camera_tokens, block_residuals=residuals,
            )
        if self.synchronize_timing and out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.transformer_seconds += time.perf_counter() - start
        return out.to(x.dtype)
