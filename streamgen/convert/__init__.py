"""``streamgen convert``: turn the checkpoints users already hold into streamgen folders.

Reads Self-Forcing (``self_forcing_dmd.pt``), LongLive (``longlive_base.pt`` + ``lora.pt``), Anchor Forcing
(``base.pt`` + ``final.pt``) and bare original-layout Wan checkpoints; renames every parameter from the original
Wan layout to diffusers' ``WanTransformer3DModel`` (exact, table-driven: :mod:`streamgen.convert.keys`); merges a
PEFT LoRA; writes ``OUT/transformer`` with ``CausalWanTransformer3DModel.save_pretrained`` and, given the user's
``Wan2.1-T2V-1.3B-Diffusers`` folder, a ``StreamingVideoPipeline`` folder around it (text encoder, tokenizer and
VAE symlinked, not copied).

```py
>>> from streamgen.convert import convert
>>> convert("self-forcing", "checkpoints/self_forcing_dmd.pt", base_pipeline="Wan2.1-T2V-1.3B-Diffusers",
...         out="converted/self-forcing")
```

Importing this package is cheap (no torch): the CLI registers its subcommand with :func:`register_cli`.
"""

from __future__ import annotations

from .cli import register_cli
from .errors import ConversionError
from .formats import FORMATS, CheckpointFormat, register_format

__all__ = ["CheckpointFormat", "ConversionError", "FORMATS", "convert", "register_cli", "register_format"]


def convert(
    format,
    ckpt,
    *,
    lora=None,
    lora_rank=None,
    lora_alpha=None,
    base_pipeline=None,
    out,
    config=None,
    weights=None,
    dtype=None,
):
    """Convert checkpoint ``ckpt`` of ``format`` (a name in :data:`FORMATS`) into the folder ``out``.

    - ``lora`` / ``lora_rank`` / ``lora_alpha``: a PEFT LoRA merged as ``W + alpha / rank * B @ A`` (rank and alpha
      from the flags, else the file's ``adapter_config.json`` / alpha tensors, else ``alpha = rank`` for LongLive
      and Anchor Forcing, whose configs use it);
    - ``base_pipeline``: a diffusers ``Wan2.1-T2V-1.3B-Diffusers`` folder; gives the transformer config and the
      text encoder / tokenizer / VAE (symlinked) of a full pipeline folder. Without it only ``out/transformer``
      is written;
    - ``config``: diffusers (or original Wan) transformer config entries, a dict or a JSON file, e.g.
      ``{"num_attention_heads": 12}``; otherwise the config is read off the tensors (heads: 128 channels each);
    - ``weights``: which entry of a training checkpoint to take (``generator_ema`` / ``generator`` / ``model``),
      default per format (Self-Forcing: ``generator_ema``; LongLive / Anchor Forcing: ``generator``);
    - ``dtype``: ``float32`` / ``bfloat16`` / ``float16``; default: keep the checkpoint's.

    Returns a :class:`~streamgen.convert.core.ConversionResult`. Raises :class:`ConversionError` (a one-paragraph
    message) on any bad input, and then leaves no output folder behind.
    """
    from .core import convert as _convert

    return _convert(
        format, ckpt, lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha, base_pipeline=base_pipeline, out=out,
        config=config, weights=weights, dtype=dtype,
    )
