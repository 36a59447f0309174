"""Teach a ShapeWorld model to follow a camera: the camera world's flights, dense teacher forcing, and a
:class:`~streamgen.models.camera.CameraEncoder` trained with the transformer from a shipped pipeline.

Data (:func:`camera_clip`): a map of a train-split seed, a start anywhere over it, and per chunk a velocity of
whole units per frame (whole pixels at the default height, so frames stay exactly resampleable); a chunk keeps the
previous chunk's velocity with probability ``keep``, as a user holds a key; with probability ``return_prob`` the
second half of the clip flies the first half back. The caption is the map's.

Anchors (an encoder with ``anchors``): each chunk's frames get the composite of the clip's earlier frames rendered
at their cameras (:meth:`GeometricMemory.composite`; the first frame and the most recent, ``anchor_k`` in all, as
the stream's memory retrieves them by recency), with exact depth, and a hole mask; chunk 0 has none (all holes).

Step: the clip twice, ``[clean | noisy]``, each noisy chunk attending to the clean chunks before it
(:func:`streamgen.train.teacher_forcing.dense_mask`), both copies with the same camera tokens (the chunk-relative rays
of :func:`~streamgen.models.camera.chunk_relative_rays`, as a stream writes them into its cache); x0 prediction with
the flow-scaled loss of the shipped model; AdamW, EMA of both modules. Resumable: ``state.safetensors`` every
``save_every`` steps, the EMA weights exported as a pipeline folder with a ``camera_encoder`` beside the transformer.

Run: ``streamgen train --config configs/train/shapeworld-cam-tiny.yaml`` (a config with ``trainer: camera``, the
other keys :class:`CameraTrainConfig`'s; :mod:`streamgen.train.cli`), or ``python -m streamgen.train.camera``. Through
accelerate as the main trainer (:mod:`streamgen.train.trainer`): on the config's ``device`` (cpu, cuda; none: a GPU
where there is one), bf16 autocast on that device, and on N processes (``torchrun --nproc_per_node N -m streamgen.cli
train ...``) DDP over the transformer and the encoder as one module, each rank taking its rows of every step's batch
and of every random draw (:func:`streamgen.train.distributed.rows`), so that N processes train what one does and a
checkpoint resumes on any number; the main process alone writes log, checkpoint and export.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..geometry import GeometricMemory
from ..models.camera import CameraEncoder, chunk_relative_rays
from ..process_group import accelerator_present, barrier
from ..world.camera import CameraState, default_intrinsics, ground_depth, map_seed, render_flight, sample_map
from . import teacher_forcing
from .config import NoiseConfig
from .accelerated_run import AcceleratedRun
from .distributed import rows
from .trainer import EMA, flow_error, noise_levels

__all__ = ["FlightTrainConfig", "CameraTrainConfig", "NoisedClips", "noise_clips", "clip_memory_runs", "camera_clip", "clip_anchors", "CameraTrainer", "train"]


@dataclass
class FlightTrainConfig:
    """What both camera trainers share: the camera-world clips (:func:`camera_clip`), dense teacher forcing, AdamW +
    EMA, the run's bookkeeping. :class:`CameraTrainConfig` and :class:`streamgen.train.weave.WeaveTrainConfig`."""

    init: str = "shapeworld-tiny"  # a pipeline folder or a shipped pipeline's name
    out: str = "runs/camera"
    steps: int = 3000
    batch_size: int = 8
    clip_frames: int = 24
    chunk_frames: int = 3
    speeds: tuple[int, ...] = (-2, -1, 0, 1, 2)  # units per frame along each axis
    keep: float = 0.6  # probability that a chunk keeps the previous chunk's velocity
    return_prob: float = 0.3  # probability that the clip's second half flies its first half back
    anchor_k: int = 4
    lr: float = 2e-4
    warmup: int = 100
    ema_decay: float = 0.999
    context_sigma_max: float = 0.05
    x0_sigma_floor: float = 0.05
    caption_dropout: float = 0.1
    save_every: int = 100
    seed: int = 0
    threads: int = 2
    bf16: bool = True  # bf16 autocast of the forward, on the training device
    device: str | None = None  # cpu | cuda; None: a GPU where there is one
    log_every: int = 20

    def validate(self):
        if self.chunk_frames < 1 or self.clip_frames < self.chunk_frames or self.clip_frames % self.chunk_frames:
            raise ValueError(f"clip_frames ({self.clip_frames}) must be a positive multiple of chunk_frames "
                             f"({self.chunk_frames})")
        for name in ("batch_size", "save_every", "log_every", "threads", "anchor_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in ("keep", "return_prob", "caption_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.speeds:
            raise ValueError("speeds must name at least one speed")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda (or none: a GPU where there is one), got {self.device!r}")
        if self.device == "cuda" and not accelerator_present():
            raise ValueError("device: cuda, but torch sees no GPU here")
        return self


@dataclass
class CameraTrainConfig(FlightTrainConfig):
    anchors: bool = True  # condition on geometric-memory anchors as well as rays (the first frame + most recent)
    encoder_lr: float = 1e-3  # the encoder's (lr is the transformer's)
    hidden_dim: int = 0


@dataclass
class NoisedClips:
    """One step's draws for this process's rows of a batch (:func:`noise_clips`), on the training device."""

    video: torch.Tensor  # [b, C, F, H, W], the clean clips
    x_c: torch.Tensor  # the clean copy at its small context noise
    x_t: torch.Tensor  # the noisy copy
    noise: torch.Tensor
    sigma: torch.Tensor  # [b, F] the noisy copy's levels, per chunk
    context: torch.Tensor  # [b, F] the clean copy's
    drop: list[bool]  # caption dropped


def noise_clips(video: torch.Tensor, config: FlightTrainConfig, noise: NoiseConfig, generator: torch.Generator,
                shard: tuple[int, int], device) -> NoisedClips:
    """Dense teacher forcing's draws for this process's rows ``video`` of a batch: every draw made at the whole
    batch's size from ``generator`` (the same in every process) and each process keeping its rows
    (:func:`streamgen.train.distributed.rows`), in one order: noise levels, context levels, noise, context noise,
    caption dropout."""
    g, chunk = generator, config.chunk_frames
    b, _, frames = video.shape[:3]
    chunks = frames // chunk
    total, mine = rows(b, *shard)
    sigma = noise_levels(noise, total, chunks, g)[mine].repeat_interleave(chunk, 1)
    context = (config.context_sigma_max * torch.rand(total, chunks, generator=g))[mine].repeat_interleave(chunk, 1)
    fresh = torch.randn((total, *video.shape[1:]), generator=g)[mine]
    context_noise = torch.randn((total, *video.shape[1:]), generator=g)[mine]
    drop = (torch.rand(total, generator=g) < config.caption_dropout)[mine].tolist()
    video, fresh, context_noise = video.to(device), fresh.to(device), context_noise.to(device)
    sigma, context = sigma.to(device), context.to(device)
    s, c = sigma[:, None, :, None, None], context[:, None, :, None, None]
    return NoisedClips(video, (1 - c) * video + c * context_noise, (1 - s) * video + s * fresh, fresh, sigma, context,
                       drop)


def clip_memory_runs(latents: torch.Tensor, poses: torch.Tensor, latent_camera, chunk_frames: int,
                     memory: GeometricMemory):
    """Each chunk's frames of a clip's latents [C, F, h, w] (a list, yielded) while ``memory`` holds the clip's
    earlier frames with exact depth, as a stream's memory would; each chunk goes in after its turn."""
    frames = latents.shape[1]
    for start in range(0, frames, chunk_frames):
        run = list(range(start, min(start + chunk_frames, frames)))
        yield run
        for f in run:
            memory.add(latents[:, f].permute(1, 2, 0), poses[f], latent_camera, f,
                       depth=ground_depth(poses[f], latent_camera))


def camera_clip(seed: int, config: CameraTrainConfig, *, split: str = "train"):
    """(frames uint8 [F, H, W, 3], poses [F, 4, 4], caption) of clip ``seed`` (the n-th map of ``split``)."""
    rng = random.Random(seed)
    world = sample_map(map_seed(split, seed))
    x, y = rng.uniform(48, world.extent - 48), rng.uniform(48, world.extent - 48)
    chunks = config.clip_frames // config.chunk_frames
    velocities = [(rng.choice(config.speeds), rng.choice(config.speeds))]
    for _ in range(1, chunks):
        keep = rng.random() < config.keep
        velocities.append(velocities[-1] if keep else (rng.choice(config.speeds), rng.choice(config.speeds)))
    if rng.random() < config.return_prob:  # fly back: the second half undoes the first, in reverse
        half = chunks // 2
        velocities[chunks - half:] = [(-vx, -vy) for vx, vy in reversed(velocities[:half])]
    states = []
    for frame in range(config.clip_frames):
        vx, vy = velocities[frame // config.chunk_frames]
        if frame:
            # a returning chunk's first frame undoes the move into the chunk it mirrors
            x, y = x + vx, y + vy
        states.append(CameraState(round(x), round(y)))
    flight = render_flight(world, states, start_time=rng.uniform(0, 200))
    return flight.frames, flight.poses, world.caption


def clip_anchors(latents: torch.Tensor, poses: torch.Tensor, camera, chunk_frames: int, k: int):
    """(anchors [C, F, h, w], holes [1, F, h, w]) of one clip's latents [C, F, h, w] taken at ``poses`` with pixel
    camera ``camera``: each chunk from the clip's earlier frames, as a stream's memory would give them."""
    channels, frames, height, width = latents.shape
    latent_camera = camera.scaled(width / camera.width)
    memory = GeometricMemory(capacity=frames + 1)
    anchors, holes = torch.zeros_like(latents), torch.ones(1, frames, height, width)
    for run in clip_memory_runs(latents, poses, latent_camera, chunk_frames, memory):
        if len(memory):
            picked = memory.retrieve(poses[run], latent_camera, k, "recency")
            image, covered = memory.composite(picked, poses[run], latent_camera)
            anchors[:, run] = image.permute(3, 0, 1, 2)
            holes[0, run] = (~covered).float()
    return anchors, holes


class CameraFlow(nn.Module):
    """The transformer and the camera encoder in one module, so that DDP sees one forward over both: the dense
    teacher-forcing forward of ``[clean | noisy]`` (2F frames) with camera tokens, bf16-autocast on the input's device
    when ``bf16``; the noisy half's prediction [B, C, F, h, w]."""

    def __init__(self, transformer, encoder: CameraEncoder, chunk_frames: int, bf16: bool):
        super().__init__()
        self.transformer, self.encoder = transformer, encoder
        self.chunk_frames, self.bf16 = chunk_frames, bf16

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor, rays: torch.Tensor,
                anchors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        t = self.transformer
        frames, height, width = x.shape[2] // 2, x.shape[3], x.shape[4]
        positions = torch.arange(frames)
        rotary = t.rotary(torch.cat((positions, positions)), torch.cat((positions, positions)), height, width)
        mask = teacher_forcing.dense_mask(frames, self.chunk_frames, t.tokens_per_frame(height, width), x.device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            camera = self.encoder(rays, *(anchors or ()))
            return t.forward_chunk(x, timesteps, t.encode_prompt_kv(text_states), None, rotary, attention_mask=mask,
                                   camera_tokens=camera)[:, :, frames:]


class CameraTrainer(AcceleratedRun):
    """``CameraTrainer(config).run()`` trains, logs, checkpoints and exports into ``config.out``."""

    def __init__(self, config: CameraTrainConfig, resume: bool = False):
        from ..loading import open_pipeline
        from ..text_encoders import load_packaged_text_encoder
        from .data import CaptionEncoder

        self.config, self.out = config.validate(), Path(config.out)
        state = self._start(config, resume)
        acc = self.accelerator
        if state is not None:  # the run goes on from the pipeline it started from (an --init), where it is found
            started = (state.get("config") or {}).get("init")
            if started and started != config.init and _pipeline_found(started):
                self.config = config = dataclasses.replace(config, init=started)
        torch.manual_seed(config.seed)
        pipe = open_pipeline(config.init)
        self.pipe_config = dict(pipe.config)
        self.transformer = pipe.transformer.train().requires_grad_(True)
        if pipe.camera_encoder is not None:  # continue a camera model (--init it)
            self.encoder = pipe.camera_encoder.train().requires_grad_(True)
        else:
            self.encoder = CameraEncoder.for_transformer(self.transformer, config.hidden_dim, anchors=config.anchors)
        if pipe.text_encoder is not None:
            tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        else:
            tokenizer, text_encoder = load_packaged_text_encoder(pipe.config.text_encoder_package)
        self.captions = CaptionEncoder(tokenizer, text_encoder.to(acc.device), pipe.config.max_sequence_length)
        self.source = pipe
        self.module = CameraFlow(self.transformer, self.encoder, config.chunk_frames, config.bf16)
        optimizer = torch.optim.AdamW([
            {"params": list(self.transformer.parameters()), "lr": config.lr},
            {"params": list(self.encoder.parameters()), "lr": config.encoder_lr}], weight_decay=0.0)
        self.model, self.optimizer = acc.prepare(self.module, optimizer)
        self.ema_t, self.ema_e = EMA(self.transformer, config.ema_decay), EMA(self.encoder, config.ema_decay)
        self.ema_t.to(acc.device)
        self.ema_e.to(acc.device)
        self.noise = NoiseConfig(context_sigma_max=config.context_sigma_max)
        # One random stream for the whole batch, the same in every process (each keeps its rows of every draw).
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 1)
        self.step = 0
        if state is not None:
            self._load(state)
        self._check_same_start(self.step)

    # ---- data ------------------------------------------------------------------------------------------------
    def batch(self, step: int):
        """(video [b, 3, F, H, W], rays, captions, anchors or None) of this process's rows of step ``step``'s batch:
        clips ``step * batch_size + i``, rank r of N taking the r-th of N equal shares."""
        cfg = self.config
        share = cfg.batch_size // self.shard[1]
        first = step * cfg.batch_size + self.shard[0] * share
        clips = [camera_clip(first + i, cfg) for i in range(share)]
        video = torch.tensor(np.stack([c[0] for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        frames, h, w = video.shape[2:]
        rays = torch.stack([chunk_relative_rays(default_intrinsics(), c[1], 0, cfg.chunk_frames, h, w,
                                                self.encoder.config.translation_unit) for c in clips]).float()
        anchors = None
        if self.encoder.takes_anchors:
            built = [clip_anchors(video[i], clips[i][1], default_intrinsics(), cfg.chunk_frames, cfg.anchor_k)
                     for i in range(len(clips))]
            anchors = torch.stack([a for a, _ in built]), torch.stack([h for _, h in built])
        return video, rays, [c[2] for c in clips], anchors

    # ---- one step --------------------------------------------------------------------------------------------
    def loss(self, video: torch.Tensor, rays: torch.Tensor, captions: list[str], anchors=None) -> torch.Tensor:
        """The mean squared flow error of this process's rows; every random draw is made at the whole batch's size
        and each process keeps its rows, so the ranks' losses average (DDP) to one process's on the whole batch."""
        device = self.accelerator.device
        n = noise_clips(video, self.config, self.noise, self.generator, self.shard, device)
        text = self.captions(["" if d else cap for cap, d in zip(captions, n.drop)]).to(device)
        doubled = None if anchors is None else tuple(torch.cat((a, a), 2).to(device) for a in anchors)
        pred = self.model(torch.cat((n.x_c, n.x_t), 2), torch.cat((n.context, n.sigma), 1) * 1000.0, text,
                          torch.cat((rays, rays), 2).to(device), doubled)
        error = flow_error(pred, n.x_t, n.video, n.noise, n.sigma, "sample", self.config.x0_sigma_floor)
        return error.pow(2).mean()

    def run(self, until: int | None = None) -> Path:
        """Train to ``config.steps`` (or stop after step ``until``: a simulated interruption); the output folder."""
        cfg = self.config
        self._begin_run()
        until = min(until or cfg.steps, cfg.steps)
        window, began = [], time.time()
        self.model.train()
        while self.step < until:
            video, rays, captions, anchors = self.batch(self.step)
            for group, base in zip(self.optimizer.param_groups, (cfg.lr, cfg.encoder_lr)):
                group["lr"] = base * self.lr_factor()
            loss = self.loss(video, rays, captions, anchors)
            self._apply(loss, self.model.parameters())
            self.ema_t.update(self.transformer)
            self.ema_e.update(self.encoder)
            self.step += 1
            window.append(loss.item())
            if self.step % cfg.log_every == 0 or self.step == until:
                self._log({"step": self.step, "loss": self._mean_loss(window),
                           "seconds": round(time.time() - began, 1)})
                window = []
            if self.step % cfg.save_every == 0 or self.step == until:
                self.save()
        barrier(self.accelerator)
        return self.out

    def save(self) -> None:
        """The training state and the export (:meth:`AcceleratedRun._save`)."""
        self._save({"transformer": self.transformer.state_dict(), "encoder": self.encoder.state_dict()},
                   {"transformer": self.ema_t.state_dict(), "encoder": self.ema_e.state_dict()},
                   config=dataclasses.asdict(self.config))

    def _load(self, state: dict) -> None:
        self.transformer.load_state_dict(state["model"]["transformer"])
        self.encoder.load_state_dict(state["model"]["encoder"])
        self.ema_t.load_state_dict(state["ema"]["transformer"])
        self.ema_e.load_state_dict(state["ema"]["encoder"])
        self._load_run(state)

    def export(self, folder: Path) -> None:
        """The EMA weights as a pipeline folder (the init pipeline's, plus camera_encoder/), on the CPU."""
        import copy

        transformer = self.ema_t.copy_to(copy.deepcopy(self.transformer).cpu()).eval()
        encoder = self.ema_e.copy_to(copy.deepcopy(self.encoder).cpu()).eval()
        pipe = self.source
        original = pipe.transformer, pipe.camera_encoder
        pipe.register_modules(transformer=transformer, camera_encoder=encoder)
        try:
            pipe.save_pretrained(folder)
        finally:
            pipe.register_modules(transformer=original[0], camera_encoder=original[1])


def _pipeline_found(name: str) -> bool:
    from ..resources import find_pipeline

    try:
        return find_pipeline(name).is_dir()
    except ValueError:
        return False


def train(config: CameraTrainConfig, resume: bool = False, init: str | Path | None = None) -> Path:
    """Train with ``config`` (continuing ``config.out``'s checkpoint if ``resume``); ``init``: the pipeline to start
    from instead of ``config.init``. The output folder."""
    if init is not None:
        config = dataclasses.replace(config, init=str(init))
    return CameraTrainer(config, resume=resume).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m streamgen.train.camera --out runs/camera [--resume] [--steps N] ...``: the defaults of
    :class:`CameraTrainConfig` with these flags over them (``streamgen train --config`` takes a whole config)."""
    import argparse

    defaults = CameraTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m streamgen.train.camera", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=defaults.init, help="pipeline folder or shipped name to start from")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=defaults.device,
                        help="training device (default: a GPU where there is one)")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    args = parser.parse_args(argv)
    config = dataclasses.replace(defaults, init=args.init, out=args.out, steps=args.steps, batch_size=args.batch_size,
                                 threads=args.threads, seed=args.seed, device=args.device)
    train(config, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
