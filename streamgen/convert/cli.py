"""The ``convert`` subcommand. ``streamgen.cli`` wires it with ``register_cli(subparsers)``."""

from __future__ import annotations

import argparse
import sys

from .errors import ConversionError, either
from .formats import DTYPES, FORMATS

DESCRIPTION = """\
Convert a {formats} checkpoint into a streamgen folder.
With --base-pipeline (your Wan2.1-T2V-1.3B-Diffusers folder) OUT is a StreamingVideoPipeline folder whose
text_encoder, tokenizer and vae are symbolic links into that folder (nothing large is copied; keep the Wan folder
where it is) and whose scheduler is a copy with flow shift 5. Without it only OUT/transformer is written.
Checkpoints are loaded with weights_only=True. On any error nothing is left at OUT.

examples:
  streamgen convert --format self-forcing --ckpt checkpoints/self_forcing_dmd.pt \\
      --base-pipeline Wan2.1-T2V-1.3B-Diffusers --out converted/self-forcing
  streamgen convert --format longlive --ckpt longlive_models/models/longlive_base.pt \\
      --lora longlive_models/models/lora.pt --base-pipeline Wan2.1-T2V-1.3B-Diffusers --out converted/longlive
  streamgen convert --format anchor-forcing --ckpt ckpt/base.pt --lora ckpt/final.pt \\
      --base-pipeline Wan2.1-T2V-1.3B-Diffusers --out converted/anchor-forcing
"""


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to an ``argparse`` subparsers object (its handler is ``args.func``)."""
    formats = list(FORMATS.values())
    with_lora = [f for f in formats if f.released_lora]
    entries = list(dict.fromkeys(e for f in formats for e in f.weight_entries))
    defaults = {e: [f.name for f in formats if f.weight_entries[:1] == (e,)] for e in entries}
    p = subparsers.add_parser(
        "convert", help=f"convert a {' / '.join(f.title for f in formats)} checkpoint to a streamgen folder",
        description=DESCRIPTION.format(formats=either(f.title for f in formats)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="the checkpoint's project")
    p.add_argument("--ckpt", required=True, metavar="FILE",
                   help="the model checkpoint (.pt / .pth / .safetensors; for --format wan also a folder of shards)")
    p.add_argument("--lora", metavar="FILE", help="a PEFT LoRA to merge ("
                   + ", ".join(f"{f.title} {f.released_lora[1]}" for f in with_lora) + ")")
    p.add_argument("--lora-rank", type=int, metavar="R", help="the LoRA rank (checked against the file)")
    p.add_argument("--lora-alpha", type=float, metavar="A",
                   help="the LoRA alpha; scale = alpha / rank (default: the file's, else alpha = rank for "
                        + " / ".join(f.name for f in formats if f.lora_alpha_is_rank) + ")")
    p.add_argument("--base-pipeline", metavar="WAN_DIFFUSERS_DIR",
                   help="your Wan2.1-T2V-1.3B-Diffusers folder: transformer config + linked components")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist yet)")
    p.add_argument("--num-heads", type=int, metavar="N",
                   help="attention heads (default: from --base-pipeline, else width / 128)")
    p.add_argument("--config", metavar="JSON", help="a transformer config.json (diffusers or original Wan names)")
    p.add_argument("--weights", choices=entries,
                   help="which entry of a training checkpoint (default: "
                        + ", ".join(f"{e} for {' / '.join(names)}" for e, names in defaults.items() if names) + ")")
    p.add_argument("--dtype", choices=DTYPES, help="store the weights in this dtype (default: as in the checkpoint)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Handler of ``streamgen convert``: 0 on success; 1 with a one-paragraph ``error:`` on stderr otherwise."""
    try:
        from .core import convert

        config = None
        if args.config is not None or args.num_heads is not None:
            from .config import load_config_source

            config = load_config_source(args.config, "--config file") if args.config else {}
            if args.num_heads is not None:
                config.pop("attention_head_dim", None)
                config["num_attention_heads"] = args.num_heads
        result = convert(
            args.format, args.ckpt, lora=args.lora, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
            base_pipeline=args.base_pipeline, out=args.out, config=config, weights=args.weights, dtype=args.dtype,
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    c = result.config
    what = "pipeline folder" if result.pipeline else "transformer folder"
    print(f"converted {args.format} checkpoint {args.ckpt} ({result.source}, {result.tensors} tensors) -> {what} "
          f"{result.out}")
    print(f"transformer: {c['num_layers']} layers, {c['num_attention_heads']} heads x {c['attention_head_dim']}, "
          f"ffn {c['ffn_dim']}, text {c['text_dim']}, {c['in_channels']} latent channels")
    if result.lora is not None:
        lora = result.lora
        print(f"LoRA: merged {lora.pairs} pairs from {lora.path} (rank {', '.join(map(str, lora.ranks))}, scale "
              f"{', '.join(f'{s:g}' for s in lora.scales)}; alpha from {lora.alpha_source})")
        for note in lora.notes:
            print(f"note: {note}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m streamgen.convert ...``: the ``convert`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="streamgen")
    sub = parser.add_subparsers(dest="command")
    convert_parser = register_cli(sub)
    args = convert_parser.parse_args(argv)
    return args.func(args)
