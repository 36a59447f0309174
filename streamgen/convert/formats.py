"""The checkpoint formats ``streamgen convert`` reads: one :class:`CheckpointFormat` record each, in :data:`FORMATS`.

No heavy imports: the CLI's ``--help`` imports this. Every format keeps the parameter names of the original Wan code
inside its container (:mod:`.keys` strips the containers and renames), so what tells formats apart is where the
generator's weights sit in the file, whether a LoRA comes with the release, and which cache the method streams with.
To add one, see CONTRIBUTING.md.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format.

    name                 the ``--format`` value
    title                the project's name in messages
    default_cache        the cache preset a converted pipeline streams with (a shipped preset's name)
    weight_entries       the entries of a training checkpoint that may hold the generator, best first (the one the
                         project's own inference loads first); ``()``: a bare state dict, as a file or a folder of
                         ``diffusion_pytorch_model*.safetensors`` shards with the original ``config.json``
    accepts_lora         whether ``--lora`` may merge a LoRA into it
    released_lora        (base model file, LoRA file) when the released model is a base plus a LoRA; converting the
                         base alone then gets a note, and a LoRA file given as the checkpoint names these files
    lora_alpha_is_rank   the project's LoRA code uses alpha = rank when its files carry no alpha
    """

    name: str
    title: str
    default_cache: str
    weight_entries: tuple[str, ...] = ()
    accepts_lora: bool = True
    released_lora: tuple[str, str] | None = None
    lora_alpha_is_rank: bool = False


FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add ``fmt`` to :data:`FORMATS` (``--format`` lists them in registration order); its name must be new."""
    if fmt.name in FORMATS:
        raise ValueError(f"a checkpoint format named {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


# Where the weights sit, read from each project's inference and trainer code:
#
# Self-Forcing (guandeh17/Self-Forcing; Echo-Forcing ships the same file): inference.py loads
# state_dict['generator_ema' if args.use_ema else 'generator'] into a WanDiffusionWrapper whose transformer is .model,
# and the README runs self_forcing_dmd.pt with --use_ema (the released file holds only generator_ema). EMA shadows of
# a training run keep FSDP's _fsdp_wrapped_module. segments.
register_format(CheckpointFormat(
    "self-forcing", "Self-Forcing", "self-forcing", weight_entries=("generator_ema", "generator"), accepts_lora=False,
))
# LongLive (NVlabs/LongLive, configs/longlive_inference.yaml: generator_ckpt longlive_base.pt, lora_ckpt lora.pt,
# use_ema false): inference.py takes generator (generator_ema with use_ema), or model when neither exists. The LoRA
# file is {"generator_lora": <PEFT state dict>, ...} or the PEFT state dict itself; its configs set rank 256, alpha 256
# and its LoRA code falls back to alpha = rank.
register_format(CheckpointFormat(
    "longlive", "LongLive", "longlive", weight_entries=("generator", "generator_ema", "model"),
    released_lora=("longlive_base.pt", "lora.pt"), lora_alpha_is_rank=True,
))
# Anchor Forcing (vivoCameraResearch/Anchor-Forcing, built on LongLive, configs/inference.yaml: generator_ckpt
# ckpt/base.pt, lora_ckpt ckpt/final.pt): LongLive's loading code and layout; its checkpoint is distilled for its own
# cache (junction, tri-region RoPE), so it streams with that preset.
register_format(CheckpointFormat(
    "anchor-forcing", "Anchor Forcing", "anchor-forcing", weight_entries=("generator", "generator_ema", "model"),
    released_lora=("base.pt", "final.pt"), lora_alpha_is_rank=True,
))
# A bare state dict: the original Wan2.1-T2V-1.3B diffusion_pytorch_model.safetensors (or a folder of its shards with
# config.json), or any causal-Wan export.
register_format(CheckpointFormat("wan", "Wan", "self-forcing"))
