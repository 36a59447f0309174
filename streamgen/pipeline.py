"""StreamingVideoPipeline: a diffusers pipeline that generates video chunk by chunk, live.

```py
>>> from streamgen import StreamingVideoPipeline
>>> from streamgen.resources import pipeline_path
>>> pipe = StreamingVideoPipeline.from_pretrained(pipeline_path("tiny-random"))
>>> video = pipe("a red circle drifting left over a blue backdrop", num_frames=48, cache="rolling").frames[0]

>>> stream = pipe.stream("a red circle drifting left", cache="rolling")   # open-ended, chunk by chunk
>>> for i, chunk in enumerate(stream):
...     show(chunk.frames[0])                       # uint8 [F, H, W, 3]
...     if i == 4:
...         stream.switch("a yellow square drifting right", mode="smooth")
...     if i == 10:
...         break
```
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.utils import BaseOutput

from .cache.presets import CachePreset, load_preset
from .decoding import encode_video, streaming_decoder_for, to_uint8_frames
from .device_memory import available_memory
from .engine import StreamEngine
from .erasure.lora import LoraLoaderMixin
from .models.anchor_weave import AnchorWeaveController  # noqa: F401  (diffusers loads a controller folder from here)
from .models.camera import CameraEncoder  # noqa: F401  (diffusers loads a camera_encoder folder from this module)
from .models.causal_wan import CausalWanTransformer3DModel, PromptKV
from .prompts import MAX_PROMPT_CHARS, check_prompt_length
from .sampling import PREDICTION_TYPES, EulerSampler, FewStepSampler, draw_noise
from .schedule import PlannedSegment, Schedule
from .transitions import TRANSITIONS, Transition
from .weights import check_finite_weights, check_weight_files

if TYPE_CHECKING:
    from .camera_control import CameraTrack

# An open-ended stream plans its schedule over a horizon no real stream reaches (nothing is allocated for it).
OPEN_ENDED_LATENT_FRAMES = 2**40
# The pipeline's cache of encoded prompts (cross-attention K/V shared by its streams) holds at most this much.
PROMPT_KV_CACHE_ENTRIES = 16
PROMPT_KV_CACHE_BYTES = 2**29


def _cached_bytes(cache: dict[tuple[str, int], PromptKV]) -> int:
    return sum(t.nbytes for kv in cache.values() for t in (*kv.k, *kv.v))


@dataclass
class StreamChunk:
    """One generated chunk: its decoded video and where it sits in the stream."""

    index: int
    latent_start: int  # first latent frame of the chunk in the stream (init-image/video context frames included)
    latents: torch.Tensor  # [B, C, f, h, w]
    video: torch.Tensor  # [B, 3, F, H, W] in [-1, 1]
    prompt: str

    @property
    def frames(self) -> np.ndarray:
        """uint8 [B, F, H, W, 3]."""
        return to_uint8_frames(self.video)


@dataclass
class StreamingVideoPipelineOutput(BaseOutput):
    """``frames``: [B, F, H, W, 3] float in [0, 1] ("np"), [B, F, 3, H, W] ("pt") or latents ("latent")."""

    frames: np.ndarray | torch.Tensor


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN / inf latents: the stream stops instead of decoding them into a black video."""


class VideoStream:
    """An iterator over the chunks of one live stream. Each stream owns its cache, RNG and schedule, so several
    streams of one pipeline never see each other's frames. :meth:`switch` changes the prompt before the next chunk.

    A stream has one consumer: iterating it from a second thread while a chunk is being generated raises
    RuntimeError at once (two consumers would interleave chunks through one cache). :meth:`switch` may be called
    from any thread.
    """

    def __init__(
        self,
        pipe: "StreamingVideoPipeline",
        engine: StreamEngine,
        plan: list[PlannedSegment],
        num_latent_frames: int | None,
        latents: torch.Tensor | None,
        generator: torch.Generator | None,
        callback_on_chunk_end: Callable | None = None,
        context: torch.Tensor | None = None,
    ):
        self.pipe = pipe
        self.engine = engine
        self.plan = plan
        self.num_latent_frames = num_latent_frames
        self.latents = latents
        self.generator = generator
        self.callback_on_chunk_end = callback_on_chunk_end
        self.decoder = streaming_decoder_for(pipe.vae)
        self.decoder.reset()
        self.prompt: str | None = None
        self._next_segment = 0  # the plan's segments start in order, each once
        self._pending: tuple[str, str, int | None] | None = None
        self._chunks = 0
        self._context = context  # encoded init image / video, consumed before the first chunk
        self.context_frames = 0 if context is None else context.shape[2]
        self.scenes = 0  # scenes played so far: the first prompt starts scene 0, each switch one more
        self._consumer = threading.Lock()  # held while a chunk is generated; a second consumer fails at once
        self._failed: BaseException | None = None
        self._generating = False  # a chunk is under way: its state is half-written

    @property
    def latent_frame(self) -> int:
        return self.engine.frame

    @property
    def chunks(self) -> int:
        """Chunks generated so far."""
        return self._chunks

    def snapshot(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write this stream's whole state to ``path`` (one safetensors file, written atomically), between chunks.
        ``pipe.resume(path)`` then continues it exactly as this stream would go on (:mod:`streamgen.snapshot`); a
        camera stream's (its poses, steering, geometric memory) with ``pipe.resume(path, camera=the same track)``.
        ``extra``: JSON-able notes of the caller's, kept in the snapshot's manifest."""
        from .snapshot import SnapshotError, save

        if self._failed is not None:
            raise SnapshotError(f"this stream failed ({self._failed}); there is no state worth resuming")
        if self._generating:
            raise SnapshotError("a chunk is being generated: snapshot between chunks (between iterations, or in "
                                "callback_on_chunk_end)")
        return save(self, path, extra)

    @property
    def cache_bytes(self) -> int:
        return self.engine.cache.nbytes

    @property
    def memory_bytes(self) -> int:
        """Every tensor the stream keeps between chunks: the KV cache, the clean-latent history for re-encoding and
        whatever the cache mechanisms remember (Echo-Forcing's scene recorder and pool, its hierarchical memory's
        candidate ring). Bounded by the preset."""
        engine = self.engine
        return engine.cache.nbytes + engine.history.latents.nbytes + sum(m.nbytes for m in engine.mechanisms)

    @property
    def finished(self) -> bool:
        """True once every requested frame is generated (never for an open-ended stream) or the stream failed."""
        done = self.num_latent_frames is not None and self._generated_frames() >= self.num_latent_frames
        return done or self._failed is not None

    def _generated_frames(self) -> int:
        return self.engine.frame - self.context_frames if self._context is None else 0

    def move(self, step: torch.Tensor) -> None:
        """Steer the camera: from the next chunk on (past the track given to ``stream(camera=)``), each frame's
        pose is the previous one moved by ``step`` [4, 4], a rigid transform in the camera's own axes
        (:func:`streamgen.camera_control.camera_step`). May be called from any thread."""
        if self.engine.camera is None:
            raise RuntimeError("this stream has no camera: start it with pipe.stream(..., camera=CameraTrack(...))")
        self.engine.camera.move(step)

    def switch(self, prompt: str, mode: str = "smooth", scene: int | None = None) -> None:
        """Play ``prompt`` from the next chunk on, entering it with transition ``mode`` (smooth | cut | recall).
        A recall may name the ``scene`` it brings back (scenes count from 0, one more at every switch; it must have
        been played already); otherwise a scene-remembering cache preset picks the earlier scene whose prompt matches
        best. The switch happens even to the prompt already playing: a cut to it restarts the scene. Of several
        calls before the next chunk, the last one counts. A finished stream has no next chunk: switching it raises.
        """
        if mode not in TRANSITIONS:
            raise ValueError(f"transition mode must be one of {TRANSITIONS}, got {mode!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("switch() needs a non-empty prompt")
        check_prompt_length(prompt, self.pipe.config.max_prompt_chars, "switch() prompt")
        if scene is not None and (mode != "recall" or isinstance(scene, bool) or not isinstance(scene, int)
                                  or scene < 0):
            raise ValueError(f"scene= names the scene a recall brings back (an id >= 0), got {scene!r} with {mode!r}")
        if scene is not None and scene >= max(self.scenes, 1):
            raise ValueError(f"scene {scene} has not been played: this stream has played scene(s) 0-"
                             f"{max(self.scenes, 1) - 1}")
        if self.finished:
            raise RuntimeError(f"this stream has ended ({self._chunks} chunks): there is no next chunk to switch; "
                               "start a new stream")
        self._pending = (prompt, mode, scene)

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        if not self._consumer.acquire(blocking=False):
            raise RuntimeError("this stream is already being iterated from another thread: a stream has one "
                               "consumer (start another with pipe.stream() for a second one)")
        try:
            if self._failed is not None:
                raise self._failed
            try:
                return self._next_chunk()
            except NonFiniteOutputError as err:
                self._failed = err
                raise
        finally:
            self._consumer.release()

    def _next_chunk(self) -> StreamChunk:
        self._generating = True
        if self._context is not None:  # the first prompt also encodes the init picture / clip
            self._apply_prompt_changes(0)
            self._continue_from(self._context)
            self._context = None
        start = self.engine.frame - self.context_frames  # schedules, latents= and num_frames count generated frames
        if self.num_latent_frames is not None and start >= self.num_latent_frames:
            self._generating = False
            raise StopIteration
        self._apply_prompt_changes(start)
        size = self.pipe.config.chunk_frames
        if self.num_latent_frames is not None:
            size = min(size, self.num_latent_frames - start)
        size = min(size, self._frames_to_next_switch(start))
        noise = self._noise(start, size)
        x0 = self.engine.generate_chunk(noise)
        if not torch.isfinite(x0).all():  # broken weights or inputs: say so instead of decoding a black video
            bad = int((~torch.isfinite(x0)).sum())
            raise NonFiniteOutputError(
                f"chunk {self._chunks}: the model produced {bad:,} NaN/inf values of {x0.numel():,} latents; the "
                "stream stops (check the weights, dtype and inputs)"
            )
        chunk = StreamChunk(self._chunks, self.engine.frame - size, x0, self.decoder.decode(x0), self.prompt)
        if self.engine.camera is not None:
            self.engine.camera.observe(chunk.latent_start, size, chunk.video)
        self._chunks += 1
        self._generating = False
        if self.callback_on_chunk_end is not None:
            self.callback_on_chunk_end(self.pipe, chunk)
        return chunk

    def _continue_from(self, context: torch.Tensor) -> None:
        """Write the init picture / clip into the cache as clean context and prime the decoder with it, so the
        first generated chunk continues it (a causal VAE's decoder then yields 4f frames per chunk, not 1+4(f-1))."""
        video = self.decoder.decode(context)
        if self.engine.camera is not None:  # before the prefill: its later chunks remember the earlier ones
            self.engine.camera.observe(self.engine.frame, context.shape[2], video)
        self.engine.prefill(context)

    def _apply_prompt_changes(self, start: int) -> None:
        if self._next_segment < len(self.plan) and self.plan[self._next_segment].start == start:
            segment = self.plan[self._next_segment]
            self._next_segment += 1
            if segment.seed is not None and self.generator is not None:
                self.generator.manual_seed(segment.seed)
            transition = segment.transition if start > 0 else Transition.SMOOTH
            # A segment that repeats the playing prompt smoothly (smooth is the default: a schedule may split one
            # prompt, e.g. to reseed it) continues its scene; a cut or recall into it is asked for, so it happens.
            if segment.prompt != self.prompt or transition != Transition.SMOOTH:
                # Mechanisms that time from the index a switch was asked for count in the engine's frames.
                asked = None if segment.asked is None else self.context_frames + segment.asked
                self._set_prompt(segment.prompt, transition, switch_index=asked)
        if self._pending is not None:
            prompt, mode, scene = self._pending
            self._pending = None
            self._set_prompt(prompt, mode, scene)

    def _set_prompt(self, prompt: str, transition: str, recall_scene: int | None = None,
                    switch_index: int | None = None) -> None:
        prompt_kv = self.pipe.prompt_kv(prompt, self.engine.cache.k.shape[1])
        # Transition(...).value: str() of a schedule's Transition member is "Transition.CUT", not its mode name.
        mode = Transition(transition).value
        switching = self.engine.prompt_kv is not None and self.engine.frame > 0
        self.engine.set_prompt(prompt_kv, mode, prompt=prompt, recall_scene=recall_scene, switch_index=switch_index)
        self.prompt = prompt
        if switching or self.scenes == 0:
            self.scenes += 1

    def _frames_to_next_switch(self, start: int) -> int:
        # The schedule already puts switches on chunk boundaries; this only matters for a short first segment.
        later = [s.start for s in self.plan if s.start > start]
        return (min(later) - start) if later else self.pipe.config.chunk_frames

    def _noise(self, start: int, size: int) -> torch.Tensor:
        if self.latents is not None:
            return self.latents[:, :, start : start + size].to(self.engine.transformer.device)
        batch, channels, _, h, w = self.engine.history.latents.shape
        return draw_noise((batch, channels, size, h, w), self.generator, self.engine.transformer.device)


class StreamingVideoPipeline(LoraLoaderMixin, DiffusionPipeline):
    r"""Autoregressive streaming text-to-video over a causal Wan transformer and a tiered KV cache.

    Components: ``transformer`` (any diffusers ``WanTransformer3DModel`` checkpoint), ``vae`` (``AutoencoderKLWan``
    or the pixel-space :class:`~streamgen.vae.PixelSpaceVAE`), ``text_encoder`` + ``tokenizer`` (any transformers
    encoder: UMT5 for Wan, a tiny one for tests) and ``scheduler`` (a flow-matching scheduler; its ``shift`` /
    ``flow_shift`` and ``num_train_timesteps`` configure the samplers).

    Pipeline config: ``chunk_frames`` latent frames per chunk, the few-step ``denoising_timesteps``, the
    ``context_timestep`` at which clean chunks are written to the cache, ``max_sequence_length`` of prompts,
    ``fps`` of the output video, the ``default_cache`` preset and the default ``height`` / ``width``.
    ``num_inference_steps``: None (the default) samples with the few-step schedule, which suits step-distilled
    checkpoints (Self-Forcing, LongLive); an integer makes flow-matching Euler with that many steps the default, which
    suits models trained with plain flow matching (the shipped ShapeWorld model), whose one-shot x0 predictions from
    high noise are blurred means. ``guidance_scale``: the default classifier-free guidance scale (1 = off; a
    model trained with caption dropout can follow its prompt more closely at > 1, for two transformer passes per step).
    ``rope_range``: the temporal RoPE positions the checkpoint was trained on (21 latent frames for Wan / Self-Forcing
    checkpoints); cache presets with ``rope_range: auto`` keep their indices inside it. ``prediction_type``: what the
    transformer outputs, ``"flow"`` (v = noise - x0: Wan and every release) or ``"sample"`` (x0, as the embedded
    ShapeWorld model: its 8x8 patches hold more values than its width, and a flow output would have to carry the
    noise of the dimensions it cannot see). ``max_prompt_chars``: longer prompts are refused before tokenizing
    (:mod:`streamgen.prompts`).

    Loading checks the weights: a weight file that is truncated, empty or would run code is refused before loading,
    a NaN / inf or absurd (|w| > 1e4) weight after it, each naming the file or tensor (:mod:`streamgen.weights`).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    # A pipeline may name a packaged text encoder instead of carrying one (see ``text_encoder_package``).
    _optional_components = ["tokenizer", "text_encoder", "camera_encoder", "controller"]

    def __init__(
        self,
        tokenizer,
        text_encoder,
        transformer,
        vae,
        scheduler,
        chunk_frames: int = 3,
        denoising_timesteps: list[float] = (1000.0, 750.0, 500.0, 250.0),
        context_timestep: float = 0.0,
        max_sequence_length: int = 512,
        fps: float = 16.0,
        default_cache: str = "rolling",
        height: int | None = None,
        width: int | None = None,
        text_encoder_package: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        rope_range: int = 21,
        prediction_type: str = "flow",
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        camera_encoder=None,
        controller=None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if type(transformer) is WanTransformer3DModel:  # a plain diffusers Wan folder: add the streaming methods
            transformer = CausalWanTransformer3DModel.from_wan(transformer)
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler,
            camera_encoder=camera_encoder, controller=controller,
        )
        self.register_to_config(
            chunk_frames=chunk_frames,
            denoising_timesteps=list(denoising_timesteps),
            context_timestep=context_timestep,
            max_sequence_length=max_sequence_length,
            fps=fps,
            default_cache=default_cache,
            height=height,
            width=width,
            text_encoder_package=text_encoder_package,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            rope_range=rope_range,
            prediction_type=prediction_type,
            max_prompt_chars=max_prompt_chars,
        )
        self._prompt_kv: dict[tuple[str, int], PromptKV] = {}
        self._prompt_kv_lock = threading.Lock()  # streams of one pipeline may run in several threads (the demo)
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, with the weight files of a local folder checked before loading and the
        transformer's and VAE's weights checked for NaN / inf / absurd values after it."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            check_weight_files(folder, given=kwargs)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for name in ("transformer", "vae"):  # a broken text encoder shows as a non-finite output at the first chunk
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                files = sorted((folder / name).glob("*.safetensors")) if folder.is_dir() else []
                check_finite_weights(module, files[0] if len(files) == 1 else folder / name)
        return pipe

    def cache_preset(self, cache: str | CachePreset | None = None) -> CachePreset:
        """The cache preset ``cache`` (name, YAML path or preset; None: the pipeline's default) on this checkpoint:
        a ``rope_range: auto`` preset takes the config's ``rope_range``."""
        return load_preset(cache or self.config.default_cache).with_rope_range(int(self.config.rope_range))

    # ---- sizes ------------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor_temporal(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def vae_scale_factor_spatial(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def num_latent_frames(self, num_frames: int) -> int:
        t = self.vae_scale_factor_temporal
        return num_frames if t == 1 else (num_frames - 1) // t + 1

    def num_video_frames(self, num_latent_frames: int) -> int:
        t = self.vae_scale_factor_temporal
        return num_latent_frames if t == 1 else 1 + t * (num_latent_frames - 1)

    def max_size(self) -> int:
        """The largest height / width in pixels: the transformer's ``rope_max_seq_len`` patches per axis (the
        positions a Wan config declares), times the pixels of one patch."""
        patch = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        return int(self.transformer.config.rope_max_seq_len) * patch

    def stream_memory_bytes(self, preset: CachePreset, num_latent_frames: int | None, height: int, width: int,
                            batch_size: int = 1) -> int:
        """Bytes a stream allocates up front: the KV cache of ``preset`` (sized for ``num_latent_frames`` when it
        keeps the whole stream) and the clean-latent history, for frames of ``height`` x ``width`` pixels."""
        t = self.transformer
        spatial = self.vae_scale_factor_spatial
        h, w = height // spatial, width // spatial
        slots = preset.layout(num_latent_frames if preset.needs_stream_length else None).num_slots
        kv = 2 * len(t.blocks) * batch_size * slots * t.tokens_per_frame(h, w) * t.num_heads * t.head_dim
        history = batch_size * self.latent_channels * slots * h * w
        return kv * t.dtype.itemsize + history * 4

    def check_memory(self, preset: CachePreset, num_latent_frames: int | None, height: int, width: int,
                     batch_size: int = 1) -> int:
        """The stream's up-front bytes (:meth:`stream_memory_bytes`); ValueError naming the preset, the bytes and the
        memory available when they do not fit (checked before anything is allocated)."""
        needed = self.stream_memory_bytes(preset, num_latent_frames, height, width, batch_size)
        free = available_memory(self.transformer.device)
        if free is not None and needed > free:
            frames = f"{num_latent_frames:,} latent frames" if preset.needs_stream_length else "its window"
            raise ValueError(
                f"cache preset {preset.name!r} for {frames} at {height}x{width} (batch {batch_size}) needs "
                f"{needed:,} bytes ({needed / 2**30:,.1f} GiB) of KV cache and latent history, more than the "
                f"{free:,} bytes ({free / 2**30:,.1f} GiB) of memory available on {self.transformer.device}; use "
                + ("fewer frames, a smaller size or a rolling preset" if preset.needs_stream_length else
                   "a smaller size or a preset with a shorter window")
            )
        return needed

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels from the pipeline config."""
        if self.config.height is None or self.config.width is None:
            raise ValueError("this pipeline has no default size: pass height= and width=")
        return int(self.config.height), int(self.config.width)

    # ---- prompts ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], batch_size: int = 1) -> torch.Tensor:
        """Text encoder states [B, max_sequence_length, text_dim], zero past each prompt's end (as WanPipeline)."""
        prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
        for text in prompts:  # before the tokenizer reads a huge string whole
            check_prompt_length(text, self.config.get("max_prompt_chars", MAX_PROMPT_CHARS))
        max_len = self.config.max_sequence_length
        with self._tokenizer_lock:  # a fast tokenizer sets its truncation state per call: one thread at a time
            tokenizer, text_encoder = self.text_components()
            tokens = tokenizer(
                prompts, padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True,
                return_attention_mask=True, return_tensors="pt",
            )
        mask = tokens.attention_mask.to(text_encoder.device)
        states = text_encoder(tokens.input_ids.to(text_encoder.device), mask).last_hidden_state
        return (states * mask[..., None]).to(self.transformer.device, self.transformer.dtype)

    def text_components(self):
        """(tokenizer, text_encoder): the registered ones, or else those of the installed package the pipeline
        config names in ``text_encoder_package`` (loaded once; kept unregistered so the folder keeps naming the
        package instead of carrying the weights)."""
        if self.tokenizer is not None and self.text_encoder is not None:
            return self.tokenizer, self.text_encoder
        if "_packaged_text" not in self.__dict__:
            package = self.config.get("text_encoder_package")
            if package is None:
                raise ValueError("this pipeline has no tokenizer / text encoder and names no `text_encoder_package`")
            from .text_encoders import load_packaged_text_encoder

            tokenizer, text_encoder = load_packaged_text_encoder(package)
            self.__dict__["_packaged_text"] = (tokenizer, text_encoder.to(self.transformer.device))
        return self.__dict__["_packaged_text"]

    def prompt_kv(self, prompt: str, batch_size: int) -> PromptKV:
        """Cross-attention K/V for ``prompt``, computed once and reused by every chunk and every stream.

        The prompt is encoded outside the cache's lock, so one stream's new prompt never holds up another stream's
        switch (the demo's sessions run in parallel threads); two streams asking for the same new prompt at once
        may both encode it, and the first result is kept."""
        key = (prompt, batch_size)
        with self._prompt_kv_lock:
            if key in self._prompt_kv:
                self._prompt_kv[key] = self._prompt_kv.pop(key)  # most recently used last
                return self._prompt_kv[key]
        with torch.no_grad():
            prompt_kv = self.transformer.encode_prompt_kv(self.encode_prompt(prompt, batch_size))
        with self._prompt_kv_lock:
            prompt_kv = self._prompt_kv.setdefault(key, prompt_kv)
            # Bounded in entries and bytes, least recently used first out: a demo user switching to new prompts every
            # second must not leave gigabytes behind (one Wan 1.3B prompt's K/V is ~94 MB in bf16: 512 tokens x 30
            # layers). The newest entry always stays; streams keep their own prompts' K/V alive regardless.
            while len(self._prompt_kv) > 1 and (len(self._prompt_kv) > PROMPT_KV_CACHE_ENTRIES
                                                or _cached_bytes(self._prompt_kv) > PROMPT_KV_CACHE_BYTES):
                self._prompt_kv.pop(next(iter(self._prompt_kv)))
            return prompt_kv

    # ---- inputs -------------------------------------------------------------------------------------------------
    def check_inputs(self, prompt, schedule, num_frames, height, width, latents, preset: CachePreset, batch_size):
        if (prompt is None) == (schedule is None):
            raise ValueError("pass exactly one of `prompt` or `schedule`")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ValueError(f"`schedule` must be a streamgen.schedule.Schedule, got {type(schedule).__name__}")
        limit = self.config.max_prompt_chars
        check_prompt_length(prompt, limit, "`prompt`")
        for i, segment in enumerate(schedule.segments if schedule is not None else ()):
            check_prompt_length(segment.prompt, limit, f"the schedule's segment {i} prompt")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
        if num_frames is not None:
            if not isinstance(num_frames, int) or num_frames < 1:
                raise ValueError(f"`num_frames` must be a positive int, got {num_frames!r}")
            t = self.vae_scale_factor_temporal
            if t > 1 and (num_frames - 1) % t:
                raise ValueError(f"`num_frames - 1` must be divisible by {t} for this VAE, got num_frames={num_frames}")
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        largest = self.max_size()
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}")
            if value > largest:
                raise ValueError(
                    f"`{name}` {value} is more than this model's largest size, {largest} (rope_max_seq_len "
                    f"{self.transformer.config.rope_max_seq_len} patches x {multiple} pixels)"
                )
        if preset.needs_stream_length and num_frames is None:
            raise ValueError(f"cache preset {preset.name!r} keeps the whole stream, so `num_frames` is required")
        if latents is not None:
            expected = (
                batch_size, self.latent_channels, self.num_latent_frames(num_frames) if num_frames else None,
                height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial,
            )
            if num_frames is None:
                raise ValueError("`latents` needs `num_frames`")
            if tuple(latents.shape) != expected:
                raise ValueError(f"`latents` must have shape {expected}, got {tuple(latents.shape)}")

    def make_sampler(self, num_inference_steps: int | None = None):
        config = self.scheduler.config
        shift = config.get("shift", config.get("flow_shift", 1.0))
        common = dict(
            shift=float(shift), num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            context_timestep=float(self.config.context_timestep),
        )
        if num_inference_steps is None:
            num_inference_steps = self.config.get("num_inference_steps")
        if num_inference_steps is not None:
            return EulerSampler(num_inference_steps=num_inference_steps, **common)
        return FewStepSampler(timesteps=tuple(self.config.denoising_timesteps), **common)

    # ---- streaming ----------------------------------------------------------------------------------------------
    def stream(
        self,
        prompt: str | None = None,
        *,
        schedule: Schedule | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        cache: str | CachePreset | None = None,
        switch: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        batch_size: int = 1,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        callback_on_chunk_end: Callable[["StreamingVideoPipeline", StreamChunk], None] | None = None,
        image: str | np.ndarray | None = None,
        video: str | np.ndarray | None = None,
        camera: CameraTrack | None = None,
    ) -> VideoStream:
        """Start a stream; iterate it for :class:`StreamChunk` s. ``num_frames=None`` streams until you stop.

        ``camera`` (a :class:`~streamgen.camera_control.CameraTrack`: intrinsics and a pose per latent frame, init
        clip first) conditions every chunk on where the camera is (a pipeline with a ``camera_encoder``); past the
        track the camera moves by :meth:`VideoStream.move`, or holds still.

        ``guidance_scale`` > 1 turns on classifier-free guidance against ``negative_prompt`` (two transformer passes
        per step); None takes the pipeline config's. ``image`` / ``video`` (a file path or uint8 frames [H, W, 3] / [F, H, W, 3]) make the stream continue that
        picture or clip: it is resized/cropped to the model size, VAE-encoded and written into the cache as context.
        Chunks, ``num_frames``, ``latents`` and schedules then count only the generated frames after it.
        """
        if height is None or width is None:
            default_h, default_w = self.default_size()
            height, width = height or default_h, width or default_w
        preset = self.cache_preset(cache)
        self.check_inputs(prompt, schedule, num_frames, height, width, latents, preset, batch_size)
        num_latent = self.num_latent_frames(num_frames) if num_frames is not None else None
        self.check_memory(preset, num_latent, height, width, batch_size)
        if schedule is None:
            schedule = Schedule.single(prompt)
        plan = schedule.plan(
            num_latent if num_latent is not None else OPEN_ENDED_LATENT_FRAMES,
            temporal_compression=self.vae_scale_factor_temporal,
            fps=float(self.config.fps),
            chunk_frames=self.config.chunk_frames,
        )
        if generator is None and schedule.seed is not None:
            generator = torch.Generator().manual_seed(schedule.seed)
        context = self.encode_context(image, video, height, width, batch_size)
        # A preset that keeps the whole stream (global) must also hold the init picture / clip written before it.
        stream_frames = None if num_latent is None else num_latent + (0 if context is None else context.shape[2])
        engine = StreamEngine(
            self.transformer, preset, self.make_sampler(num_inference_steps),
            batch_size=batch_size, latent_channels=self.latent_channels,
            latent_height=height // self.vae_scale_factor_spatial, latent_width=width // self.vae_scale_factor_spatial,
            chunk_frames=self.config.chunk_frames, stream_frames=stream_frames, switch=switch, generator=generator,
        )
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if not isinstance(guidance_scale, (int, float)) or not guidance_scale > 0:
            raise ValueError(f"`guidance_scale` must be a positive number, got {guidance_scale!r}")
        engine.guidance_scale = float(guidance_scale)
        engine.prediction_type = self.config.get("prediction_type", "flow")
        if guidance_scale != 1.0:
            engine.negative_prompt_kv = self.prompt_kv(negative_prompt, batch_size)
        if camera is not None:
            engine.camera = self._stream_camera(camera, engine, height, width)
        return VideoStream(self, engine, plan, num_latent, latents, generator, callback_on_chunk_end, context=context)

    def _stream_camera(self, camera, engine: StreamEngine, height: int, width: int):
        from .camera_control import CameraTrack, StreamCamera

        if not isinstance(camera, CameraTrack):
            raise TypeError(f"camera= takes a streamgen.camera_control.CameraTrack, got {type(camera).__name__}")
        encoder = getattr(self, "camera_encoder", None)
        controller = getattr(self, "controller", None) if camera.weave == "controller" else None
        if camera.weave == "controller" and controller is None:
            raise ValueError("CameraTrack(weave='controller') needs a pipeline with a weaving controller "
                             "(python -m streamgen.train.weave); this one has none")
        if encoder is None and controller is None:
            raise ValueError("camera= needs a pipeline with a camera_encoder (a camera-trained model); this one has "
                             "none")
        k = camera.intrinsics
        if (k.height, k.width) != (height, width):
            raise ValueError(f"the camera's intrinsics are for {k.height}x{k.width} frames, the stream makes "
                             f"{height}x{width}")
        remembers = controller is not None or encoder.takes_anchors
        if remembers and engine.history.latents.shape[0] != 1:
            raise ValueError("a camera stream with a geometric memory makes one video at a time (batch_size=1)")
        latent_h, latent_w = engine.latent_hw
        return StreamCamera(encoder, camera, chunk_frames=self.config.chunk_frames, latent_height=latent_h,
                            latent_width=latent_w, keep=engine.history.capacity + self.config.chunk_frames,
                            latents_of=engine.history.get, controller=controller, cache=engine.cache,
                            temporal_compression=self.vae_scale_factor_temporal)

    def resume(
        self, path: str | Path, *, cache: str | CachePreset | None = None,
        callback_on_chunk_end: Callable[["StreamingVideoPipeline", StreamChunk], None] | None = None,
        camera: CameraTrack | None = None,
    ) -> VideoStream:
        """The stream a :meth:`VideoStream.snapshot` at ``path`` saved, ready to go on where it stopped: its next
        chunks equal those the uninterrupted stream would have made (the same schedule, pending switch and RNG).
        Switching it, and resuming one snapshot several times, branches the stream. ``cache`` (default: the preset
        named in the snapshot) must be that preset; ``camera``, for a camera stream, the track it was started with
        (its depth source is the one thing of the camera a snapshot does not hold). A snapshot of another pipeline,
        preset or track, or a corrupted or truncated one, is refused (:class:`~streamgen.snapshot.SnapshotError`, one
        line) before anything runs."""
        from . import snapshot

        path = Path(path)
        manifest = snapshot.read_manifest(path)
        recorded = manifest["preset"]
        try:
            preset = self.cache_preset(cache or recorded["name"])
        except (KeyError, ValueError, OSError) as err:
            raise snapshot.SnapshotError(f"snapshot {path}: its cache preset {recorded.get('name')!r} is not known "
                                         f"here ({err}); pass cache= with that preset") from None
        if isinstance(recorded.get("switch"), str) and recorded["switch"] != preset.switch:
            preset = preset.with_switch(recorded["switch"])
        snapshot.check_compatible(path, manifest, self, preset)
        snapshot.check_camera(path, manifest, camera)
        build = manifest["build"]
        try:
            engine = StreamEngine(
                self.transformer, preset, self.make_sampler(build["num_inference_steps"]),
                batch_size=int(build["batch_size"]), latent_channels=self.latent_channels,
                latent_height=int(build["latent_height"]), latent_width=int(build["latent_width"]),
                chunk_frames=self.config.chunk_frames, stream_frames=build["stream_frames"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise snapshot.SnapshotError(f"snapshot {path}: its stream cannot be rebuilt here ({err})") from None
        if camera is not None:  # its models and depth source; the snapshot puts the rest back
            spatial = self.vae_scale_factor_spatial
            engine.camera = self._stream_camera(camera, engine, engine.latent_hw[0] * spatial,
                                                engine.latent_hw[1] * spatial)
        stream = VideoStream(self, engine, [], None, None, None, callback_on_chunk_end)
        snapshot.load_into(path, manifest, stream)
        stream.callback_on_chunk_end = callback_on_chunk_end  # the saved stream's None would have replaced it
        return stream

    @torch.no_grad()
    def encode_context(self, image, video, height: int, width: int, batch_size: int) -> torch.Tensor | None:
        """Normalized latents [B, C, n, h, w] of an init picture or clip, or None."""
        from .conditioning import fit_frames, frames_to_video_tensor, load_image, load_video

        if image is not None and video is not None:
            raise ValueError("pass at most one of `image` or `video`")
        if image is None and video is None:
            return None
        if image is not None:
            frames = load_image(image) if isinstance(image, (str, Path)) else np.asarray(image)[None]
        else:
            frames = load_video(video) if isinstance(video, (str, Path)) else np.asarray(video)
        pixels = frames_to_video_tensor(fit_frames(frames, height, width), self.vae_scale_factor_temporal)
        latents = encode_video(self.vae, pixels.to(self.vae.device, self.vae.dtype))
        return latents.to(self.transformer.device, torch.float32).expand(batch_size, -1, -1, -1, -1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        *,
        schedule: Schedule | None = None,
        num_frames: int = 33,
        height: int | None = None,
        width: int | None = None,
        cache: str | CachePreset | None = None,
        switch: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        batch_size: int = 1,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_chunk_end: Callable[["StreamingVideoPipeline", StreamChunk], None] | None = None,
        image: str | np.ndarray | None = None,
        video: str | np.ndarray | None = None,
        camera: CameraTrack | None = None,
    ):
        """Generate ``num_frames`` video frames for a prompt or a :class:`~streamgen.schedule.Schedule` (``camera``:
        see :meth:`stream`)."""
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pt' or 'latent', got {output_type!r}")
        stream = self.stream(
            prompt, schedule=schedule, num_frames=num_frames, height=height, width=width, cache=cache,
            switch=switch, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, batch_size=batch_size, latents=latents,
            generator=generator, callback_on_chunk_end=callback_on_chunk_end, image=image, video=video, camera=camera,
        )
        total = math.ceil(stream.num_latent_frames / self.config.chunk_frames)
        chunks = []
        with self.progress_bar(total=total) as progress:
            for chunk in stream:
                chunks.append(chunk)
                progress.update()
        if output_type == "latent":
            frames = torch.cat([c.latents for c in chunks], dim=2)
        else:
            video = (torch.cat([c.video for c in chunks], dim=2).float() + 1) / 2  # [B, 3, F, H, W] in [0, 1]
            frames = video.permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
            if output_type == "np":
                frames = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return StreamingVideoPipelineOutput(frames=frames)


def load_pipeline(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a pipeline folder for command-line use: checked to be one, progress bars off, moved to ``device``."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder}: not a pipeline folder (no model_index.json)")
    pipe = StreamingVideoPipeline.from_pretrained(folder, **({"dtype": dtype} if dtype is not None else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device(device))
