"""Tiny random-weights pipelines: the same classes as the real thing at CPU-test sizes, built offline.

Nothing can be downloaded from a model hub here, so tests and examples build their own text encoder (a small UMT5,
the Wan text encoder's architecture) and a character-level tokenizer, and save everything with
``save_pretrained`` so loading goes through the exact path real checkpoints take.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .models.causal_wan import CausalWanTransformer3DModel
from .pipeline import StreamingVideoPipeline
from .vae import PixelSpaceVAE

CHARACTERS = string.ascii_lowercase + string.digits + " .,;:!?'-"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased character-level tokenizer with T5 conventions (pad 0, eos 1 appended, unk 2)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(CHARACTERS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_text_encoder(hidden_size: int, seed: int = 0) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=len(CHARACTERS) + 3, d_model=hidden_size, d_kv=8, d_ff=2 * hidden_size, num_layers=1,
        num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0,
    )
    return UMT5EncoderModel(config).eval()


def build_tiny_pipeline(
    *,
    vae: str = "pixel",
    height: int = 32,
    width: int = 32,
    channels: int = 3,
    dim_heads: tuple[int, int] = (2, 16),
    num_layers: int = 2,
    text_dim: int = 32,
    chunk_frames: int = 3,
    max_sequence_length: int = 32,
    seed: int = 0,
) -> StreamingVideoPipeline:
    """A random-weights :class:`StreamingVideoPipeline` with a pixel-space (``vae="pixel"``) or a small random
    ``AutoencoderKLWan`` (``vae="wan"``)."""
    if vae == "pixel":
        autoencoder = PixelSpaceVAE(channels=channels)
        latent_channels = channels
    elif vae == "wan":
        torch.manual_seed(seed)
        autoencoder = AutoencoderKLWan(
            base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ).eval()
        latent_channels = autoencoder.config.z_dim
    else:
        raise ValueError(f"vae must be 'pixel' or 'wan', got {vae!r}")
    heads, head_dim = dim_heads
    torch.manual_seed(seed)
    transformer = CausalWanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=latent_channels,
        out_channels=latent_channels, text_dim=text_dim, freq_dim=32, ffn_dim=2 * heads * head_dim,
        num_layers=num_layers, cross_attn_norm=True, rope_max_seq_len=1024,
    ).eval()
    return StreamingVideoPipeline(
        tokenizer=char_tokenizer(),
        text_encoder=tiny_text_encoder(text_dim, seed),
        transformer=transformer,
        vae=autoencoder,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        chunk_frames=chunk_frames,
        max_sequence_length=max_sequence_length,
        height=height,
        width=width,
    )


def save_tiny_pipeline(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    build_tiny_pipeline(**kwargs).save_pretrained(path)
    return path


def random_pipeline_from_configs(
    folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StreamingVideoPipeline:
    """A pipeline with the sizes of a configs-only folder (e.g. the shipped ``wan2.1-1.3b``) and random weights.

    Speed does not depend on weight values, so this measures a real model's throughput without its checkpoint.
    The text encoder is a one-layer stand-in of the right width (prompts are encoded once per prompt, outside the
    per-chunk path being measured). On ``device="meta"`` nothing is allocated: sizes only (``streamgen info``); the
    stand-in text encoder then runs on the CPU, as a tokenizer's masks cannot be evaluated on meta tensors.
    """
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    device = torch.device(device)
    with torch.device(device):
        transformer = CausalWanTransformer3DModel.from_config(CausalWanTransformer3DModel.load_config(folder / "transformer"))
        vae_class = PixelSpaceVAE if index.get("vae", [None, None])[1] == PixelSpaceVAE.__name__ else AutoencoderKLWan
        vae = vae_class.from_config(vae_class.load_config(folder / "vae"))
    text_dim = transformer.config.text_dim
    pipe = StreamingVideoPipeline(
        tokenizer=char_tokenizer(),
        text_encoder=tiny_text_encoder(text_dim).to("cpu" if device.type == "meta" else device),
        transformer=cast_keeping_fp32_modules(transformer, dtype).eval(),
        vae=cast_keeping_fp32_modules(vae, dtype).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(
            FlowMatchEulerDiscreteScheduler.load_config(folder / "scheduler")
        ),
        **{k: index[k] for k in PIPELINE_CONFIG_KEYS if k in index},
    )
    return pipe


def cast_keeping_fp32_modules(model, dtype: torch.dtype):
    """``model.to(dtype)`` except the parts diffusers keeps in float32 when loading (``_keep_in_fp32_modules``)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep.intersection(name.split(".")) else dtype)
    return model


# Pipeline config entries (not components) a model_index.json may carry.
PIPELINE_CONFIG_KEYS = (
    "chunk_frames", "denoising_timesteps", "context_timestep", "max_sequence_length", "fps", "default_cache",
    "height", "width", "num_inference_steps", "guidance_scale", "rope_range",
)
