"""Chunk-causal flow-matching training ("diffusion forcing") of the causal Wan transformer on whole clips.

One step: a batch of clips x0 [B, 3, F, H, W] in [-1, 1], noise n, one sigma per chunk (shared by the chunk's
frames), x_t = (1 - sigma) x0 + sigma n, target v = n - x0, prediction = ``forward_chunk(x_t, sigma*1000 per frame,
prompt K/V, cache=None, RoPE at frames 0..F-1, attention_mask=block_causal_mask)`` -- the exact arithmetic of the
KV-cached streaming path (tested equal to it) -- and a masked MSE.

Captions: cross-attention is per sample, so each clip gets ONE prompt: the caption of the segment playing in its
LAST chunk. The loss covers only the frames whose segment has that caption (for a clip with switches: the chunks
after the last switch, plus an earlier A when the last segment recalls A); earlier segments stay in the attention
as context played under another prompt, which is what the model sees after a live switch.

RoPE re-alignment (``positions:`` in the config, :mod:`streamgen.train.positions`): the clip's frames take the
positions a cache preset gives them at a random point of a long stream instead of 0..F-1, against the data or (for a
resumed model) against the model's own prediction at the standard positions.

Several processes (``torchrun --nproc_per_node N -m streamgen.cli train ...``; docs/distributed.md): DDP through
accelerate, gloo on CPUs and NCCL on GPUs; each rank takes its share of every step's batch and its rows of every
random draw (:mod:`streamgen.train.distributed`), so N processes train what one process trains on the same config,
and a checkpoint resumes on any number of processes. Only the main process writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.causal_wan import CausalWanTransformer3DModel, block_causal_mask
from ..sampling import shift_sigma
from .config import TrainConfig
from .data import CaptionEncoder, ClipSource
from . import teacher_forcing
from .accelerated_run import start_run
from .checkpoint import CHECKPOINT, LEGACY_STATE_FILE, STATE_FILE, load_state, save_state
from ..process_group import barrier
from .distributed import rows
from .positions import StreamPositions

SIGMA_BINS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0001)


def build_transformer(config: TrainConfig) -> CausalWanTransformer3DModel:
    m = config.model
    dim = m.num_attention_heads * m.attention_head_dim
    return CausalWanTransformer3DModel(
        patch_size=tuple(m.patch_size), num_attention_heads=m.num_attention_heads,
        attention_head_dim=m.attention_head_dim, in_channels=m.channels, out_channels=m.channels,
        text_dim=m.text_dim, freq_dim=m.freq_dim, ffn_dim=m.ffn_mult * dim, num_layers=m.num_layers,
        cross_attn_norm=True, rope_max_seq_len=1024,
    )


class ChunkCausalFlow(nn.Module):
    """The transformer + the training forward in one module, so DDP (accelerate, several GPUs) sees one forward."""

    def __init__(self, transformer: CausalWanTransformer3DModel, chunk_frames: int):
        super().__init__()
        self.transformer = transformer
        self.chunk_frames = chunk_frames

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor,
                positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``positions``: temporal RoPE index of each frame (default 0..F-1; see :mod:`streamgen.train.positions`);
        ``attention_mask``: default block-causal over the frames; ``text_mask``: see :class:`PromptKV` ``mask``."""
        t = self.transformer
        _, _, frames, height, width = x_t.shape
        if positions is None:
            positions = torch.arange(frames)
        rotary = t.rotary(positions, positions, height, width)
        if attention_mask is None:
            attention_mask = block_causal_mask(frames, self.chunk_frames, t.tokens_per_frame(height, width), x_t.device)
        prompt_kv = t.encode_prompt_kv(text_states)
        prompt_kv.mask = text_mask
        return t.forward_chunk(x_t, timesteps, prompt_kv, None, rotary, attention_mask=attention_mask)


def noise_levels(noise, batch: int, chunks: int, generator: torch.Generator) -> torch.Tensor:
    """sigma [B, chunks]: shifted logit-normal, with high_noise_prob of the chunks uniform in [high_noise_min, 1]."""
    s = torch.sigmoid(torch.randn(batch, chunks, generator=generator) * noise.logit_std + noise.logit_mean)
    sigma = shift_sigma(s, noise.shift)
    high = torch.rand(batch, chunks, generator=generator) < noise.high_noise_prob
    uniform_high = noise.high_noise_min + (1 - noise.high_noise_min) * torch.rand(batch, chunks, generator=generator)
    return torch.where(high, uniform_high, sigma)


def sample_sigmas(noise, batch: int, chunks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [B, chunks], clean_context [B] bool). See :class:`~streamgen.train.config.NoiseConfig`."""
    sigma = noise_levels(noise, batch, chunks, generator)
    clean = torch.rand(batch, generator=generator) < noise.clean_context_prob
    context = noise.context_sigma_max * torch.rand(batch, chunks, generator=generator)
    if chunks > 1:
        sigma[:, :-1] = torch.where(clean[:, None], context[:, :-1], sigma[:, :-1])
    return sigma.clamp(0.0, 1.0), clean


def prompts_and_mask(batch: dict[str, Any], chunk_frames: int, dropout: float, generator: torch.Generator,
                     shard: tuple[int, int] = (0, 1)):
    """(prompt per clip, loss mask [B, F] float): the caption of the last chunk's segment and the frames it covers;
    a dropped caption ("" prompt, for classifier-free guidance) keeps every frame. ``shard``: (rank, processes) when
    ``batch`` is one rank's share (the dropout is drawn for the whole batch, :func:`streamgen.train.distributed.rows`)."""
    segments = batch["frame_segment"]  # [B, F]
    frames = segments.shape[1]
    prompts, masks = [], []
    total, mine = rows(len(segments), *shard)
    drop = (torch.rand(total, generator=generator) < dropout)[mine]
    for b, captions in enumerate(batch["captions"]):
        caption = captions[int(segments[b, frames - chunk_frames])]
        if drop[b]:
            prompts.append("")
            masks.append(torch.ones(frames))
        else:
            prompts.append(caption)
            masks.append(torch.tensor([float(captions[int(j)] == caption) for j in segments[b]]))
    return prompts, torch.stack(masks)


def flow_error(pred: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
               prediction: str, sigma_floor: float) -> torch.Tensor:
    """The prediction's error as a flow error [B, C, F, H, W]; ``sigma`` [B, F]. A flow model's is pred - (noise - x0);
    an x0 model's is (x0 - x0_hat) / max(sigma, sigma_floor), the same quantity for its implied flow
    (x_t - x0_hat) / sigma, with the floor keeping near-clean frames from dominating."""
    if prediction == "flow":
        return pred.float() - (noise - x0)
    s = sigma.clamp_min(sigma_floor)[:, None, :, None, None]
    return (x0 - pred.float()) / s


def pixel_weights(x0: torch.Tensor, loss) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, F, H, W] for clean clips x0 [B, C, F, H, W]: 1, or 1 + foreground_weight where a
    pixel differs from its frame's median colour (see :class:`~streamgen.train.config.LossConfig`)."""
    if not loss.foreground_weight:
        return torch.ones_like(x0[:, :1])
    background = x0.flatten(3).median(dim=3).values[..., None, None]  # [B, C, F, 1, 1]
    foreground = ((x0 - background).abs().amax(dim=1, keepdim=True) > loss.foreground_threshold).float()
    return 1.0 + loss.foreground_weight * foreground


class EMA:
    """Exponential moving average of parameters (fp32 shadow copies), decay warmed up as min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1 - d)

    def copy_to(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(self.shadow[k].to(p.dtype))
        return model

    def to(self, device) -> "EMA":
        """Keep the shadow beside the parameters (an update mixing devices fails; a CPU shadow of a GPU model would
        copy every parameter across each step)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        device = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.shadow = {k: v.to(device, copy=True) for k, v in state["shadow"].items()}


def lr_factor(step: int, optim, max_steps: int) -> float:
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    p = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * p)) if optim.schedule == "cosine" else 1 - p
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


class Trainer:
    """``Trainer(config).run()`` trains, logs, checkpoints, evaluates and exports into ``config.output_dir``."""

    def __init__(self, config: TrainConfig, resume: bool = False, text=None, init: str | Path | None = None):
        from accelerate.utils import DataLoaderConfiguration

        from ..text_encoders import load_packaged_text_encoder

        self.config = config.validate()
        self.out = Path(config.output_dir)
        # The config's batch_size is the whole step's (split_batches: the LR schedule steps once per optimizer step).
        self.accelerator, self.shard, ckpt = start_run(
            self.out, device=config.device, batch_size=config.batch_size, threads=config.torch_threads, resume=resume,
            mixed_precision=config.mixed_precision, dataloader_config=DataLoaderConfiguration(split_batches=True))
        acc = self.accelerator

        torch.manual_seed(config.seed)
        self.transformer = build_transformer(config)
        self.ema = EMA(self.transformer, config.optim.ema_decay)
        self.module = ChunkCausalFlow(self.transformer, config.chunk_frames)
        o = config.optim
        optimizer = torch.optim.AdamW(self.module.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, o, config.max_steps))
        self.model, self.optimizer, self.scheduler = acc.prepare(self.module, optimizer, scheduler)
        self.ema.to(acc.device)

        self.tokenizer, self.text_encoder = text if text is not None else load_packaged_text_encoder(config.text.package)
        self.text_encoder.to(acc.device)
        self.captions = CaptionEncoder(self.tokenizer, self.text_encoder, config.text.max_sequence_length,
                                       config.text.cache_size)
        self.data = ClipSource(config)
        # One random stream for the whole batch, the same in every process (each keeps its rows of every draw).
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003)
        self.step = 0
        if ckpt is not None:
            self._load(ckpt)
        elif init is not None:
            self._init_from(Path(init))
        if acc.num_processes > 1:
            self._check_same_start(resume)
        self.params = sum(p.numel() for p in self.transformer.parameters())
        self.stream_positions, self.teacher = None, None
        pos = config.positions
        if pos.preset is not None:
            self.stream_positions = StreamPositions(pos.preset, config.data.clip_frames, config.chunk_frames,
                                                    pos.rope_range)
        self.rollout_data, self.rollout_preset, self.target_provider = None, None, None
        self._rollout, self._rollout_uses = None, 0
        if config.rollout.prob > 0:
            from ..cache.presets import load_preset
            from .rollout import RolloutSource, ShapeWorldTargets

            r = config.rollout
            self.rollout_data = RolloutSource(config, (r.true_chunks[1] + r.generated_chunks[1] + 1) * config.chunk_frames)
            self.rollout_preset = load_preset(config.noise.sample_cache).with_rope_range(self.rope_range)
            self.target_provider = ShapeWorldTargets()
        if pos.target == "teacher":
            if self.step == 0:
                raise ValueError("positions.target: teacher distils the resumed model into itself: pass --resume")
            with torch.random.fork_rng():  # building it must not move the resumed run's random stream
                teacher = build_transformer(config)
            teacher = self.ema.copy_to(teacher).to(acc.device).eval().requires_grad_(False)
            self.teacher = ChunkCausalFlow(teacher, config.chunk_frames)

    # ---- one step ---------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
        if self.config.noise.context == "dense":
            return self.dense_loss(batch, generator, stats)
        return self.mixed_loss(batch, generator, stats)

    def mixed_loss(self, batch: dict[str, Any], generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
        """Diffusion forcing + clean-context clips (see :class:`~streamgen.train.config.NoiseConfig`)."""
        cfg, acc = self.config, self.accelerator
        x0 = batch["video"].to(acc.device)
        b, _, frames = x0.shape[:3]
        chunks = frames // cfg.chunk_frames
        total, mine = rows(b, *self.shard)  # every draw at the whole batch's size; this process's rows
        sigma, clean = (v[mine] for v in sample_sigmas(cfg.noise, total, chunks, generator))
        prompts, mask = prompts_and_mask(batch, cfg.chunk_frames, cfg.text.caption_dropout, generator, self.shard)
        mask[clean, : frames - cfg.chunk_frames] = 0.0  # clean-context samples: loss on the last chunk only
        noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine].to(acc.device)
        sigma_f = sigma.repeat_interleave(cfg.chunk_frames, dim=1).to(acc.device)  # [B, F]
        s = sigma_f[:, None, :, None, None]
        x_t = (1 - s) * x0 + s * noise
        positions = self.draw_positions(frames, generator)
        text_states = self.captions(prompts).to(acc.device)
        with acc.autocast():
            pred = self.model(x_t, sigma_f * 1000.0, text_states, positions)
        if self.teacher is not None:
            with torch.no_grad(), acc.autocast():  # the same inputs at the positions the teacher was trained on
                target = self.teacher(x_t, sigma_f * 1000.0, text_states).float()
            error = pred.float() - target
        else:
            error = flow_error(pred, x_t, x0, noise, sigma_f, cfg.model.prediction, cfg.loss.x0_sigma_floor)
        return self._reduce(error, x0, mask.to(acc.device), sigma_f, stats)

    def dense_loss(self, batch: dict[str, Any], generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
        """Dense teacher forcing (:mod:`streamgen.train.teacher_forcing`): every chunk against its clean past."""
        cfg, acc = self.config, self.accelerator
        x0 = batch["video"].to(acc.device)
        b, _, frames, height, width = x0.shape
        chunk = cfg.chunk_frames
        chunks = frames // chunk
        total, mine = rows(b, *self.shard)  # every draw at the whole batch's size; this process's rows
        sigma_f = noise_levels(cfg.noise, total, chunks, generator)[mine].repeat_interleave(chunk, 1).to(acc.device)
        context_f = cfg.noise.context_sigma_max * torch.rand(total, chunks, generator=generator)[mine]
        context_f = context_f.repeat_interleave(chunk, 1).to(acc.device)
        noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine].to(acc.device)
        context_noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine].to(acc.device)
        s, c = sigma_f[:, None, :, None, None], context_f[:, None, :, None, None]
        x_t = (1 - s) * x0 + s * noise
        x_c = (1 - c) * x0 + c * context_noise
        prompts, slots = teacher_forcing.segment_prompts(batch, cfg.text.caption_dropout, generator, self.shard)
        tokens = self.transformer.tokens_per_frame(height, width)
        text_states, text_mask = teacher_forcing.text_inputs(prompts, slots, self.captions, tokens)
        positions = self.draw_positions(frames, generator)
        positions = torch.arange(frames) if positions is None else positions
        mask = teacher_forcing.dense_mask(frames, chunk, tokens, acc.device)
        with acc.autocast():
            pred = self.model(torch.cat((x_c, x_t), 2), torch.cat((context_f, sigma_f), 1) * 1000.0,
                              text_states.to(acc.device), torch.cat((positions, positions)), mask,
                              text_mask.to(acc.device))[:, :, frames:]
        error = flow_error(pred, x_t, x0, noise, sigma_f, cfg.model.prediction, cfg.loss.x0_sigma_floor)
        weight = torch.where(teacher_forcing.scene_start_chunks(batch, chunk), cfg.loss.scene_start_weight, 1.0)
        weight = weight.repeat_interleave(chunk, 1) * (~batch["in_transition"].bool()).float()
        return self._reduce(error, x0, weight.to(acc.device), sigma_f, stats)

    def rollout_loss(self, generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
        """The next chunk after the model's own rollout (:mod:`streamgen.train.rollout`), noisy, against the played
        frames, clean, in one block-causal forward; the rollout is replayed ``rollout.replay`` times."""
        from .rollout import make_rollout

        cfg, acc = self.config, self.accelerator
        if self._rollout is None or self._rollout_uses >= cfg.rollout.replay:
            self._rollout, self._rollout_uses = make_rollout(self, self.step, generator), 0
        self._rollout_uses += 1
        played, x0 = self._rollout.played.to(acc.device), self._rollout.target.to(acc.device)
        b, _, chunk = x0.shape[:3]
        context = played.shape[2]
        total, mine = rows(b, *self.shard)
        sigma_f = noise_levels(cfg.noise, total, 1, generator)[mine].repeat_interleave(chunk, 1).to(acc.device)
        noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine].to(acc.device)
        s = sigma_f[:, None, :, None, None]
        x_t = (1 - s) * x0 + s * noise
        timesteps = torch.cat((torch.full((b, context), self._rollout.context_timestep), sigma_f * 1000.0), 1)
        with acc.autocast():
            pred = self.model(torch.cat((played, x_t), 2), timesteps.to(acc.device),
                              self._rollout.text_states.to(acc.device))[:, :, context:]
        error = flow_error(pred, x_t, x0, noise, sigma_f, cfg.model.prediction, cfg.loss.x0_sigma_floor)
        return self._reduce(error, x0, torch.ones(b, chunk, device=acc.device), sigma_f, stats)

    def _reduce(self, error: torch.Tensor, x0: torch.Tensor, frame_weight: torch.Tensor, sigma_f: torch.Tensor,
                stats: dict | None) -> torch.Tensor:
        """Weighted mean of the squared error over frames (``frame_weight`` [B, F]); per-sigma-bin sums into
        ``stats``."""
        weight = pixel_weights(x0, self.config.loss)  # [B, 1, F, H, W]
        per_frame = (error.pow(2) * weight).mean(dim=(1, 3, 4)) / weight.mean(dim=(1, 3, 4))
        world = self.shard[1]
        if world == 1:
            loss = (per_frame * frame_weight).sum() / frame_weight.sum().clamp_min(1.0)
        else:  # over the whole batch's weight, times N: DDP's average of the ranks' gradients is one process's
            whole = self.accelerator.reduce(frame_weight.sum().detach().float(), "sum")
            loss = (per_frame * frame_weight).sum() / whole.clamp_min(1.0) * world
        if stats is not None:
            pf, m, sf = per_frame.detach().cpu(), frame_weight.cpu(), sigma_f.cpu()
            for i in range(len(SIGMA_BINS) - 1):
                sel = m * ((sf >= SIGMA_BINS[i]) & (sf < SIGMA_BINS[i + 1])).float()
                key = f"{SIGMA_BINS[i]:g}-{min(SIGMA_BINS[i + 1], 1.0):g}"
                stats.setdefault(key, [0.0, 0.0])
                stats[key][0] += float((pf * sel).sum())
                stats[key][1] += float(sel.sum())
        return loss

    def _gathered(self, window: list[float], bins: dict, rollouts: list[float]) -> tuple[float, dict, float]:
        """(mean loss of the window's steps, sigma-bin sums, sum of the rollout losses), over all processes: a rank's
        loss is its share of the whole batch's loss times N (:meth:`_reduce`), so their mean is the whole batch's."""
        world = self.accelerator.num_processes
        if world == 1:
            return sum(window) / len(window), bins, sum(rollouts)
        keys = [f"{SIGMA_BINS[i]:g}-{min(SIGMA_BINS[i + 1], 1.0):g}" for i in range(len(SIGMA_BINS) - 1)]
        packed = [sum(window), sum(rollouts)] + [v for key in keys for v in bins.get(key, (0.0, 0.0))]
        total = self.accelerator.reduce(torch.tensor(packed, dtype=torch.float64, device=self.accelerator.device), "sum")
        total = total.cpu().tolist()
        summed = {key: total[2 + 2 * i : 4 + 2 * i] for i, key in enumerate(keys) if total[3 + 2 * i] or key in bins}
        return total[0] / (world * len(window)), summed, total[1] / world

    @property
    def rope_range(self) -> int:
        """The temporal positions the model is trained on: the re-alignment preset's range, else the clip's."""
        ranged = self.stream_positions is not None and self.stream_positions.rope_range is not None
        return int(self.stream_positions.rope_range) if ranged else self.config.data.clip_frames

    def draw_positions(self, frames: int, generator: torch.Generator) -> torch.Tensor | None:
        """This step's RoPE positions: a preset's at a random point of a stream (positions.prob of the steps), else
        None (the standard 0..F-1)."""
        pos, chunk = self.config.positions, self.config.chunk_frames
        if self.stream_positions is None or float(torch.rand((), generator=generator)) >= pos.prob:
            return None
        lengths = range(frames // chunk, pos.max_stream_frames // chunk + 1)
        stream = chunk * lengths[int(torch.randint(len(lengths), (), generator=generator))]
        return self.stream_positions(stream)

    @torch.no_grad()
    def eval_loss(self, batch: dict[str, Any], seed: int = 0) -> float:
        """The loss of ``batch`` with fixed noise/sigmas/dropout draws (comparable across training)."""
        self.model.eval()
        try:
            return float(self.loss(batch, torch.Generator().manual_seed(seed)))
        finally:
            self.model.train()

    def run(self, until: int | None = None) -> Path:
        """Train to ``config.max_steps`` (or stop after step ``until``: a simulated interruption); return the
        output folder."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        end = cfg.max_steps if until is None else min(until, cfg.max_steps)
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self._truncate_log(self.out / "log.jsonl")
            self._truncate_log(self.out / "eval.jsonl")
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and main), desc="train")
        window: list[float] = []
        bins: dict = {}
        t0 = time.perf_counter()
        self.model.train()
        rollouts: list[float] = []
        while self.step < end:
            if cfg.rollout.prob and float(torch.rand((), generator=self.generator)) < cfg.rollout.prob:
                loss = self.rollout_loss(self.generator, bins)
                rollouts.append(float(loss.detach()))
            else:
                batch = self.data.batch(self.step, acc.process_index, acc.num_processes)
                loss = self.loss(batch, self.generator, bins)
            acc.backward(loss)
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip else None
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.update(acc.unwrap_model(self.model).transformer)
            self.step += 1
            window.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.4f}")
            if self.step % cfg.log_every == 0 or self.step == end:
                elapsed = time.perf_counter() - t0
                losses, bins, rollout_sum = self._gathered(window, bins, rollouts)
                record = {"step": self.step, "loss": losses, "lr": self.scheduler.get_last_lr()[0],
                          "grad_norm": None if grad_norm is None else float(grad_norm),
                          "sigma_bins": {k: (v[0] / v[1] if v[1] else None) for k, v in bins.items()},
                          "seconds_per_step": elapsed / len(window), "time": time.time()}
                if acc.num_processes > 1:
                    record["processes"] = acc.num_processes
                if cfg.rollout.prob:
                    record["rollout_steps"] = len(rollouts)
                    record["rollout_loss"] = rollout_sum / len(rollouts) if rollouts else None
                if main:
                    with open(self.out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                window, bins, rollouts, t0 = [], {}, [], time.perf_counter()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.evaluate()
        bar.close()
        self.save_checkpoint()
        if self.step >= cfg.max_steps:
            self.evaluate()
        barrier(acc)
        return self.out

    # ---- eval / export ----------------------------------------------------------------------------------------
    def ema_transformer(self) -> CausalWanTransformer3DModel:
        model = copy.deepcopy(self.accelerator.unwrap_model(self.model).transformer).float().cpu()
        return self.ema.copy_to(model).eval()

    def pipeline(self, transformer=None, *, with_text: bool = True):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ..pipeline import StreamingVideoPipeline
        from ..vae import PixelSpaceVAE

        cfg = self.config
        pipe = StreamingVideoPipeline(
            tokenizer=self.tokenizer if with_text else None,
            text_encoder=self.text_encoder.cpu() if with_text else None,
            transformer=transformer if transformer is not None else self.ema_transformer(),
            vae=PixelSpaceVAE(channels=cfg.model.channels),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.noise.sample_shift),
            chunk_frames=cfg.chunk_frames, max_sequence_length=cfg.text.max_sequence_length, fps=float(cfg.data.fps),
            height=cfg.data.height, width=cfg.data.width, text_encoder_package=cfg.text.package,
            num_inference_steps=cfg.noise.sample_steps, guidance_scale=cfg.noise.sample_guidance,
            rope_range=self.rope_range, prediction_type=cfg.model.prediction, default_cache=cfg.noise.sample_cache,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export(self, transformer=None) -> Path:
        """Write the EMA model as a pipeline folder ``OUT/pipeline`` naming the text encoder package (no weights)."""
        folder = self.out / "pipeline"
        tmp = self.out / "pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipeline(transformer, with_text=False).save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder

    def evaluate(self) -> dict:
        acc = self.accelerator
        record: dict[str, Any] = {"step": self.step}
        if acc.is_main_process:
            transformer = self.ema_transformer()
            record["pipeline"] = str(self.export(transformer))
            if self.config.eval_quality and self.config.data.kind == "shapeworld":
                from ..bench.quality import FULL, QUICK, run_quality

                start = time.perf_counter()
                sizes = dataclasses.replace(QUICK, single_videos=self.config.eval_videos,
                                            single_chunks=self.config.eval_chunks,
                                            continuation_videos=self.config.eval_videos,
                                            continuation_context_chunks=FULL.continuation_context_chunks,
                                            continuation_chunks=FULL.continuation_chunks)
                result = run_quality(self.pipeline(transformer), suites=["single", "continuation"], sizes=sizes)
                single, continuation = result["suites"]["single"], result["suites"]["continuation"]
                record["single_accuracy"] = single["accuracy"]
                record["single_per_chunk"] = single["per_chunk"]
                record["continuation"] = {"first_chunk": continuation["first_chunk"],
                                          "direction": continuation["direction"], "speed": continuation["speed"],
                                          "per_chunk_shape": continuation["per_chunk"]["shape"]}
                record["eval_seconds"] = time.perf_counter() - start
                self.text_encoder.to(acc.device)
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.config.progress:
                shown = {k: record[k] for k in ("single_accuracy", "continuation") if k in record}
                print(f"[eval step {self.step}] {json.dumps(shown)}", flush=True)
        barrier(acc)
        return record

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Overwrite OUT/checkpoint/state.safetensors atomically: model, EMA, optimizer, LR schedule, step, RNG
        states (:mod:`streamgen.train.checkpoint`: no pickle). A legacy state.pt it supersedes is removed."""
        acc = self.accelerator
        barrier(acc)
        path = self.out / CHECKPOINT / STATE_FILE
        if acc.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "step": self.step,
                "model": acc.unwrap_model(self.model).transformer.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "config": self.config.to_dict(),
                "processes": acc.num_processes,
            }
            save_state(state, path)
            (path.parent / LEGACY_STATE_FILE).unlink(missing_ok=True)  # older than the file just written
        barrier(acc)
        return path

    def _load(self, path: Path) -> None:
        state = load_state(path)
        self.accelerator.unwrap_model(self.model).transformer.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Every process holds the same random stream (each keeps its rows of each draw), whatever number of
        # processes saved it: the run continues on any number as it would have on the saving one.
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.step = int(state["step"])

    def _check_same_start(self, resume: bool) -> None:
        """Every process starts from the same step: a process that found no checkpoint (another machine, where the
        output folder is not shared) would train from scratch beside the others."""
        acc = self.accelerator
        steps = acc.gather(torch.tensor([self.step], device=acc.device)).cpu().tolist()
        if len(set(steps)) > 1:
            missing = [rank for rank, step in enumerate(steps) if step != max(steps)]
            raise ValueError(f"{self.out}: process(es) {missing} start at step {min(steps)}, the others at "
                             f"{max(steps)}{' (resumed)' if resume else ''}: on several machines the output folder "
                             "must be shared (the checkpoint is read by every process)")

    def _init_from(self, folder: Path) -> None:
        """Start model and EMA from the transformer weights of a pipeline ``folder`` (a fine-tune, or a model whose
        optimizer state was not kept); optimizer, LR schedule and step start fresh."""
        from safetensors.torch import load_file

        files = sorted((folder / "transformer").glob("*.safetensors"))
        if not files:
            raise ValueError(f"--init {folder}: no transformer/*.safetensors (a pipeline folder is expected)")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(str(f)))
        model = self.accelerator.unwrap_model(self.model).transformer
        own = model.state_dict()
        wrong = sorted(set(own) ^ set(weights)) + [k for k in own if k in weights and own[k].shape != weights[k].shape]
        if wrong:
            raise ValueError(f"--init {folder}: its transformer does not match this config's model "
                             f"({len(wrong)} tensors differ, e.g. {wrong[0]!r})")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
        self.ema.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}
        self.ema.updates = 10**6  # the weights are already an average: the EMA runs at its full decay from step 0

    def _truncate_log(self, path: Path) -> None:
        """Drop records past the checkpoint's step (written after it by an interrupted run)."""
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.step]
        path.write_text("".join(line + "\n" for line in keep))


def train(config: TrainConfig, resume: bool = False, init: str | Path | None = None) -> Path:
    """Train with ``config`` (resuming from ``config.output_dir``'s checkpoint if ``resume``, else starting from the
    pipeline folder ``init`` if given); the output folder."""
    return Trainer(config, resume=resume, init=init).run()
