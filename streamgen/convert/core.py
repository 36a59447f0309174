"""``convert``: a Self-Forcing / LongLive / Anchor Forcing / Wan checkpoint -> a streamgen folder.

Output (written into a temporary folder next to ``out`` and renamed at the very end, so a failure at any point
leaves nothing behind):

- always ``OUT/transformer/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``), written by
  ``CausalWanTransformer3DModel.save_pretrained``;
- with ``base_pipeline`` (a diffusers ``Wan2.1-T2V-1.3B-Diffusers`` folder) a whole pipeline folder:
  ``OUT/model_index.json`` of a ``StreamingVideoPipeline``; ``text_encoder``, ``tokenizer`` and ``vae`` are
  **symbolic links** to the Wan folder's (absolute paths: no GBs copied, but moving or deleting the Wan folder
  breaks the converted one); ``scheduler/`` is a copy of the Wan scheduler config with the flow shift set to 5,
  the shift Self-Forcing, LongLive and Anchor Forcing sample with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .checkpoints import select_weights
from .config import load_config_source, resolve_config, tensor_config
from .errors import ConversionError, listing
from .formats import FORMATS, CheckpointFormat
from .keys import describe, is_diffusers_layout, strip_wrappers, to_diffusers
from .lora import LoraReport, merge_lora, read_lora

PIPELINE_CONFIG = {
    "chunk_frames": 3,
    "denoising_timesteps": [1000.0, 750.0, 500.0, 250.0],
    "context_timestep": 0.0,
    "max_sequence_length": 512,
    "fps": 16.0,
    "height": 480,
    "width": 832,
}
SHIFT = 5.0
LINKED_COMPONENTS = ("text_encoder", "tokenizer", "vae")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ConversionResult:
    out: Path
    format: str
    source: str  # which entry of the checkpoint, e.g. "generator_ema"
    tensors: int
    config: dict
    pipeline: bool  # a whole pipeline folder (True) or just OUT/transformer (False)
    lora: LoraReport | None = None
    notes: list[str] = field(default_factory=list)


def _check_base_pipeline(base: Path) -> dict:
    index_path = base / "model_index.json"
    if not index_path.is_file():
        raise ConversionError(
            f"--base-pipeline {base} is not a diffusers pipeline folder (no model_index.json); it should be the "
            f"Wan2.1-T2V-1.3B-Diffusers folder"
        )
    try:
        index = json.loads(index_path.read_text())
    except ValueError as err:
        raise ConversionError(f"{index_path} is not valid JSON ({' '.join(str(err).split())})") from None
    absent = [
        name for name in (*LINKED_COMPONENTS, "scheduler")
        if not (isinstance(index.get(name), list) and index[name][0] and (base / name).is_dir())
    ]
    if absent:
        raise ConversionError(
            f"--base-pipeline {base} lacks the component(s) {', '.join(absent)} (model_index.json entry and folder); "
            f"it should be the Wan2.1-T2V-1.3B-Diffusers folder"
        )
    if not (base / "scheduler" / "scheduler_config.json").is_file():
        raise ConversionError(f"--base-pipeline {base} has no scheduler/scheduler_config.json")
    return index


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} already exists; remove it or choose another folder (nothing was written)")


def _map_names(tensors: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Diffusers-named tensors and whether the file used the original layout."""
    stripped: dict[str, torch.Tensor] = {}
    clashes = []
    for key, tensor in tensors.items():
        name = strip_wrappers(key)
        if name in stripped:
            clashes.append(key)
        stripped[name] = tensor
    if clashes:
        raise ConversionError(
            f"{source}: several tensors have the same name once wrapper prefixes are removed: {listing(clashes)}"
        )
    if is_diffusers_layout(stripped):
        return stripped, False
    mapped, unknown = {}, []
    for name, tensor in stripped.items():
        new = to_diffusers(name)
        if new is None:
            unknown.append(name)
        else:
            mapped[new] = tensor
    if unknown:
        image = any(n.startswith("img_emb") or "_img." in n for n in unknown)
        raise ConversionError(
            f"{source} has unexpected keys (not part of a Wan text-to-video transformer): {listing(unknown)}"
            + ("; image-to-video weights are not supported by the streaming model" if image else "")
        )
    return mapped, True


def _expected(config: dict) -> dict[str, torch.Size]:
    from accelerate import init_empty_weights

    from ..models.causal_wan import CausalWanTransformer3DModel

    with init_empty_weights():
        model = CausalWanTransformer3DModel.from_config(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_keys(sd: dict, expected: dict, original_layout: bool, source: str) -> None:
    missing = [describe(k, original_layout) for k in expected if k not in sd]
    unexpected = [describe(k, original_layout) for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
        raise ConversionError(f"{source} does not match a Wan transformer of its size: {'; '.join(parts)}")
    shapes = [
        f"{describe(k, original_layout)} {list(sd[k].shape)} (expected {list(v)})"
        for k, v in expected.items() if tuple(sd[k].shape) != tuple(v)
    ]
    if shapes:
        raise ConversionError(f"{source} has tensors of the wrong shape: {listing(shapes)}")


def _check_finite(sd: dict, original_layout: bool, source: str) -> None:
    bad = [
        describe(k, original_layout) for k, t in sd.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ConversionError(f"{source} has NaN or infinite values in {listing(bad)}: the file is corrupted")


def _write_scheduler(base: Path, dest: Path) -> str:
    config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    keys = [k for k in ("shift", "flow_shift") if k in config]
    if not keys:
        keys = ["flow_shift"] if "UniPC" in str(config.get("_class_name", "")) else ["shift"]
    for key in keys:
        config[key] = SHIFT
    dest.mkdir()
    (dest / "scheduler_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return f"{config.get('_class_name', 'scheduler')} ({', '.join(f'{k}={SHIFT:g}' for k in keys)})"


def _write_pipeline(tmp: Path, base: Path, index: dict, fmt: CheckpointFormat) -> list[str]:
    import diffusers

    notes = []
    for name in LINKED_COMPONENTS:
        try:
            os.symlink(base.resolve() / name, tmp / name, target_is_directory=True)
        except OSError as err:
            raise ConversionError(
                f"cannot create the symbolic link {tmp.name}/{name} -> {base.resolve() / name} "
                f"({err.strerror or err}); "
                f"the converted pipeline links the Wan folder's components instead of copying them"
            ) from None
    scheduler = _write_scheduler(base, tmp / "scheduler")
    model_index = {
        "_class_name": "StreamingVideoPipeline",
        "_diffusers_version": diffusers.__version__,
        **PIPELINE_CONFIG,
        "default_cache": fmt.default_cache,
        "scheduler": list(index["scheduler"]),
        "text_encoder": list(index["text_encoder"]),
        "tokenizer": list(index["tokenizer"]),
        "transformer": ["streamgen.models.causal_wan", "CausalWanTransformer3DModel"],
        "vae": list(index["vae"]),
    }
    (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    notes.append(
        f"{', '.join(LINKED_COMPONENTS)} are symbolic links to {base.resolve()} (moving or deleting that folder breaks "
        f"this one); scheduler: {scheduler}"
    )
    return notes


def _remove_created(folder: Path, created: Path | None) -> None:
    """Remove the (empty) parent folders this conversion created, up to and including ``created``."""
    if created is None:
        return
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def convert(
    format: str,
    ckpt: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    base_pipeline: str | os.PathLike | None = None,
    out: str | os.PathLike,
    config: Mapping | str | os.PathLike | None = None,
    weights: str | None = None,
    dtype: str | None = None,
) -> ConversionResult:
    """Convert a checkpoint to ``OUT/transformer`` (+ a pipeline folder with ``base_pipeline``). See the module
    docstring; raises :class:`ConversionError` (one paragraph) and leaves no output folder on any failure."""
    fmt = FORMATS.get(format)
    if fmt is None:
        raise ConversionError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if lora is not None and not fmt.accepts_lora:
        pairs = [f for f in FORMATS.values() if f.released_lora]
        raise ConversionError(
            f"{fmt.title} checkpoints have no LoRA; a base model plus a LoRA file is the "
            f"{' / '.join(f.title for f in pairs)} layout: use {' or '.join(f'--format {f.name}' for f in pairs)}"
        )
    if (lora_rank is not None or lora_alpha is not None) and lora is None:
        raise ConversionError("--lora-rank / --lora-alpha need --lora FILE")
    out = Path(out)
    _check_out(out)
    ckpt = Path(ckpt)
    base = Path(base_pipeline) if base_pipeline is not None else None
    index = _check_base_pipeline(base) if base is not None else None
    name = fmt.title

    selected = select_weights(fmt, ckpt, weights)
    notes = list(selected.notes)
    source = f"the {name} checkpoint {ckpt}" + (f" ({selected.entry})" if selected.entry else "")
    sd, original_layout = _map_names(selected.tensors, source)
    if not original_layout:
        notes.append("the weights were already in diffusers' layout")

    sources, source_names = {}, []
    if selected.config:
        sources.update(load_config_source(selected.config, "Wan config"))
        source_names.append(f"{ckpt}/config.json")
    if base is not None and (base / "transformer" / "config.json").is_file():
        sources.update(load_config_source(base / "transformer" / "config.json", "transformer config"))
        source_names.append(f"{base}/transformer/config.json")
    if config is not None:
        sources.update(load_config_source(config, "config"))
        source_names.append("--config / --num-heads" if not isinstance(config, (str, os.PathLike)) else str(config))
    model_config = resolve_config(
        tensor_config(sd, original_layout), sources, " and ".join(source_names) or "the default Wan config"
    )
    _check_keys(sd, _expected(model_config), original_layout, source)

    report = None
    if lora is not None:
        report = merge_lora(
            sd, read_lora(lora), rank=lora_rank, alpha=lora_alpha,
            alpha_defaults_to_rank=fmt.lora_alpha_is_rank, format_name=name,
        )
    elif fmt.released_lora:
        notes.append(
            f"no --lora: converted the base weights only ({name}'s released model is the base plus a LoRA: "
            f"{fmt.released_lora[1]})"
        )
    _check_finite(sd, original_layout, source + (" merged with its LoRA" if report else ""))
    if dtype is not None:
        sd = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in sd.items()}

    parent, created = out.parent, None
    while not parent.exists():
        created, parent = parent, parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output folder gets the usual permissions
    except OSError as err:
        _remove_created(out.parent, created)
        raise ConversionError(f"cannot create the output folder {out}: {err}") from None
    try:
        from accelerate import init_empty_weights

        from ..models.causal_wan import CausalWanTransformer3DModel

        with init_empty_weights():
            model = CausalWanTransformer3DModel.from_config(model_config)
        model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)
        try:
            model.save_pretrained(tmp / "transformer", safe_serialization=True)
            if base is not None:
                notes += _write_pipeline(tmp, base, index, fmt)
        except OSError as err:
            raise ConversionError(f"cannot write the output folder {out}: {err}") from None
        if base is None:
            notes.append(
                "no --base-pipeline: wrote only the transformer folder; pass the Wan2.1-T2V-1.3B-Diffusers folder as "
                "--base-pipeline to get a pipeline folder StreamingVideoPipeline.from_pretrained loads"
            )
        _check_out(out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(out.parent, created)
        raise
    return ConversionResult(
        out=out, format=fmt.name, source=selected.entry or "state dict", tensors=len(sd), config=model_config,
        pipeline=base is not None, lora=report, notes=notes,
    )
