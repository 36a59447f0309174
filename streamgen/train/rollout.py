"""Training on the model's own rollouts: the context a live stream really shows the model is its own output.

Teacher forcing trains every chunk against clean TRUE frames; at inference the context is what the model drew, with
its faint objects and small errors, and those compound chunk after chunk (exposure bias). A rollout step closes that
gap (the central idea of Self-Forcing, here with a target that needs no teacher model):

1. each clip of the batch shows ``true_chunks`` chunks of true frames (a number drawn per step, may be 0), then the
   model continues them for ``generated_chunks`` chunks through the real streaming engine and the exported cache
   preset (no grad, ``sampler_steps`` Euler steps): exactly what a user's stream computes;
2. a :class:`TargetProvider` says what the NEXT chunk should be, given what was played. ShapeWorld's
   (:class:`ShapeWorldTargets`) reads the object's state off the last generated frame with the oracle (position, size,
   decoration: the model's own choices where the prompt is silent) and renders the prompt's object (colour, shape,
   motion) correctly from there: the model learns to repair a faint or wrong object and keep it moving, instead of
   copying its context. A provider for footage with no oracle (distribution matching against a teacher, as
   Self-Forcing's DMD) plugs in at the same place;
3. the next chunk is trained, noisy, after the played frames, clean, in one block-causal forward (loss on that chunk).

A rollout is replayed for ``replay`` steps (fresh noise on the target each time) to amortise its cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..world.data import ShapeWorldClips
from ..world.oracle import read_frames, read_segment
from ..world.render import ClipSegment, centroid_offset, render_clip
from ..world.scenes import OBJECT_COLORS, RESOLUTION, SIZES, Details, Scene


@dataclass
class Rollout:
    """What one rollout step trains on: clean played latents [B, C, F, H, W] (true chunks, then generated ones), the
    clean target of the next chunk [B, C, chunk, H, W], the clips' text states [B, L, D], and the timestep the engine
    wrote the played frames into its cache at (they are trained as that: clean context)."""

    played: torch.Tensor
    target: torch.Tensor
    text_states: torch.Tensor
    true_frames: int
    context_timestep: float


class TargetProvider(Protocol):
    """The clean next chunk for each played clip: uint8 [B, chunk, H, W, 3] from uint8 played frames [B, F, H, W, 3]
    (the first ``true_frames`` are the data's, the rest the model's) and the clips they continue."""

    def __call__(self, clips: list, played: np.ndarray, true_frames: int, chunk: int) -> np.ndarray: ...


class ShapeWorldTargets:
    """Oracle-corrected continuation: the prompt's object, continued from where and how big the model drew it.

    Read off the generated frames: the object's centroid and size class in the last one, the decoration (majority over
    them). Where the oracle finds no object in the last frame, the target is the true continuation of the clip."""

    def __call__(self, clips: list, played: np.ndarray, true_frames: int, chunk: int) -> np.ndarray:
        return np.stack([self.one(clip, frames, true_frames, chunk) for clip, frames in zip(clips, played)])

    def one(self, clip, frames: np.ndarray, true_frames: int, chunk: int) -> np.ndarray:
        scene: Scene = clip.segments[0].scene
        played = len(frames)
        generated = read_frames(frames[true_frames:])
        if not bool(generated.found[-1]):
            return clip.frames[played : played + chunk]  # lost object: the truth, from where it should be
        scale = RESOLUTION / frames.shape[1]
        size = SIZES[int(generated.size_class[-1])]
        ox, oy = (float(v) for v in centroid_offset(scene.attributes.shape, float(size)))
        cx, cy = (float(v) * scale for v in generated.centroid[-1])
        segment = read_segment(generated)
        decoration, color = scene.details.decoration, scene.details.decoration_color
        if segment.decoration_xy is not None and segment.decoration_color >= 0:
            decoration = tuple(int(round(v * scale)) for v in segment.decoration_xy)
            color = OBJECT_COLORS[segment.decoration_color]
        details = Details((cx - ox) % RESOLUTION, (cy - oy) % RESOLUTION, size, decoration, color)
        continued = Scene(scene.attributes, details, scene.caption, scene.seed)
        rendered = render_clip([ClipSegment(continued, chunk + 1)], resolution=frames.shape[1]).frames
        return rendered[1:]  # frame 0 redraws the last played frame, corrected


class RolloutSource:
    """Single-scene training clips for rollouts, deterministic by step (like :class:`~streamgen.train.data.ClipSource`,
    on its own seed stream so the teacher-forcing batches do not change when rollouts are switched on)."""

    def __init__(self, config, frames: int):
        d = config.data
        self.batch_size = config.batch_size
        self.clips = ShapeWorldClips(2**62, frames, split="train", seed=config.seed + 7919, switch_probs=(1.0,),
                                     switch_multiple=config.chunk_frames, resolution=d.height)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> list:
        from .data import shard_size

        share = shard_size(self.batch_size, world)
        first = step * self.batch_size + rank * share
        return [self.clips.clip(first + i) for i in range(share)]


def to_latents(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> pixel-space latents [B, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def to_frames(latents: torch.Tensor) -> np.ndarray:
    """Pixel-space latents [B, 3, F, H, W] -> uint8 [B, F, H, W, 3] (as the pipeline decodes them)."""
    x = ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


@torch.no_grad()
def play(transformer, preset, sampler, prediction_type: str, text_states: torch.Tensor, true_latents: torch.Tensor,
         generated_chunks: int, chunk: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Stream ``generated_chunks`` chunks after ``true_latents`` [B, C, t, H, W] (t may be 0) through the engine and
    ``preset``, each clip under its own prompt; the played latents [B, C, t + generated, H, W]. ``shard``: (rank,
    processes) when the clips are one rank's share (the noise is drawn for the whole batch, this rank's rows kept)."""
    rank, world = shard
    from ..engine import StreamEngine

    batch, channels, true_frames, height, width = true_latents.shape
    total = true_frames + generated_chunks * chunk
    engine = StreamEngine(transformer, preset, sampler, batch_size=batch, latent_channels=channels,
                          latent_height=height, latent_width=width, chunk_frames=chunk, stream_frames=total,
                          generator=generator)
    engine.prediction_type = prediction_type
    engine.set_prompt(transformer.encode_prompt_kv(text_states.to(transformer.device)))
    if true_frames:
        engine.prefill(true_latents.to(transformer.device))
    out = [true_latents.to(transformer.device)]
    for _ in range(generated_chunks):
        noise = torch.randn((batch * world, channels, chunk, height, width), generator=generator)
        noise = noise[rank * batch : (rank + 1) * batch].to(transformer.device)
        out.append(engine.generate_chunk(noise).clamp(-1, 1))
    return torch.cat(out, 2)


def draw_lengths(rollout_config, chunk: int, generator: torch.Generator) -> tuple[int, int]:
    """(true chunks, generated chunks) for one step, uniform over the configured ranges."""
    lo, hi = rollout_config.true_chunks
    true_chunks = lo + int(torch.randint(hi - lo + 1, (), generator=generator))
    lo, hi = rollout_config.generated_chunks
    return true_chunks, lo + int(torch.randint(hi - lo + 1, (), generator=generator))


def make_rollout(trainer, step: int, generator: torch.Generator) -> Rollout:
    """Play one batch (see the module docstring) and ask the provider for its next chunks."""
    from ..sampling import EulerSampler

    cfg = trainer.config
    r, chunk = cfg.rollout, cfg.chunk_frames
    true_chunks, generated_chunks = draw_lengths(r, chunk, generator)
    true_frames = true_chunks * chunk
    clips = trainer.rollout_data.batch(step, trainer.accelerator.process_index, trainer.accelerator.num_processes)
    true = to_latents(np.stack([c.frames[:true_frames] for c in clips]))
    text_states = trainer.captions([c.segments[0].scene.caption for c in clips])
    transformer = trainer.accelerator.unwrap_model(trainer.model).transformer
    sampler = EulerSampler(num_inference_steps=r.sampler_steps, shift=cfg.noise.sample_shift)
    was_training = transformer.training
    transformer.eval()
    try:
        played = play(transformer, trainer.rollout_preset, sampler, cfg.model.prediction, text_states, true,
                      generated_chunks, chunk, generator, trainer.shard)
    finally:
        transformer.train(was_training)
    target = trainer.target_provider(clips, to_frames(played), true_frames, chunk)
    return Rollout(played.cpu(), to_latents(target), text_states, true_frames, sampler.context_timestep)
