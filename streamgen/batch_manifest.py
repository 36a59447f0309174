"""The manifest of a batch run: what each video of an output folder was generated from, so a stopped run of a
1,000-prompt file continues where it stopped.

``OUT_DIR/manifest.jsonl`` gets one JSON line per finished video: its file name, the prompt file and line, the
prompts, the seed, the schedule, the cache preset, the frame count, the checkpoint's hash and the frames written.
Lines are only appended (processes of one run share the file; each line goes out in one ``write`` on an
``O_APPEND`` descriptor, so lines never interleave), and the last line of a video wins.

A video counts as complete when its last line asks for exactly what the run asks for now and the file on disk is
a whole mp4 holding the frames that line says were written; anything else (no line, other settings, a file cut
short, a ``.partial`` left by a killed run) is generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .video_io import mp4_complete_prefix

MANIFEST = "manifest.jsonl"
FRAMES_WRITTEN = "frames_written"  # what the run wrote, as opposed to what it asked for
HASHED_COMPONENT = "transformer"  # a pipeline folder's part that the video depends on beyond the text encoder / VAE
READ_BYTES = 1 << 20


def checkpoint_hash(folder: str | os.PathLike) -> str:
    """``sha256:<hex>`` over the pipeline's model_index.json and every file of its transformer (names and
    contents, in name order): two folders with the same weights and config hash alike wherever they lie."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = [folder / "model_index.json"] + sorted(p for p in (folder / HASHED_COMPONENT).rglob("*") if p.is_file())
    for path in files:
        if not path.is_file():
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(READ_BYTES):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class Manifest:
    """The manifest of the videos in ``out_dir`` (read once, when made)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / MANIFEST
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["video"]] = entry
                except (ValueError, KeyError, TypeError):
                    # A line cut short by a killed run: its video has no whole line, so it is generated again.
                    continue

    def complete(self, video: Path, wanted: dict) -> bool:
        """Whether ``video`` is already what ``wanted`` (a manifest line without ``frames_written``) asks for."""
        entry = self.entries.get(video.name)
        asked = json.loads(json.dumps(wanted))  # as the manifest holds it (tuples become lists)
        if entry is None or {k: v for k, v in entry.items() if k != FRAMES_WRITTEN} != asked:
            return False
        if not video.is_file():
            return False
        with open(video, "rb") as f:
            end, frames = mp4_complete_prefix(f)
        return end == video.stat().st_size and frames == entry.get(FRAMES_WRITTEN)

    def record(self, wanted: dict, frames_written: int) -> None:
        """Append ``video``'s line: what it was asked for and the frames it holds."""
        entry = {**wanted, FRAMES_WRITTEN: frames_written}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
        self.entries[entry["video"]] = entry
