"""``streamgen generate --snapshot DIR`` / ``--resume DIR``: a video run that survives a crash or a restart.

Every N chunks the run writes ``DIR/stream.safetensors``: the stream's snapshot (:mod:`streamgen.snapshot`) whose
manifest also records the run (pipeline, output, how many video frames the video holds at that chunk, and the
earlier part of the video if this run is itself a resume). One file, replaced atomically, so the snapshot and the
record never disagree.

Resuming keeps the frames up to the snapshot byte for byte: they are cut from the earlier playable file (the run's
``out.mp4.partial`` after a crash, or ``out.mp4``), at the fragment of the snapshot's last frame, into
``DIR/prefix-N.mp4`` (N frames). The resumed run writes its new frames to ``out.mp4.partial`` as any run does, and when
it ends the two are joined without re-encoding into ``out.mp4``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .snapshot import SnapshotError, read_manifest
from .video_io import concat_mp4, copy_mp4_frames, partial_path

SNAPSHOT_NAME = "stream.safetensors"
RUN_KEY = "generate"  # the manifest's ``extra`` entry that holds the run record


@dataclass
class RunRecord:
    pipeline: str  # the pipeline folder
    device: str
    dtype: str
    out: str  # the video's final path
    video_frames: int  # frames of the whole video up to the snapshot
    every: int  # chunks between snapshots
    prefix: str | None = None  # file in DIR holding the video's first prefix_frames frames (a resumed run's)
    prefix_frames: int = 0

    @classmethod
    def from_manifest(cls, manifest: dict, path: Path) -> "RunRecord":
        data = manifest.get("extra", {}).get(RUN_KEY)
        if not isinstance(data, dict):
            raise SnapshotError(f"snapshot {path} was not written by `streamgen generate --snapshot` (no run record); "
                                "resume it from Python with pipe.resume()")
        types = {"pipeline": str, "device": str, "dtype": str, "out": str, "video_frames": int,
                 "every": int, "prefix": (str, type(None)), "prefix_frames": int}
        for key, kind in types.items():
            if not isinstance(data.get(key), kind):
                raise SnapshotError(f"snapshot {path}: its run record's {key!r} is missing or malformed")
        if data["prefix"] is not None and Path(data["prefix"]).name != data["prefix"]:
            raise SnapshotError(f"snapshot {path}: its run record's prefix must be a file name, got {data['prefix']!r}")
        return cls(**{key: data[key] for key in types})


class Snapshotter:
    """Writes the run's snapshot every ``every`` chunks into ``directory``."""

    def __init__(self, directory: Path, record: RunRecord, notes: dict | None = None):
        """``notes``: more JSON-able entries for the manifest's ``extra`` (what a batch video was asked to be)."""
        if record.every < 1:
            raise ValueError(f"--snapshot-every must be at least 1 chunk, got {record.every}")
        self.directory = directory
        self.record = record
        self.notes = notes or {}
        directory.mkdir(parents=True, exist_ok=True)

    def after_chunk(self, stream, frames_written: int) -> None:
        """Call after each chunk is in the video writer; ``frames_written`` counts this run's frames."""
        if stream.chunks % self.record.every:
            return
        self.record.video_frames = self.record.prefix_frames + frames_written
        stream.snapshot(self.directory / SNAPSHOT_NAME, extra={**self.notes, RUN_KEY: asdict(self.record)})
        for old in self.directory.glob("prefix-*.mp4"):  # earlier runs' prefixes no snapshot names any more
            if old.name != self.record.prefix:
                old.unlink(missing_ok=True)


def open_resume(directory: Path, out: Path | None) -> tuple[Path, RunRecord, Path]:
    """(the snapshot, its run record, where the resumed run writes the video), refusing what cannot be resumed
    before anything loads."""
    snapshot = directory / SNAPSHOT_NAME
    if not directory.is_dir():
        raise SnapshotError(f"--resume {directory}: no such folder")
    record = RunRecord.from_manifest(read_manifest(snapshot), snapshot)
    return snapshot, record, Path(out) if out is not None else Path(record.out)


def keep_frames_before(directory: Path, record: RunRecord, out: Path, every: int | None) -> RunRecord:
    """Cut the video's frames up to the snapshot out of the earlier run's file(s) into ``DIR/prefix-N.mp4``; the
    record of the resumed run (snapshots every ``every`` chunks, None: as before), whose prefix that is."""
    earlier_out, earlier_partial = Path(record.out), partial_path(record.out)
    wanted = record.video_frames
    target = directory / f"prefix-{wanted}.mp4"
    scratch = directory / f".prefix-{wanted}.part.mp4"
    try:
        if earlier_partial.is_file():  # the run was cut short: its frames are in the prefix it had, then the partial
            if record.prefix is None:
                copy_mp4_frames(earlier_partial, scratch, wanted)
            elif wanted > record.prefix_frames:
                tail = directory / f".tail-{wanted}.mp4"
                copy_mp4_frames(earlier_partial, tail, wanted - record.prefix_frames)
                concat_mp4([directory / record.prefix, tail], scratch)
                tail.unlink()
            else:
                copy_mp4_frames(directory / record.prefix, scratch, wanted)
        elif earlier_out.is_file():
            copy_mp4_frames(earlier_out, scratch, wanted)
        else:
            raise SnapshotError(f"the video this snapshot continues is gone: neither {earlier_partial} nor "
                                f"{earlier_out} exists")
    except ValueError as err:
        scratch.unlink(missing_ok=True)
        raise SnapshotError(f"the video this snapshot continues is shorter than the snapshot: {err}") from None
    os.replace(scratch, target)
    return RunRecord(record.pipeline, record.device, record.dtype, str(out.resolve()), wanted, every or record.every,
                     target.name, wanted)


def finish_video(directory: Path, record: RunRecord, partial: Path, out: Path, frames_written: int) -> int:
    """Make ``out`` this run's video (atomically): the kept prefix, if the run was resumed, followed by this run's
    ``frames_written`` frames in ``partial``, joined without re-encoding. The frames ``out`` holds."""
    if record.prefix is None:
        if frames_written:
            os.replace(partial, out)
        return frames_written
    prefix = directory / record.prefix
    joined = out.with_name(out.name + ".joined")
    if frames_written:
        concat_mp4([prefix, partial], joined)
    else:
        shutil.copyfile(prefix, joined)
    os.replace(joined, out)
    partial.unlink(missing_ok=True)
    return record.prefix_frames + frames_written
