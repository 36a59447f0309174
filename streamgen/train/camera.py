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
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geometry import GeometricMemory
from ..models.camera import CameraEncoder, chunk_relative_rays
from ..world.camera import CameraState, default_intrinsics, ground_depth, map_seed, render_flight, sample_map
from . import teacher_forcing
from .checkpoint import find_state, load_state, save_state
from .config import NoiseConfig
from .trainer import EMA, flow_error, noise_levels

__all__ = ["CameraTrainConfig", "camera_clip", "clip_anchors", "CameraTrainer"]


@dataclass
class CameraTrainConfig:
    init: str = "shapeworld-tiny"  # a pipeline folder or a shipped pipeline's name
    out: str = "runs/camera"
    steps: int = 3000
    batch_size: int = 8
    clip_frames: int = 24
    chunk_frames: int = 3
    speeds: tuple[int, ...] = (-2, -1, 0, 1, 2)  # units per frame along each axis
    keep: float = 0.6  # probability that a chunk keeps the previous chunk's velocity
    return_prob: float = 0.3  # probability that the clip's second half flies its first half back
    anchors: bool = True  # condition on geometric-memory anchors as well as rays
    anchor_k: int = 4
    lr: float = 2e-4  # the transformer's
    encoder_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    hidden_dim: int = 0
    context_sigma_max: float = 0.05
    x0_sigma_floor: float = 0.05
    caption_dropout: float = 0.1
    save_every: int = 100
    seed: int = 0
    threads: int = 2
    bf16: bool = True


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
    for start in range(0, frames, chunk_frames):
        run = list(range(start, min(start + chunk_frames, frames)))
        if len(memory):
            picked = memory.retrieve(poses[run], latent_camera, k, "recency")
            image, covered = memory.composite(picked, poses[run], latent_camera)
            anchors[:, run] = image.permute(3, 0, 1, 2)
            holes[0, run] = (~covered).float()
        for f in run:
            memory.add(latents[:, f].permute(1, 2, 0), poses[f], latent_camera, f,
                       depth=ground_depth(poses[f], latent_camera))
    return anchors, holes


class CameraTrainer:
    def __init__(self, config: CameraTrainConfig, resume: bool = False):
        from ..loading import open_pipeline
        from ..text_encoders import load_packaged_text_encoder
        from .data import CaptionEncoder

        self.config, self.out = config, Path(config.out)
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        pipe = open_pipeline(config.init)
        self.pipe_config = dict(pipe.config)
        self.transformer = pipe.transformer.train().requires_grad_(True)
        if pipe.camera_encoder is not None:  # continue a camera model (python -m streamgen.train.camera --init it)
            self.encoder = pipe.camera_encoder.train().requires_grad_(True)
        else:
            self.encoder = CameraEncoder.for_transformer(self.transformer, config.hidden_dim, anchors=config.anchors)
        if pipe.text_encoder is not None:
            tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        else:
            tokenizer, text_encoder = load_packaged_text_encoder(pipe.config.text_encoder_package)
        self.captions = CaptionEncoder(tokenizer, text_encoder, pipe.config.max_sequence_length)
        self.source = pipe
        self.optimizer = torch.optim.AdamW([
            {"params": list(self.transformer.parameters()), "lr": config.lr},
            {"params": list(self.encoder.parameters()), "lr": config.encoder_lr}], weight_decay=0.0)
        self.ema_t, self.ema_e = EMA(self.transformer, config.ema_decay), EMA(self.encoder, config.ema_decay)
        self.noise = NoiseConfig(context_sigma_max=config.context_sigma_max)
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 1)
        self.step = 0
        state = find_state(self.out / "checkpoint")
        if state is not None:
            if not resume:
                raise ValueError(f"{self.out} already holds a checkpoint: pass --resume to continue it")
            self._load(state)

    # ---- data ------------------------------------------------------------------------------------------------
    def batch(self, step: int):
        clips = [camera_clip(step * self.config.batch_size + i, self.config) for i in range(self.config.batch_size)]
        video = torch.tensor(np.stack([c[0] for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        frames, h, w = video.shape[2:]
        rays = torch.stack([chunk_relative_rays(default_intrinsics(), c[1], 0, self.config.chunk_frames, h, w,
                                                self.encoder.config.translation_unit) for c in clips]).float()
        anchors = None
        if self.encoder.takes_anchors:
            built = [clip_anchors(video[i], clips[i][1], default_intrinsics(), self.config.chunk_frames,
                                  self.config.anchor_k) for i in range(len(clips))]
            anchors = torch.stack([a for a, _ in built]), torch.stack([h for _, h in built])
        return video, rays, [c[2] for c in clips], anchors

    # ---- one step --------------------------------------------------------------------------------------------
    def loss(self, video: torch.Tensor, rays: torch.Tensor, captions: list[str], anchors=None) -> torch.Tensor:
        cfg, g = self.config, self.generator
        b, _, frames, height, width = video.shape
        chunk = cfg.chunk_frames
        chunks = frames // chunk
        sigma = noise_levels(self.noise, b, chunks, g).repeat_interleave(chunk, 1)
        context = (cfg.context_sigma_max * torch.rand(b, chunks, generator=g)).repeat_interleave(chunk, 1)
        noise, context_noise = torch.randn(video.shape, generator=g), torch.randn(video.shape, generator=g)
        s, c = sigma[:, None, :, None, None], context[:, None, :, None, None]
        x_t, x_c = (1 - s) * video + s * noise, (1 - c) * video + c * context_noise
        drop = torch.rand(b, generator=g) < cfg.caption_dropout
        text = self.captions(["" if d else cap for cap, d in zip(captions, drop.tolist())])
        t = self.transformer
        tokens = t.tokens_per_frame(height, width)
        positions = torch.arange(frames)
        rotary = t.rotary(torch.cat((positions, positions)), torch.cat((positions, positions)), height, width)
        mask = teacher_forcing.dense_mask(frames, chunk, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            extra = () if anchors is None else tuple(torch.cat((a, a), 2) for a in anchors)
            camera = self.encoder(torch.cat((rays, rays), 2), *extra)
            pred = t.forward_chunk(torch.cat((x_c, x_t), 2), torch.cat((context, sigma), 1) * 1000.0,
                                   t.encode_prompt_kv(text), None, rotary, attention_mask=mask,
                                   camera_tokens=camera)[:, :, frames:]
        error = flow_error(pred, x_t, video, noise, sigma, "sample", cfg.x0_sigma_floor)
        return error.pow(2).mean()

    def lr_factor(self) -> float:
        return min(1.0, (self.step + 1) / max(self.config.warmup, 1))

    def run(self, until: int | None = None) -> None:
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        log = open(self.out / "log.jsonl", "a")
        until = min(until or cfg.steps, cfg.steps)
        window, began = [], time.time()
        while self.step < until:
            video, rays, captions, anchors = self.batch(self.step)
            for group, base in zip(self.optimizer.param_groups, (cfg.lr, cfg.encoder_lr)):
                group["lr"] = base * self.lr_factor()
            loss = self.loss(video, rays, captions, anchors)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(self.transformer.parameters()) + list(self.encoder.parameters()), 1.0)
            self.optimizer.step()
            self.ema_t.update(self.transformer)
            self.ema_e.update(self.encoder)
            self.step += 1
            window.append(loss.item())
            if self.step % 20 == 0 or self.step == until:
                log.write(json.dumps({"step": self.step, "loss": float(np.mean(window)),
                                      "seconds": round(time.time() - began, 1)}) + "\n")
                log.flush()
                window = []
            if self.step % cfg.save_every == 0 or self.step == until:
                self.save()
        log.close()

    # ---- state -----------------------------------------------------------------------------------------------
    def save(self) -> None:
        folder = self.out / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        model = {"transformer": self.transformer.state_dict(), "encoder": self.encoder.state_dict()}
        ema = {"transformer": self.ema_t.state_dict(), "encoder": self.ema_e.state_dict()}
        save_state({"step": self.step, "model": model, "ema": ema, "optimizer": self.optimizer.state_dict(),
                    "scheduler": None, "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "numpy_rng": None, "python_rng": None}, folder / "state.safetensors")
        self.export(self.out / "pipeline")

    def _load(self, path: Path) -> None:
        state = load_state(path)
        self.transformer.load_state_dict(state["model"]["transformer"])
        self.encoder.load_state_dict(state["model"]["encoder"])
        self.ema_t.load_state_dict(state["ema"]["transformer"])
        self.ema_e.load_state_dict(state["ema"]["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def export(self, folder: Path) -> None:
        """The EMA weights as a pipeline folder (the init pipeline's, plus camera_encoder/)."""
        import copy

        transformer = self.ema_t.copy_to(copy.deepcopy(self.transformer)).eval()
        encoder = self.ema_e.copy_to(copy.deepcopy(self.encoder)).eval()
        pipe = self.source
        original = pipe.transformer, pipe.camera_encoder
        pipe.register_modules(transformer=transformer, camera_encoder=encoder)
        try:
            pipe.save_pretrained(folder)
        finally:
            pipe.register_modules(transformer=original[0], camera_encoder=original[1])


def main(argv: list[str] | None = None) -> int:
    """``python -m streamgen.train.camera --out runs/camera [--resume] [--steps N] ...``"""
    import argparse

    defaults = CameraTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m streamgen.train.camera", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=defaults.init, help="pipeline folder or shipped name to start from")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    args = parser.parse_args(argv)
    config = dataclasses.replace(defaults, init=args.init, out=args.out, steps=args.steps,
                                 batch_size=args.batch_size, threads=args.threads, seed=args.seed)
    CameraTrainer(config, resume=args.resume).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
