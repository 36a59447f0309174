"""Reading checkpoint files safely and picking the generator's weights out of each project's checkpoint dict.

Files are read only with :func:`streamgen.safe_load.torch_load` (``weights_only=True``; memory-mapped when the file
is in the zip format) or with safetensors: a checkpoint never runs code on load.

Which entry of a training checkpoint holds the generator is each format's ``weight_entries``
(:mod:`streamgen.convert.formats` cites each project's loading code). Training checkpoints also hold ``critic``,
optimizer states and ``step``: those are ignored.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..safe_load import UnsafeFileError, torch_load
from .errors import ConversionError, either, listing
from .formats import FORMATS, CheckpointFormat

LORA_ENTRIES = ("generator_lora", "critic_lora")
MODEL_ENTRIES = ("generator", "generator_ema", "model")  # a file with one of these is a model, whatever LoRA it holds
TRAINING_ENTRIES = (*MODEL_ENTRIES, "critic", "generator_optimizer", "critic_optimizer")


@dataclass
class Selected:
    """The generator's tensors of one checkpoint file and where they came from."""

    tensors: dict[str, torch.Tensor]
    entry: str | None  # e.g. "generator_ema"; None for a bare state dict
    notes: list[str] = field(default_factory=list)
    config: dict | None = None  # an original Wan config.json found next to the weights


def _short(err: BaseException) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split()) or type(err).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < path.stat().st_size and head[8:9] == b"{"


def read_file(path: str | Path, what: str = "checkpoint") -> Any:
    """The object stored in a PyTorch or safetensors file; a one-paragraph :class:`ConversionError` otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"the {what} {path} does not exist")
    if path.is_dir():
        raise ConversionError(f"the {what} {path} is a folder, expected a file")
    if path.stat().st_size == 0:
        raise ConversionError(f"the {what} {path} is empty (0 bytes): the download or copy did not finish")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ConversionError(
                f"the {what} {path} looks like a safetensors file but cannot be read ({_short(err)}); it is probably "
                f"truncated or corrupted: download it again"
            ) from None
    with open(path, "rb") as f:
        magic = f.read(4)
    size = path.stat().st_size
    if magic == b"PK\x03\x04":  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            raise ConversionError(
                f"the {what} {path} is truncated: it starts as a PyTorch zip checkpoint but its end is missing "
                f"({size:,} bytes on disk); download or copy it again"
            )
        _check_zip(path, what)
        mmap = True  # a multi-GB checkpoint is not copied into RAM
    elif magic[:1] == b"\x80":  # a pickle: torch.save's legacy format
        mmap = False
    else:
        raise ConversionError(
            f"the {what} {path} is neither a PyTorch nor a safetensors checkpoint (it starts with the bytes "
            f"{magic!r}); if it should be one, it is corrupted: download it again"
        )
    try:
        return torch_load(path, mmap=mmap)
    except UnsafeFileError as err:
        raise ConversionError(f"{what}: {err}") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, zip errors, ...
        reason = _short(err)
        raise ConversionError(
            f"the {what} {path} cannot be read as a PyTorch checkpoint ({reason}); it is truncated or corrupted: "
            f"download or copy it again"
        ) from None


def _check_zip(path: Path, what: str) -> None:
    """Verify every record's CRC: torch.load (memory-mapped) does not, so flipped bytes in a tensor would pass."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # BadZipFile, zlib errors, undecodable names, ...
        raise ConversionError(
            f"the {what} {path} is a corrupted PyTorch zip checkpoint ({_short(err)}): download or copy it again"
        ) from None
    if bad is not None:
        raise ConversionError(
            f"the {what} {path} is corrupted: its record {bad} fails its CRC check; download or copy it again"
        )


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def is_lora_dict(obj: Any) -> bool:
    return _tensor_dict(obj) and any(".lora_" in k or k.endswith(("lora_A.weight", "lora_B.weight")) for k in obj)


def _read_wan_folder(path: Path) -> Selected:
    shards = sorted(path.glob("diffusion_pytorch_model*.safetensors"))
    if not shards:
        raise ConversionError(
            f"the folder {path} holds no diffusion_pytorch_model*.safetensors (the original Wan release layout); "
            f"pass the weights file itself"
        )
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = read_file(shard)
        if not _tensor_dict(part):
            raise ConversionError(f"{shard} does not hold a plain state dict of tensors")
        tensors.update(part)
    config = None
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as err:
            raise ConversionError(f"{path / 'config.json'} is not valid JSON ({_short(err)})") from None
    return Selected(tensors, None, [f"read {len(shards)} weight file(s) from {path}"], config)


def select_weights(fmt: CheckpointFormat, path: str | Path, weights: str | None = None) -> Selected:
    """Read ``path`` and return the generator's tensors for checkpoint format ``fmt``."""
    path = Path(path)
    name = fmt.title
    bare = not fmt.weight_entries
    if bare and weights is not None:
        raise ConversionError(
            f"--weights picks an entry of a training checkpoint; --format {fmt.name} reads a bare state dict"
        )
    if bare and path.is_dir():
        return _read_wan_folder(path)
    obj = read_file(path)
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(
            f"{path} holds a {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}, not a model "
            f"checkpoint dict: it is not a {name} checkpoint"
        )
    lora_only = [k for k in LORA_ENTRIES if k in obj] and not any(k in obj for k in MODEL_ENTRIES)
    if lora_only or is_lora_dict(obj):
        pairs = [f for f in FORMATS.values() if f.released_lora]
        loras = either([f"{f.title}'s {f.released_lora[1]}" for f in pairs])
        raise ConversionError(
            f"{path} is a LoRA checkpoint (it holds only LoRA weights, like {loras}), not a full model: pass the base "
            f"model ({' / '.join(f.released_lora[0] for f in pairs)}) as --ckpt and this file as --lora, with "
            f"{either([f'--format {f.name}' for f in pairs])}"
        )

    if bare:
        if _tensor_dict(obj):
            return Selected(dict(obj), None)
        found = [k for k in TRAINING_ENTRIES if k in obj]
        trained = [f.name for f in FORMATS.values() if f.weight_entries]
        hint = (
            f"it is a training checkpoint with {', '.join(found)}: use --format {either(trained)}"
            if found else f"its entries are {listing(map(str, obj))}"
        )
        raise ConversionError(f"{path} is not a bare {name} state dict (--format {fmt.name}): {hint}")

    candidates = fmt.weight_entries
    if weights is not None:
        if weights not in obj:
            raise ConversionError(
                f"{path} has no {weights!r} entry (--weights); it holds {listing(map(str, obj))}"
            )
        entry = weights
    else:
        entry = next((k for k in candidates if k in obj), None)
    if entry is None:
        if _tensor_dict(obj):
            raise ConversionError(
                f"{path} is a bare state dict, but a {name} checkpoint is a dict with "
                f"{' or '.join(repr(k) for k in candidates)}; if these are plain Wan transformer weights, use "
                f"--format wan"
            )
        raise ConversionError(
            f"{path} is not a {name} checkpoint: expected a {' or '.join(repr(k) for k in candidates)} entry, found "
            f"{listing(map(str, obj))}"
        )
    tensors = obj[entry]
    if not _tensor_dict(tensors):
        raise ConversionError(f"the {entry!r} entry of {path} is not a state dict of tensors")
    notes = []
    others = [k for k in candidates if k in obj and k != entry]
    if weights is not None:
        notes.append(f"used {entry!r} (--weights)")
    elif others:
        notes.append(f"used {entry!r} (the {name} inference default); the file also holds {', '.join(others)}")
    elif entry != candidates[0]:
        notes.append(f"used {entry!r}: the file has no {candidates[0]!r} entry")
    return Selected(dict(tensors), entry, notes)
