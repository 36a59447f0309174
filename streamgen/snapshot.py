"""Snapshots of a live stream: written between chunks, resumed bit for bit, on this pipeline only.

A snapshot is one safetensors file. Its tensors are the stream's tensors (KV cache, latent history, every cache
mechanism's buffers, prompt K/V, RNG state, decoder state); its metadata holds one JSON manifest: the format
version, the pipeline's identity (a fingerprint of its weights), the cache preset, how the stream was built, how far
it has played, a CRC per tensor, and the state tree of :mod:`streamgen.stream_state` that says where every tensor
and value goes. Resuming builds the same stream afresh and puts the state back, so generating on from a snapshot
gives exactly the chunks the uninterrupted stream would have given.

The file is written to a temporary name beside the target and renamed over it, so a snapshot on disk is always a
whole one. Reading never unpickles: safetensors for tensors, JSON for the rest, and objects only of streamgen's own
classes (:mod:`streamgen.stream_state`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

import torch

from .stream_state import StateError, capture, restore

FORMAT = "streamgen-snapshot"
VERSION = 1
METADATA_KEY = "streamgen_snapshot"
# A tensor up to this many elements is fingerprinted whole; a larger one by this many evenly strided elements (a
# multi-GB checkpoint is told apart in well under a second, and a changed tensor is all but always caught).
FINGERPRINT_ELEMENTS = 2**20


class SnapshotError(ValueError):
    """A snapshot that cannot be written, read, or resumed on this pipeline; the message is one line."""


# ---- identity ----------------------------------------------------------------------------------------------------
def weights_fingerprint(pipe) -> str:
    """A SHA-256 over the name, shape, dtype and values of every weight and buffer of the pipeline's models
    (tensors above :data:`FINGERPRINT_ELEMENTS` elements by a strided sample). Cached until a weight changes."""
    modules = [(name, module) for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)]
    tensors = [(f"{name}.{key}", t) for name, module in modules for key, t in module.state_dict(keep_vars=True).items()]
    version = tuple((key, t.data_ptr(), t._version) for key, t in tensors)
    cached = getattr(pipe, "_weights_fingerprint", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha256()
    for key, t in tensors:
        t = t.detach()
        digest.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.reshape(-1)
        if flat.numel() > FINGERPRINT_ELEMENTS:
            flat = flat[:: flat.numel() // FINGERPRINT_ELEMENTS][:FINGERPRINT_ELEMENTS]
        digest.update(flat.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    pipe._weights_fingerprint = (version, digest.hexdigest())
    return pipe._weights_fingerprint[1]


def _pipeline_name(pipe) -> str:
    return str(pipe.config.get("_name_or_path") or type(pipe).__name__)


def _preset_settings(preset) -> str:
    """The preset as canonical JSON (what two presets must share for a snapshot of one to resume as the other)."""
    return json.dumps(dataclasses.asdict(preset), sort_keys=True, default=str)


def _crc(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (any dtype and shape, 0-d included), without copying them."""
    return zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy()) if t.numel() else 0


def _build(stream) -> dict:
    """How the stream's engine was built: what :meth:`StreamingVideoPipeline.resume` rebuilds before it puts the
    state back."""
    engine = stream.engine
    return {"batch_size": engine.cache.k.shape[1], "latent_height": engine.latent_hw[0],
            "latent_width": engine.latent_hw[1], "stream_frames": engine.stream_frames,
            "num_inference_steps": getattr(engine.sampler, "num_inference_steps", None)}


# ---- writing -----------------------------------------------------------------------------------------------------
def save(stream, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``stream``'s state to ``path`` (atomically: the file is the old or the new snapshot, never half);
    ``extra`` (JSON-able) goes into the manifest as it is, for the caller's own bookkeeping."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        tree, tensors = capture(stream)
    except StateError as err:
        raise SnapshotError(f"cannot snapshot this stream: {err}") from None
    engine = stream.engine
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "pipeline": {"name": _pipeline_name(stream.pipe), "weights": weights_fingerprint(stream.pipe)},
        "preset": {"name": engine.preset.name, "switch": engine.preset.switch,
                   "settings": _preset_settings(engine.preset)},
        "build": _build(stream),
        "camera": None if engine.camera is None else engine.camera.track_settings,
        "latent_frame": engine.frame,
        "chunks": stream.chunks,
        "crc32": {name: _crc(t) for name, t in tensors.items()},
        "state": tree,
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # as an ordinary file would be (mkstemp makes it private)
    try:
        save_file(tensors, temporary, metadata={METADATA_KEY: json.dumps(manifest, separators=(",", ":"))})
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def state_bytes(stream) -> int:
    """Bytes of tensors a snapshot of ``stream`` holds now (its tensors are counted, not copied)."""
    _, tensors = capture(stream, copy=False)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def stream_snapshot_bytes(pipe, preset, num_latent_frames: int | None, height: int, width: int) -> int:
    """Bytes of tensors a snapshot of such a stream holds once it plays (its prompt encoded, a chunk decoded), the
    same at every later chunk. Counted on a stream built for the purpose: on a pipeline on the meta device
    (:func:`streamgen.tiny.random_pipeline_from_configs`) nothing is allocated."""
    length = pipe.num_video_frames(num_latent_frames) if preset.needs_stream_length else None
    stream = pipe.stream("a prompt", cache=preset, num_frames=length,
                         height=height, width=width, generator=torch.Generator())  # a CPU RNG's state: 5,056 bytes
    stream._apply_prompt_changes(0)
    chunk = torch.zeros(*stream.engine.history.latents.shape[:2], pipe.config.chunk_frames,
                        *stream.engine.latent_hw, device=pipe.transformer.device)
    stream.decoder.decode(chunk)
    return state_bytes(stream)


# ---- reading -----------------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the snapshot at ``path``, checked for format and version (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"snapshot {path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for truncated / corrupted files
        raise SnapshotError(f"snapshot {path} is truncated or corrupted ({_one_line(err)})") from None
    if METADATA_KEY not in metadata:
        raise SnapshotError(f"snapshot {path} is a safetensors file but not a streamgen snapshot")
    try:
        manifest = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as err:
        raise SnapshotError(f"snapshot {path}: its manifest is not valid JSON ({_one_line(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"snapshot {path} is not a streamgen snapshot")
    if manifest.get("version") != VERSION:
        raise SnapshotError(f"snapshot {path} has format version {manifest.get('version')!r}; this streamgen reads "
                            f"version {VERSION}")
    for key in ("pipeline", "preset", "build", "crc32", "state", "latent_frame", "chunks"):
        if key not in manifest:
            raise SnapshotError(f"snapshot {path}: its manifest lacks {key!r}")
    return manifest


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _load_tensors(path: Path, manifest: dict, pipe) -> dict[str, torch.Tensor]:
    """The snapshot's tensors, after checking that they fit in memory and that each matches its CRC."""
    from safetensors import safe_open

    from .device_memory import available_memory

    expected = manifest["crc32"]
    try:
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                raise SnapshotError(f"snapshot {path}: tensors {missing[:3] or extra[:3]} "
                                    f"{'are missing' if missing else 'are not in its manifest'}")
            sizes = {}
            for name in names:
                info = f.get_slice(name)
                shape, dtype = info.get_shape(), info.get_dtype()
                sizes[name] = _numel(shape) * _itemsize(dtype)
            free = available_memory(torch.device("cpu"))
            if free is not None and sum(sizes.values()) > free:
                raise SnapshotError(f"snapshot {path} holds {sum(sizes.values()):,} bytes of tensors, more than the "
                                    f"{free:,} bytes of memory available")
            tensors = {name: f.get_tensor(name) for name in sorted(names)}
    except SnapshotError:
        raise
    except Exception as err:
        raise SnapshotError(f"snapshot {path} is truncated or corrupted ({_one_line(err)})") from None
    for name, t in tensors.items():
        if _crc(t) != expected[name]:
            raise SnapshotError(f"snapshot {path}: tensor {name!r} is corrupted (its checksum does not match)")
    return tensors


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _itemsize(dtype: str) -> int:
    bits = "".join(c for c in dtype if c.isdigit())
    return max(int(bits) // 8, 1) if bits else 1


def check_compatible(path: Path, manifest: dict, pipe, preset) -> None:
    """SnapshotError naming both sides if the snapshot was taken on another pipeline or with another preset."""
    theirs, ours = manifest["pipeline"], {"name": _pipeline_name(pipe), "weights": weights_fingerprint(pipe)}
    if not isinstance(theirs, dict) or theirs.get("weights") != ours["weights"]:
        their_name = theirs.get("name") if isinstance(theirs, dict) else "?"
        raise SnapshotError(
            f"snapshot {path} was taken on pipeline {their_name!r} (weights {str(theirs.get('weights'))[:12]}), "
            f"not on this one, {ours['name']!r} (weights {ours['weights'][:12]})"
        )
    recorded = manifest["preset"]
    if preset.name != recorded.get("name") or _preset_settings(preset) != recorded.get("settings"):
        same_name = preset.name == recorded.get("name")
        raise SnapshotError(
            f"snapshot {path} was taken with cache preset {recorded.get('name')!r}"
            + (", whose settings differ from this one's" if same_name else f", not {preset.name!r}")
        )


def check_camera(path: Path, manifest: dict, camera) -> None:
    """SnapshotError unless ``camera`` (a CameraTrack or None) is the track the snapshot's stream had."""
    recorded = manifest.get("camera")
    if recorded is None and camera is not None:
        raise SnapshotError(f"snapshot {path} is of a stream without a camera: resume it without camera=")
    if recorded is not None and camera is None:
        raise SnapshotError(f"snapshot {path} is of a camera stream: pass camera= with the CameraTrack it started "
                            "with (its depth_fn or depth_estimator is not saved)")
    if recorded is not None:
        ours = camera.settings()
        differing = [key for key in sorted(set(recorded) | set(ours)) if recorded.get(key) != ours.get(key)]
        if differing:
            raise SnapshotError(f"snapshot {path} was taken with another camera track: its {', '.join(differing)} "
                                "differ from this one's")


def load_into(path: Path, manifest: dict, stream) -> None:
    """Put the snapshot's state into ``stream``, freshly built from the manifest's ``build``."""
    tensors = _load_tensors(path, manifest, stream.pipe)
    try:
        restore(manifest["state"], tensors, stream, device=stream.engine.transformer.device)
    except (StateError, KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise SnapshotError(f"snapshot {path} does not fit this stream: {_one_line(err)}") from None


__all__ = ["SnapshotError", "check_camera", "check_compatible", "load_into", "read_manifest", "save",
           "weights_fingerprint"]
