"""Crash-safe incremental MP4 writing, and reading videos back.

Generated videos arrive a chunk at a time, possibly for minutes, and the generating process may die at any moment
(OOM killer, ``kill -9``, a node pre-empted, Ctrl-C). :class:`Mp4StreamWriter` makes sure that what was written so
far is a playable MP4 on disk no matter how the Python process ends.

How (and why it works):

* Frames go as raw RGB over a pipe to an ``ffmpeg`` subprocess (the binary shipped with ``imageio-ffmpeg``) that
  encodes H.264 and muxes MP4. ``write()`` returns only once all bytes are in the pipe (``write`` + ``flush``); from
  then on they belong to ffmpeg, not to us.
* ffmpeg runs in its own session / process group, so Ctrl-C in the terminal (SIGINT to the foreground process group)
  or the terminal's SIGHUP does not reach it. When our process dies, however it dies, the kernel closes our end of
  the pipe, ffmpeg reads the remaining bytes, sees EOF and finishes the file exactly as on a normal ``close()``:
  every frame whose ``write()`` returned ends up in a complete, indexed file.
* Defence in depth for the case where ffmpeg dies too (e.g. the OOM killer picks it, or something SIGKILLs every
  process of the job, sessions notwithstanding): the output is *fragmented* MP4 (``empty_moov`` + one
  ``moof``/``mdat`` fragment per frame, ``frag_every_frame``), flushed to the file after every packet
  (``-flush_packets 1``), with an encoder that emits each frame as soon as it gets it (x264 ``-tune zerolatency``:
  no lookahead, no B-frames). A file cut off at any point still plays up to its last complete fragment. In that
  case the frames still inside ffmpeg are lost: the pipe's contents and, because the muxer closes a fragment only
  when the next frame arrives, the newest frame.
"""

from __future__ import annotations

import io
import numbers
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["FfmpegError", "Mp4StreamWriter", "check_free_space", "check_output_path", "concat_mp4", "copy_mp4_frames", "mp4_complete_prefix", "partial_path", "read_video"]


class FfmpegError(RuntimeError):
    """ffmpeg failed while writing; ``reason`` is the last line of its log (e.g. "Error closing file: No space left
    on device"), the message holds the whole log."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _ffmpeg_exe() -> str:
    # imageio-ffmpeg ships a static ffmpeg (and honours IMAGEIO_FFMPEG_EXE to use another one).
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class Mp4StreamWriter:
    """Append frames to an H.264 MP4 file chunk by chunk; the file stays playable if the process is killed.

    Usage::

        with Mp4StreamWriter("out.mp4", fps=16) as writer:
            for chunk in chunks:            # np.uint8 [F, H, W, 3], RGB
                writer.write(chunk)

    See the module docstring for the crash-safety design. ffmpeg is started by the first :meth:`write` (that is
    when the frame size becomes known), so nothing is created or overwritten at ``path`` before that; an existing
    file is overwritten then. :meth:`close` (or leaving the ``with`` block, also on an exception) finishes the file.

    Frame size: ``yuv420p`` (the default; the chroma format every H.264 player, browsers included, decodes) needs
    even width and height, so frames with an odd width or height are padded by one column / row
    replicated from the edge (not black, to avoid a dark seam bleeding into the subsampled chroma); the video read
    back is then one pixel larger. ``pix_fmt="yuv444p"`` keeps odd sizes exactly and full colour resolution, but
    H.264 4:4:4 is not supported by browsers, QuickTime or most hardware decoders.

    Colour: RGB is converted with the BT.709 matrix to limited ("tv") range, and the stream is tagged as BT.709,
    so players and readers (ffmpeg, decord, browsers) convert back with the same matrix.

    Args:
        path: output file; parent directories are created.
        fps: frames per second (int, float or ``Fraction``).
        crf: x264 constant rate factor, 0 .. 51; 18 is visually near-lossless, lower = larger file. 0 is lossless
            (in YUV) but switches H.264 to the "High 4:4:4 Predictive" profile, which browsers do not play.
        preset: x264 speed/size trade-off; ``"veryfast"`` keeps the encoder from competing with generation for CPU.
        pix_fmt: ``"yuv420p"`` (default, maximally compatible) or ``"yuv444p"`` (see above).
        ffmpeg_exe: ffmpeg binary to use; default: the one from ``imageio-ffmpeg``.

    Attributes:
        frames_written: frames accepted by :meth:`write` so far.
        frame_size: ``(H, W)`` of the frames given to the first :meth:`write` (before any padding), else ``None``.
        pid: ffmpeg's process id once started, else ``None``.

    Not fork-safe: a child created by ``os.fork`` / ``multiprocessing`` "fork" while the writer is open inherits the
    pipe, and ffmpeg then sees EOF only when that child exits too.
    """

    PIX_FMTS = ("yuv420p", "yuv444p")

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | Fraction,
        *,
        crf: int = 18,
        preset: str = "veryfast",
        pix_fmt: str = "yuv420p",
        ffmpeg_exe: str | None = None,
    ) -> None:
        if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and fps > 0):
            raise ValueError(f"Mp4StreamWriter: fps must be a positive number, got {fps!r}")
        if isinstance(crf, bool) or not (isinstance(crf, numbers.Integral) and 0 <= crf <= 51):
            raise ValueError(f"Mp4StreamWriter: crf must be an int in [0, 51], got {crf!r}")
        if pix_fmt not in self.PIX_FMTS:
            raise ValueError(f"Mp4StreamWriter: pix_fmt must be one of {self.PIX_FMTS}, got {pix_fmt!r}")
        self.path = os.fspath(path)
        self.fps = fps
        self.crf = int(crf)
        self.preset = preset
        self.pix_fmt = pix_fmt
        self.ffmpeg_exe = ffmpeg_exe
        self.frames_written = 0
        self.frame_size: tuple[int, int] | None = None
        self._pad = (0, 0)  # rows, columns appended to make the size legal for pix_fmt
        self._proc: subprocess.Popen | None = None
        self._log = None  # ffmpeg's stderr, for error messages
        self._closed = False
        self._lock = threading.Lock()  # write()/close() from different threads must not interleave frame bytes

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # ----------------------------------------------------------------------------------------------------------

    def _ffmpeg_args(self, height: int, width: int) -> list[str]:
        """The ffmpeg command line; ``height`` / ``width`` are the (padded) sizes of the frames we send."""
        return [
            self.ffmpeg_exe or _ffmpeg_exe(),
            "-hide_banner", "-nostats", "-loglevel", "error",
            "-y",  # overwrite: the caller chose this path
            # input: raw RGB frames on stdin (ffmpeg disables its interactive keyboard commands for pipe: input)
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(self.fps),
            "-i", "pipe:0",
            "-an",
            # RGB -> YUV with an explicit matrix and range (not left to version-dependent defaults); setparams tags
            # the frames (hence the stream) to match, which the -colorspace/-color_* output options do not
            # reliably do once a filter graph is involved.
            "-vf", (
                "scale=out_color_matrix=bt709:out_range=tv,"
                "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv,"
                f"format={self.pix_fmt}"
            ),
            # zerolatency: no lookahead / B-frames / frame threads, so each frame is encoded as soon as it arrives
            "-c:v", "libx264", "-preset", self.preset, "-tune", "zerolatency", "-crf", str(self.crf),
            # fragmented MP4: header first (empty_moov), one moof+mdat per frame, self-contained offsets
            "-movflags", "empty_moov+default_base_moof+frag_every_frame",
            # push every muxed packet to the file immediately instead of filling a 32 KiB I/O buffer
            "-flush_packets", "1",
            "-f", "mp4", self.path,
        ]  # fmt: skip

    def _start(self, height: int, width: int) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # stderr goes to an unlinked temp file, not a pipe: if we die, ffmpeg must be able to keep logging (a pipe
        # without reader would hand it EPIPE/SIGPIPE in the middle of finishing the file), and a pipe nobody reads
        # could fill up and block it.
        self._log = tempfile.TemporaryFile()
        if os.name == "nt":  # pragma: no cover - no sessions on Windows; a new process group keeps Ctrl-C away
            isolation = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        else:
            isolation = {"start_new_session": True}
        self._proc = subprocess.Popen(
            self._ffmpeg_args(height, width),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            close_fds=True,  # (the default) no other pipes of ours leak into ffmpeg
            **isolation,
        )

    def _ffmpeg_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def _failed(self, what: str) -> FfmpegError:
        code = self._proc.poll() if self._proc is not None else None
        log = self._ffmpeg_log()
        lines = [re.sub(r"^(\[[^]]*\] *)+", "", line).strip() for line in log.splitlines()]
        reason = next((line for line in reversed(lines) if line and not line.startswith("Last message")), what)
        return FfmpegError(f"Mp4StreamWriter({self.path!r}): {what} (ffmpeg exit code {code}):\n{log}", reason)

    def _check_frames(self, frames) -> np.ndarray:
        name = "Mp4StreamWriter.write"
        if not isinstance(frames, np.ndarray):
            raise ValueError(
                f"{name}: frames must be a numpy.ndarray of shape [F, H, W, 3], got {type(frames).__name__}"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"{name}: frames must have dtype uint8 (0..255), got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: frames must have shape [F, H, W, 3] (RGB), got {frames.shape}")
        height, width = frames.shape[1:3]
        if height < 1 or width < 1:
            raise ValueError(f"{name}: frames must be at least 1x1 pixels, got {frames.shape}")
        if self.frame_size is not None and (height, width) != self.frame_size:
            raise ValueError(
                f"{name}: frame size changed from HxW={self.frame_size[0]}x{self.frame_size[1]} "
                f"to {height}x{width}; all frames of a video must have the same size"
            )
        return frames

    # ----------------------------------------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` (``np.uint8``, ``[F, H, W, 3]`` RGB) to the video.

        Returns once ffmpeg holds all the bytes (in the pipe or already read): from then on the frames end up in the
        file even if this process is killed. Blocks while ffmpeg is behind (the pipe is full), which throttles a
        producer that is faster than the encoder instead of buffering unboundedly.

        Raises ``ValueError`` for a wrong type, dtype or shape, or a frame size different from the first write's;
        ``RuntimeError`` (with ffmpeg's log) if ffmpeg failed.
        """
        frames = self._check_frames(frames)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"Mp4StreamWriter({self.path!r}): write() after close()")
            if frames.shape[0] == 0:
                return
            if self._proc is None:
                height, width = frames.shape[1:3]
                self.frame_size = (height, width)
                if self.pix_fmt == "yuv420p":
                    self._pad = (height % 2, width % 2)
                self._start(height + self._pad[0], width + self._pad[1])
            if any(self._pad):
                frames = np.pad(frames, ((0, 0), (0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
            try:
                # BufferedWriter.write loops over partial pipe writes; flush() returns when the kernel has it all.
                self._proc.stdin.write(np.ascontiguousarray(frames).data)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise self._failed(f"ffmpeg stopped accepting frames ({exc})") from exc
            if self._proc.poll() is not None:  # died right after reading (e.g. disk full): say so now, not at close
                raise self._failed("ffmpeg exited while writing")
            self.frames_written += frames.shape[0]

    def close(self, timeout: float | None = None) -> None:
        """Finish the file: send EOF to ffmpeg and wait (at most ``timeout`` s) for it to exit.

        Idempotent. Raises ``RuntimeError`` with ffmpeg's log if it failed, ``subprocess.TimeoutExpired`` if it did
        not finish in time (ffmpeg is left running then, so it may still complete the file).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc is None:  # nothing was ever written
                return
            try:
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass  # ffmpeg already gone; its exit code below tells what happened
            code = self._proc.wait(timeout=timeout)
            try:
                if code != 0:
                    raise self._failed("ffmpeg failed")
            finally:
                self._log.close()

    def __enter__(self) -> Mp4StreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Also on an exception in the body: finishing the file with the frames written so far is the point.
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except RuntimeError:
            pass  # the body's exception (often this very ffmpeg failure, raised by write()) is the one to propagate

    def __del__(self) -> None:
        # Forgotten close(): give ffmpeg its EOF so it finishes the file, but do not block in a finalizer.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except Exception:
                pass


def mp4_complete_prefix(data: bytes | BinaryIO, max_fragments: int | None = None) -> tuple[int, int]:
    """``(length, fragments)``: the longest prefix of a fragmented mp4 (bytes, or a binary file read by its box
    headers only) made of whole top-level boxes that ends after a whole ``moof`` + ``mdat`` fragment (or right after
    ``moov`` if no fragment is complete yet), and how many fragments it holds, at most ``max_fragments``. ``(0, 0)``
    if there is no whole ``moov``.

    :class:`Mp4StreamWriter` writes fragmented mp4 (one fragment per frame) that plays up to its last complete
    fragment; a copy taken while ffmpeg is writing, or a file cut off by a full disk, may end inside a box.
    """
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    total = f.seek(0, io.SEEK_END)
    offset, good, fragments, good_fragments = 0, 0, 0, 0
    seen_moov = in_fragment = False
    while offset + 8 <= total:
        f.seek(offset)
        head = f.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:
            if offset + 16 > total:
                break
            size = struct.unpack(">Q", head[8:16])[0]
            header = 16
        if size == 0 or size < header or offset + size > total:
            break  # open-ended or cut short
        offset += size
        if kind == b"moov":
            seen_moov = True
        elif kind == b"moof":
            in_fragment = True
            continue
        elif kind == b"mdat" and in_fragment:
            in_fragment = False
            fragments += 1
        if seen_moov and not in_fragment:
            good, good_fragments = offset, fragments
            if max_fragments is not None and fragments >= max_fragments:
                break
    return good, good_fragments


def copy_mp4_frames(source: str | os.PathLike, target: str | os.PathLike, frames: int) -> None:
    """Copy the first ``frames`` frames of a fragmented mp4 written by :class:`Mp4StreamWriter` (one fragment per
    frame) to ``target``, byte for byte: nothing is re-encoded. ValueError if ``source`` holds fewer whole frames."""
    with open(source, "rb") as f:
        end, held = mp4_complete_prefix(f, max_fragments=frames)
        if held < frames:
            raise ValueError(f"{source} holds {held} whole frames, {frames} are needed")
        f.seek(0)
        with open(target, "wb") as out:
            remaining = end
            while remaining:
                block = f.read(min(remaining, 1 << 20))
                out.write(block)
                remaining -= len(block)


def concat_mp4(parts: list[Path], target: str | os.PathLike, ffmpeg_exe: str | None = None) -> None:
    """Join mp4 files written with the same encoder settings into ``target`` without re-encoding (ffmpeg's concat
    demuxer, stream copy), as fragmented mp4 again, one fragment per frame."""
    listing = Path(target).with_name(Path(target).name + ".parts.txt")
    listing.write_text("".join(f"file '{Path(p).resolve().as_posix()}'\n" for p in parts))
    try:
        result = subprocess.run(
            [ffmpeg_exe or _ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y", "-f", "concat",
             "-safe", "0", "-i", str(listing), "-c", "copy",
             "-movflags", "empty_moov+default_base_moof+frag_every_frame", "-f", "mp4", str(target)],
            capture_output=True, text=True,
        )
    finally:
        listing.unlink(missing_ok=True)
    if result.returncode != 0:
        raise FfmpegError(f"joining {len(parts)} videos into {target} failed: {result.stderr.strip()[-300:]}",
                          result.stderr.strip()[-300:] or f"exit {result.returncode}")


# ---- an output that never destroys an earlier video -----------------------------------------------------------------


def partial_path(path: str | os.PathLike) -> Path:
    """Where a video bound for ``path`` is written until its run ends: ``out.mp4.partial`` beside it (the same
    folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def check_output_path(path: str | os.PathLike) -> Path:
    """Make sure a video can be written at ``path`` before any work starts (its folder is created, and a probe
    file written there and removed); returns its :func:`partial_path`. ValueError, one line, if ``path`` is a folder
    or not a regular file (``/dev/full``), or its folder cannot be made or written (a file in the way, a read-only
    file system, permissions)."""
    path = Path(path)
    partial = partial_path(path)
    for target in (path, partial):
        if target.is_dir():
            raise ValueError(f"--out {path}: {target} is a folder; give a file name such as {target / 'out.mp4'}")
        if target.exists() and not stat.S_ISREG(target.stat().st_mode):
            raise ValueError(f"--out {path}: {target} exists and is not a regular file (a device, pipe or socket)")
    blocker = next((a for a in partial.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"--out {path}: {blocker} is a file, not a folder")
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".streamgen-probe-", dir=partial.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        where = err.filename or partial.parent
        raise ValueError(f"--out {path}: cannot write there ({err.strerror or err}: {where})") from None
    return partial


def check_free_space(path: str | os.PathLike, estimated_bytes: int) -> None:
    """ValueError, one line, if the file system of ``path`` (checked by :func:`check_output_path`) has less than
    ``estimated_bytes`` free."""
    folder = partial_path(path).parent
    free = shutil.disk_usage(folder).free
    if free < estimated_bytes:
        raise ValueError(f"--out {path}: {free:,} bytes free in {folder}, the video needs about {estimated_bytes:,}")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read all frames of a video file as ``np.uint8`` ``[F, H, W, 3]`` RGB.

    Uses decord; falls back to imageio-ffmpeg (which pipes through the ffmpeg binary) if decord cannot open or
    decode the file, e.g. a file cut short by a crash.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        import decord

        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        if frames.ndim == 4 and frames.shape[0] > 0:
            return frames
    except Exception:  # decord raises its own DECORDError (and others) for files it cannot handle
        pass
    return _read_video_imageio(path)


def _read_video_imageio(path: str) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    if not frames:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(frames)
