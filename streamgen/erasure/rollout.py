"""States z for the erasure objective from *streaming rollouts*: the frozen model plays real streams (its engine, its
cache preset, its switches) and every sampler step of the chunks that show the concept is recorded, together with
the clean frames the stream had already played before that chunk. What is erased is then the concept *in
context*: after a cut or smooth switch into it, and chunks deep into a stream that shows it, not only a first chunk.

How: :class:`RecordingSampler` wraps one stream's ``engine.sampler`` (per instance; the engine is unchanged). The
engine calls ``sampler.sample(denoise, noise, generator)`` once per chunk; the wrapper passes every call through
and, when the chunk is one to record, keeps the state ``x`` and timestep ``t`` before each model call, the chunk's
first latent frame and the clean latents of the frames the chunk attends to (from the engine's latent history, the
most recent ``max_context`` of them, a whole number of chunks), with the temporal RoPE positions the stream gave
them and the chunk. Sampling itself is untouched, so a recorded stream's
frames equal an unrecorded one's.

Each recorded chunk gives one :class:`ChunkRecord`; :func:`to_states` turns records into
:class:`~streamgen.erasure.objective.ErasureStates` with ``context_frames`` (the clean frames first, at the
sampler's context timestep, then the noisy chunk at ``t``), the stream's temporal positions (shifted to start at 0:
RoPE sees only offsets; whatever the preset's position policy: a sink's older frames, tri-region or scene-relative
indices) and ``progress`` i / N for the i-th of N sampler steps.

Guidance: ANT samples its training trajectories with classifier-free guidance 3 (:data:`ANT_GUIDANCE_SCALE`); the
rollout streams are started with it against the empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..schedule import Schedule, Segment
from .objective import ErasureStates
from .states import ANT_GUIDANCE_SCALE


@dataclass
class ChunkRecord:
    """One recorded chunk: ``states`` [N, B, C, f, h, w] before each of N model calls at ``timesteps`` [N];
    ``context`` [B, C, k, h, w] the clean latents of the k frames before it that it attends to (k a multiple of the
    chunk size, possibly 0); ``start`` its first latent frame; ``prompt`` the prompt playing; ``chunk`` its index;
    ``positions`` [k + f] the temporal RoPE positions the stream gave the context frames and the chunk's, less the
    smallest (None: 0..k+f-1)."""

    states: torch.Tensor
    timesteps: list[float]
    context: torch.Tensor
    start: int
    prompt: str | None
    chunk: int
    tag: str = ""
    positions: torch.Tensor | None = None

    @property
    def position_key(self) -> tuple[float, ...]:
        """The positions as a tuple (records of one batch must share them), 0..k+f-1 when not recorded."""
        if self.positions is None:
            return tuple(float(i) for i in range(self.context_frames + self.states.shape[3]))
        return tuple(self.positions.tolist())

    @property
    def context_frames(self) -> int:
        return self.context.shape[2]


class RecordingSampler:
    """A stream's sampler, recording the chunks ``record(chunk_index, prompt)`` says yes to (default: every one).

    Install with :func:`record_stream`; everything but ``sample`` is the wrapped sampler's (timesteps, steps, ...)."""

    def __init__(self, engine, inner, max_context: int, record=None):
        # _clean: the clean latents of the frames the stream still attends to, from every chunk this sampler made (the
        # engine's latent history keeps only the most recent frames: a sink's are gone from it long before the cache
        # drops them).
        self.__dict__.update(_engine=engine, _inner=inner, max_context=max_context, records=[],
                             _record=record or (lambda chunk, prompt: True), _chunk=0, _clean={})

    def __getattr__(self, name):
        return getattr(self.__dict__["_inner"], name)

    def sample(self, denoise, noise: torch.Tensor, generator):
        engine, chunk = self._engine, self._chunk
        self.__dict__["_chunk"] = chunk + 1
        start = engine.frame
        attended, key_pos, query_pos = engine.chunk_positions  # as the engine placed this chunk
        if not self._record(chunk, engine.prompt):
            return self._keep_clean(start, self._inner.sample(denoise, noise, generator), attended)
        f = engine.chunk_frames
        before = [frame for frame in sorted({frame for frame, _ in attended if frame < start})
                  if frame in self._clean or engine.history.holds(frame)]
        keep = min(len(before), self.max_context) // f * f
        frames = before[len(before) - keep:] if keep else []
        context = (torch.cat([self._clean[frame] if frame in self._clean else engine.history.get([frame])
                              for frame in frames], 2).clone() if frames
                   else noise.new_zeros(*noise.shape[:2], 0, *noise.shape[3:]))
        of_frame = {frame: float(p) for (frame, _), p in zip(attended, key_pos) if frame < start}
        positions = torch.tensor([of_frame[frame] for frame in frames] + query_pos.tolist(), dtype=torch.float64)
        visited: list[tuple[torch.Tensor, float]] = []

        def recording(x: torch.Tensor, t: float) -> torch.Tensor:
            visited.append((x.detach().clone(), float(t)))
            return denoise(x, t)

        out = self._inner.sample(recording, noise, generator)
        self.records.append(ChunkRecord(torch.stack([x for x, _ in visited]), [t for _, t in visited], context,
                                        start, engine.prompt, chunk, positions=positions - positions.min()))
        return self._keep_clean(start, out, attended)

    def _keep_clean(self, start: int, x0: torch.Tensor, attended: list[tuple[int, str]]) -> torch.Tensor:
        """Keep the chunk's clean latents ``x0`` (frames ``start``...) and forget frames no longer attended."""
        clean = self._clean
        for j in range(x0.shape[2]):
            clean[start + j] = x0[:, :, j:j + 1].detach().clone()
        held = {frame for frame, _ in attended}
        for frame in [frame for frame in clean if frame not in held]:
            del clean[frame]
        return x0


def record_stream(stream, max_context: int = 12, record=None) -> RecordingSampler:
    """Wrap ``stream.engine.sampler`` in a :class:`RecordingSampler` (this stream only) and return it."""
    sampler = RecordingSampler(stream.engine, stream.engine.sampler, max_context, record)
    stream.engine.sampler = sampler
    return sampler


@dataclass(frozen=True)
class Rollout:
    """One stream to play: ``parts`` (prompt, chunks, transition) in order, generator ``seed``; the chunks played
    under a prompt of ``record_prompts`` are recorded (all of them, or those listed in ``record_chunks``)."""

    parts: tuple[tuple[str, int, str], ...]
    seed: int
    record_prompts: tuple[str, ...]
    record_chunks: tuple[int, ...] | None = None
    tag: str = ""
    neutral: dict = field(default_factory=dict, compare=False, hash=False)  # prompt -> its neutral caption


def play_rollout(pipe, rollout: Rollout, *, cache: str | None = None, guidance_scale: float = ANT_GUIDANCE_SCALE,
                 max_context: int = 12, num_inference_steps: int | None = None) -> list[ChunkRecord]:
    """Play ``rollout`` through ``pipe.stream`` (schedule with its switches, the real engine and cache) and return
    the records of its recorded chunks."""
    chunk_frames = int(pipe.config.chunk_frames)
    schedule = Schedule(tuple(Segment(prompt, chunks * chunk_frames, "latent_frames", transition=mode)
                              for prompt, chunks, mode in rollout.parts))
    total_latent = sum(chunks for _, chunks, _ in rollout.parts) * chunk_frames
    generator = torch.Generator().manual_seed(rollout.seed)
    stream = pipe.stream(schedule=schedule, num_frames=pipe.num_video_frames(total_latent), cache=cache,
                         generator=generator, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    wanted = set(rollout.record_prompts)
    chunks = None if rollout.record_chunks is None else set(rollout.record_chunks)
    sampler = record_stream(stream, max_context,
                            lambda chunk, prompt: prompt in wanted and (chunks is None or chunk in chunks))
    with torch.no_grad():
        for _ in stream:
            pass
    for record in sampler.records:
        record.tag = rollout.tag
    return sampler.records


def to_states(records: Sequence[ChunkRecord], steps: Sequence[int] | None = None,
              context_timestep: float = 0.0) -> ErasureStates:
    """Stack sampler steps ``steps`` (default all) of ``records`` (all with one context length) into
    :class:`ErasureStates`: per state [1 + ...] batch entries, record-major then step."""
    return states_at([(r, i) for r in records for i in (range(r.states.shape[0]) if steps is None else steps)],
                     context_timestep)


def states_at(picks: Sequence[tuple[ChunkRecord, int]], context_timestep: float = 0.0) -> ErasureStates:
    """:class:`ErasureStates` of the (record, sampler step) ``picks``, in order: the record's clean context at
    ``context_timestep``, then its state before that step; ``progress`` step / steps. The records must share their
    context length and temporal positions (one batch runs one forward)."""
    if not picks:
        raise ValueError("no records to turn into states")
    k = {r.context_frames for r, _ in picks}
    if len(k) != 1:
        raise ValueError(f"records of one batch must share their context length, got {sorted(k)}")
    (k,) = k
    if len({r.position_key for r, _ in picks}) != 1:
        raise ValueError("records of one batch must share their temporal positions (one preset, one place in a "
                         "stream's cache)")
    latents, timesteps, progress = [], [], []
    for record, i in picks:
        x = record.states[i]
        latents.append(torch.cat((record.context.to(x.dtype), x), 2))
        t = torch.tensor([context_timestep] * k + [record.timesteps[i]] * x.shape[2], dtype=torch.float32)
        timesteps.append(t[None].expand(x.shape[0], -1))
        progress.append(torch.full((x.shape[0],), i / record.states.shape[0], dtype=torch.float64))
    return ErasureStates(torch.cat(latents), torch.cat(timesteps), torch.cat(progress), context_frames=k,
                         positions=torch.tensor(picks[0][0].position_key, dtype=torch.float64))
