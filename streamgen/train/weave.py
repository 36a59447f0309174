"""Train AnchorWeave's weaving controller (:class:`~streamgen.models.anchor_weave.AnchorWeaveController`) over a
frozen base pipeline: only the controller learns, as in the paper.

Data: the camera world's flights of :func:`streamgen.train.camera.camera_clip` (30% fly back over where they
began). Each chunk's anchors come from the clip's earlier frames, kept in a :class:`~streamgen.geometry.GeometricMemory`
with exact depth and retrieved as a stream retrieves them (``retrieval``, ``anchor_k`` with the first frame,
``coverage_scale``): :func:`weave_sample`. Anchor dropout: each anchor is emptied with probability ``anchor_dropout``.

Step: dense teacher forcing (``[clean | noisy]``, :func:`streamgen.train.teacher_forcing.dense_mask`) with the
controller's block residuals for every chunk of both halves (the controller sees one chunk at a time, as in a
stream), x0 loss of the base, plus ``motion_weight`` times the error of the predicted frame-to-frame differences
(the paper's 0.2-weighted motion loss). AdamW on the controller at ``lr`` (the paper's 2e-4 by default), EMA.
Resumable (``state.safetensors``); exports the base pipeline with a ``controller/`` folder beside its transformer.

Captions come from the base's text encoder, or (a machine without it) from ``caption_table``: a safetensors file of
precomputed states written by :func:`write_caption_table` for every caption the camera world can give.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..geometry import GeometricMemory
from ..models.anchor_weave import AnchorWeaveController, anchor_inputs, pose_features
from ..models.camera import chunk_relative_poses, chunk_relative_rays
from ..world.camera import default_intrinsics
from . import teacher_forcing
from .camera import FlightTrainConfig, camera_clip, clip_memory_runs, noise_clips
from .accelerated_run import AcceleratedRun
from .distributed import rows
from .config import NoiseConfig
from .trainer import EMA, flow_error

__all__ = ["WeaveTrainConfig", "weave_sample", "WeaveTrainer", "train", "write_caption_table", "map_captions"]


@dataclass
class WeaveTrainConfig(FlightTrainConfig):
    # The frozen base (``--init``): a pipeline folder or a shipped pipeline's name. A camera model's encoder gets the
    # rays and, for an encoder that takes anchors, an empty memory (all holes): the controller alone brings the memory.
    init: str = "shapeworld-cam-tiny"
    out: str = "runs/weave"
    steps: int = 2000
    batch_size: int = 16
    retrieval: str = "coverage"  # the anchors of each chunk, as a stream retrieves them (anchor_k with the first)
    coverage_scale: int = 4
    anchor_dropout: float = 0.1
    motion_weight: float = 0.2
    dim: int = 128
    layers: int = 2
    heads: int = 2
    translation_unit: float = 8.0  # of the controller's pose features
    workers: int | None = 0  # processes rendering clips (0: in the training process; None: all cores but one)
    reuse: int = 1  # optimizer steps per rendered batch, each with fresh noise (rendering is the slow part on a GPU)
    caption_table: str | None = None

    def validate(self) -> "WeaveTrainConfig":
        from ..geometry import RETRIEVAL_METHODS

        super().validate()
        for name in ("reuse", "coverage_scale", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.anchor_dropout <= 1:
            raise ValueError(f"anchor_dropout must be in [0, 1], got {self.anchor_dropout}")
        if (self.workers or 0) < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.retrieval not in RETRIEVAL_METHODS:
            raise ValueError(f"retrieval must be one of {', '.join(RETRIEVAL_METHODS)}, got {self.retrieval!r}")
        return self


def weave_sample(index: int, config: WeaveTrainConfig, ray_unit: float = 1.0) -> dict:
    """Clip ``index`` with the controller's inputs for every chunk: video [C, F, h, w] in [-1, 1], anchors
    [K, C, F, h, w], holes [K, 1, F, h, w], anchor_poses [K, F, 12], target_poses [F, 12], the base's chunk-relative
    rays [6, F, h, w] (translations in ``ray_unit``s, the base camera encoder's), caption."""
    frames, poses, caption = camera_clip(index, config)
    video = torch.tensor(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    channels, count, height, width = video.shape
    camera = default_intrinsics()
    latent_camera = camera.scaled(width / camera.width)
    k, unit = config.anchor_k, config.translation_unit
    anchors, holes = torch.zeros(k, channels, count, height, width), torch.ones(k, 1, count, height, width)
    anchor_poses = torch.zeros(k, count, 12)
    memory = GeometricMemory(count + 1, coverage_scale=config.coverage_scale)
    for run in clip_memory_runs(video, poses, latent_camera, config.chunk_frames, memory):
        picked = memory.retrieve(poses[run], latent_camera, k, config.retrieval) if len(memory) else []
        a, h, p = anchor_inputs(memory, picked, poses[run], latent_camera, k, unit)
        anchors[:, :, run], holes[:, :, run], anchor_poses[:, run] = a, h, p
    relative = chunk_relative_poses(poses, 0, config.chunk_frames)
    rays = chunk_relative_rays(camera, poses, 0, config.chunk_frames, height, width, ray_unit)
    return {"video": video, "anchors": anchors, "holes": holes, "anchor_poses": anchor_poses,
            "target_poses": pose_features(relative, unit), "rays": rays.float(), "caption": caption}


def map_captions() -> list[str]:
    """Every caption a camera-world map can have (and "" for caption dropout)."""
    import itertools

    from ..world.camera.map import BACKGROUNDS, OBJECT_COLORS, PALETTE_SIZE, map_caption

    return [""] + [map_caption(ground, palette) for ground in BACKGROUNDS
                   for palette in itertools.permutations([c for c in OBJECT_COLORS if c != ground], PALETTE_SIZE)]


def write_caption_table(pipeline: str, path: str | Path) -> int:
    """Precompute the text states of :func:`map_captions` with ``pipeline``'s text encoder (fp16)."""
    from safetensors.torch import save_file

    from ..loading import open_pipeline
    from ..text_encoders import load_packaged_text_encoder
    from .data import CaptionEncoder

    pipe = open_pipeline(pipeline)
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    if encoder is None:
        tokenizer, encoder = load_packaged_text_encoder(pipe.config.text_encoder_package)
    captions = map_captions()
    states = CaptionEncoder(tokenizer, encoder, pipe.config.max_sequence_length)(captions)
    used = int(states.abs().amax((0, 2)).nonzero().max()) + 1  # positions past every caption's end are zeros
    save_file({"states": states[:, :used].half().contiguous()}, str(path),
              metadata={"captions": json.dumps(captions), "length": str(states.shape[1])})
    return len(captions)


class _CaptionTable:
    def __init__(self, path: str):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            self.index = {c: i for i, c in enumerate(json.loads(f.metadata()["captions"]))}
            states = f.get_tensor("states").float()
            length = int(f.metadata()["length"])
        self.states = torch.nn.functional.pad(states, (0, 0, 0, length - states.shape[1]))

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in captions if c not in self.index]
        if missing:
            raise ValueError(f"caption {missing[0]!r} is not in the caption table")
        return self.states[[self.index[c] for c in captions]]


class _Clips(torch.utils.data.Dataset):
    def __init__(self, config: WeaveTrainConfig, ray_unit: float):
        self.config, self.ray_unit = config, ray_unit

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, index: int) -> dict:
        return weave_sample(index, self.config, self.ray_unit)


def _collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "caption"}
    out["caption"] = [s["caption"] for s in samples]
    return out


class WeaveFlow(torch.nn.Module):
    """The frozen base (transformer, camera encoder) and the controller in one module, so that DDP sees one forward:
    the dense teacher-forcing forward of ``[clean | noisy]`` with the controller's residuals for every chunk of both
    halves (bf16-autocast on the input's device when ``bf16``); the noisy half's prediction [B, C, F, h, w]."""

    def __init__(self, base, camera_encoder, controller: AnchorWeaveController, chunk_frames: int, bf16: bool):
        super().__init__()
        self.base, self.camera_encoder, self.controller = base, camera_encoder, controller
        self.chunk_frames, self.bf16 = chunk_frames, bf16

    def forward(self, x_c, x_t, context, sigma, text, anchors, holes, anchor_poses, target_poses, rays):
        """``x_c``, ``x_t`` [B, C, F, h, w] (clean and noisy copies), ``context``, ``sigma`` [B, F] noise levels, the
        per-clip controller inputs of :func:`weave_sample` (batched) and the base's rays [B, 6, F, h, w]."""
        b, _, frames, height, width = x_t.shape
        chunk = self.chunk_frames
        chunks = frames // chunk

        def per_chunk(t: torch.Tensor, axis: int) -> torch.Tensor:  # [..., F, ...] -> [B * chunks, ..., chunk, ...]
            return t.unflatten(axis, (chunks, chunk)).movedim(axis, 1).flatten(0, 1)

        base = self.base
        positions = torch.arange(frames)
        rotary = base.rotary(torch.cat((positions, positions)), torch.cat((positions, positions)), height, width)
        mask = teacher_forcing.dense_mask(frames, chunk, base.tokens_per_frame(height, width), device=x_t.device)
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            # the controller sees one chunk at a time, as in a stream: clean chunks first, then noisy ones
            residuals = self.controller(
                torch.cat((per_chunk(x_c, 2), per_chunk(x_t, 2))),
                torch.cat((per_chunk(context, 1)[:, 0], per_chunk(sigma, 1)[:, 0])) * 1000.0,
                per_chunk(anchors, 3).repeat(2, 1, 1, 1, 1, 1), per_chunk(holes, 3).repeat(2, 1, 1, 1, 1, 1),
                per_chunk(anchor_poses, 2).repeat(2, 1, 1, 1), per_chunk(target_poses, 1).repeat(2, 1, 1),
                text.repeat_interleave(chunks, 0).repeat(2, 1, 1))
            # [L, 2 * B * chunks, chunk tokens, D] -> [L, B, 2F tokens, D] in the order of [clean | noisy]
            residuals = residuals.unflatten(1, (2, b, chunks)).permute(0, 2, 1, 3, 4, 5).flatten(2, 4)
            return base.forward_chunk(torch.cat((x_c, x_t), 2), torch.cat((context, sigma), 1) * 1000.0,
                                      base.encode_prompt_kv(text), None, rotary, attention_mask=mask,
                                      camera_tokens=self._base_camera(rays),
                                      block_residuals=residuals)[:, :, frames:]

    def _base_camera(self, rays: torch.Tensor) -> torch.Tensor | None:
        """The frozen base's camera tokens of the doubled clip: its rays, and an empty memory."""
        encoder = self.camera_encoder
        if encoder is None:
            return None
        rays = torch.cat((rays, rays), 2)
        with torch.no_grad():
            return encoder(rays, *encoder.empty_memory(rays))


class WeaveTrainer(AcceleratedRun):
    """``WeaveTrainer(config).run()`` trains the controller, logs, checkpoints and exports into ``config.out``; on one
    process or N (``torchrun``: each rank renders and trains its share of every batch, the draws made at the whole
    batch's size from one generator, rank 0 alone writing), as the camera trainer."""

    def __init__(self, config: WeaveTrainConfig, resume: bool = False):
        import os

        from ..loading import open_pipeline

        config = config.validate()
        if config.workers is None:
            config = dataclasses.replace(config, workers=max((os.cpu_count() or 1) - 1, 0))
        self.config, self.out = config, Path(config.out)
        state = self._start(config, resume)
        self.device = self.accelerator.device
        torch.manual_seed(config.seed)
        pipe = open_pipeline(config.init)
        self.source = pipe
        base = pipe.transformer.to(self.device).eval().requires_grad_(False)
        encoder, self.ray_unit = pipe.camera_encoder, 1.0
        if encoder is not None:
            encoder = encoder.to(self.device).eval().requires_grad_(False)
            self.ray_unit = float(encoder.config.translation_unit)
        controller = getattr(pipe, "controller", None)
        if controller is None:
            controller = AnchorWeaveController.for_transformer(
                base, dim=config.dim, num_layers=config.layers, num_heads=config.heads,
                translation_unit=config.translation_unit)
        self.controller = controller.to(self.device).train().requires_grad_(True)
        if config.caption_table:
            self.captions = _CaptionTable(config.caption_table)
        else:
            from ..text_encoders import load_packaged_text_encoder
            from .data import CaptionEncoder

            tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
            if text_encoder is None:
                tokenizer, text_encoder = load_packaged_text_encoder(pipe.config.text_encoder_package)
            self.captions = CaptionEncoder(tokenizer, text_encoder, pipe.config.max_sequence_length)
        self.flow = WeaveFlow(base, encoder, self.controller, config.chunk_frames, config.bf16)
        optimizer = torch.optim.AdamW(self.controller.parameters(), lr=config.lr, weight_decay=0.0)
        self.model, self.optimizer = self.accelerator.prepare(self.flow, optimizer)
        self.ema = EMA(self.controller, config.ema_decay)
        self.ema.to(self.device)
        self.noise = NoiseConfig(context_sigma_max=config.context_sigma_max)
        # One random stream for the whole batch, the same in every process (each keeps its rows of every draw).
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 7)
        self.step = 0
        if state is not None:
            self._load(state)
        self._check_same_start(self.step)

    # ---- data ------------------------------------------------------------------------------------------------
    def batches(self):
        """This process's rows of every batch from step ``self.step`` on: batch n holds clips n * batch_size + i,
        rank r of N the r-th of N equal shares; batch n serves steps n * reuse .. n * reuse + reuse - 1 (a resumed
        run sees the same clips)."""
        cfg = self.config
        rank, world = self.shard
        share = cfg.batch_size // world
        first = self.step // cfg.reuse
        indices = [n * cfg.batch_size + rank * share + i for n in range(first, cfg.steps // cfg.reuse + 1)
                   for i in range(share)]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(_Clips(cfg, self.ray_unit), indices), batch_size=share, num_workers=cfg.workers,
            collate_fn=_collate, prefetch_factor=4 if cfg.workers else None,
            worker_init_fn=lambda _: torch.set_num_threads(1))
        yield from loader

    def _step_batches(self):
        """Each step's batch: every batch ``reuse`` times (a resumed run, the first for the steps it has left)."""
        left = self.config.reuse - self.step % self.config.reuse
        for batch in self.batches():
            for _ in range(left):
                yield batch
            left = self.config.reuse

    # ---- one step --------------------------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        """This process's rows' loss; every random draw is made at the whole batch's size and each process keeps its
        rows, so the ranks' losses average (DDP) to one process's on the whole batch."""
        cfg, dev = self.config, self.device
        n = noise_clips(batch["video"], cfg, self.noise, self.generator, self.shard, dev)
        total, mine = rows(len(n.drop), *self.shard)
        k = batch["anchors"].shape[1]
        dropped = (torch.rand(total, k, generator=self.generator) < cfg.anchor_dropout)[mine]
        dropped = dropped[:, :, None, None, None, None]
        anchors = batch["anchors"].masked_fill(dropped, 0.0).to(dev)
        holes = batch["holes"].masked_fill(dropped, 1.0).to(dev)
        text = self.captions(["" if d else cap for cap, d in zip(batch["caption"], n.drop)]).to(dev)
        pred = self.model(n.x_c, n.x_t, n.context, n.sigma, text, anchors, holes, batch["anchor_poses"].to(dev),
                          batch["target_poses"].to(dev), batch["rays"].to(dev))
        error = flow_error(pred, n.x_t, n.video, n.noise, n.sigma, "sample", cfg.x0_sigma_floor)
        loss = error.pow(2).mean()
        if cfg.motion_weight:  # AnchorWeave's frame-difference loss on the predicted clean frames
            loss = loss + cfg.motion_weight * (pred.float().diff(dim=2) - n.video.diff(dim=2)).pow(2).mean()
        return loss

    def run(self, until: int | None = None, deadline: float | None = None) -> Path:
        """Train to step ``until`` (default: ``steps``), or until ``deadline`` (a time.time()) passes; the output
        folder."""
        cfg, acc = self.config, self.accelerator
        self._begin_run()
        until = min(until or cfg.steps, cfg.steps)
        window, began = [], time.time()
        self.model.train()
        for batch in self._step_batches():
            out_of_time = deadline is not None and time.time() > deadline
            if acc.num_processes > 1:  # every rank stops at the same step
                flag = torch.tensor([float(out_of_time)], device=acc.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                out_of_time = bool(flag[0])
            if self.step >= until or out_of_time:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * self.lr_factor()
            loss = self.loss(batch)
            self._apply(loss, self.controller.parameters())
            self.ema.update(self.controller)
            self.step += 1
            window.append(loss.item())
            if self.step % cfg.log_every == 0 or self.step == until:
                self._log({"step": self.step, "loss": self._mean_loss(window),
                           "seconds": round(time.time() - began, 1)})
                window = []
            if self.step % cfg.save_every == 0:
                self.save()
        self.save()
        return self.out

    # ---- state -----------------------------------------------------------------------------------------------
    def save(self) -> None:
        """The training state and the export (:meth:`AcceleratedRun._save`)."""
        self._save(self.controller.state_dict(), self.ema.state_dict())

    def _load(self, state: dict) -> None:
        self.controller.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self._load_run(state)

    def export(self, folder: Path) -> None:
        """The base pipeline with the EMA controller as its ``controller`` component, on the CPU."""
        import copy

        controller = self.ema.copy_to(copy.deepcopy(self.controller).cpu()).eval()
        pipe = self.source
        original = getattr(pipe, "controller", None)
        pipe.register_modules(controller=controller)
        try:
            pipe.save_pretrained(folder)
        finally:
            pipe.register_modules(controller=original)


def train(config: WeaveTrainConfig, resume: bool = False, init: str | Path | None = None) -> Path:
    """Train with ``config`` (``streamgen train --config`` with ``trainer: weave``); ``init``: the base pipeline
    instead of ``config.init``. The output folder."""
    if init is not None:
        config = dataclasses.replace(config, init=str(init))
    return WeaveTrainer(config, resume=resume).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m streamgen.train.weave --out runs/weave [--resume] [--steps N] ...``"""
    import argparse

    defaults = WeaveTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m streamgen.train.weave", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=defaults.init, help="the frozen base pipeline (folder or shipped name)")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--reuse", type=int, default=defaults.reuse)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--caption-table", default=None)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (and save)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    config = WeaveTrainConfig(init=args.init, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              ema_decay=args.ema_decay, reuse=args.reuse, threads=args.threads, workers=args.workers,
                              device=args.device, caption_table=args.caption_table)
    trainer = WeaveTrainer(config, resume=args.resume)
    trainer.run(deadline=None if args.seconds is None else time.time() + args.seconds)
    print(f"trained to step {trainer.step}: {config.out} (pipeline: {Path(config.out) / 'pipeline'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
