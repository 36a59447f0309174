"""One browser session of the demo, and the registry that owns them. No gradio in here.

A :class:`DemoSession` owns one live :class:`~streamgen.pipeline.VideoStream` (its cache, RNG and schedule), the
mp4 being written for it and a private temp folder. Generation is only ``pipe.stream()`` / ``next(stream)`` /
``stream.switch()``: the demo adds playback pacing, bookkeeping and files around them, nothing else.

Concurrency: gradio runs a session's handlers in worker threads, so a "Start", a "Stop" and a "Switch" may run while
a run is iterating. Each run holds a token; starting another run, starting a new stream, stopping or closing
replaces the token and the old run ends at its next frame. ``next(stream)`` and the mp4 write happen under a short
lock that is never held across a ``yield``, so an abandoned generator cannot wedge the session.

Playback overlaps generation: while the frames of chunk k are shown, chunk k+1 is generated in a helper thread (one
chunk of lookahead, so a switch lands one chunk later than without it). A run that stops keeps the chunk it has
generated but not shown yet, and the next run shows it first: no frame of the stream is skipped.
"""

from __future__ import annotations

import base64
import ctypes
import itertools
import shutil
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..prompts import check_prompt_length
from ..video_io import Mp4StreamWriter, mp4_complete_prefix

__all__ = ["DemoLimits", "DemoSession", "FrameUpdate", "SessionRegistry", "SessionsFull", "frame_data_uri",
           "mp4_complete_prefix"]


@dataclass(frozen=True)
class DemoLimits:
    """Per-session limits that keep one user from starving the others.

    ``max_frames_per_run``: a run (one press of Start or Resume) ends after this many frames and frees its worker
    for the next user in the queue; Resume continues the same stream (0 = no limit).
    ``max_stream_frames``: a stream ends after this many frames (bounds the mp4 on disk; it is also the length
    mp4 on disk).
    ``global_stream_frames``: the length of a ``global``-cache stream, whose cache holds every frame and is
    allocated for the whole stream up front (it cannot be open-ended).
    ``max_sessions``: live sessions (each holds a KV cache); idle ones are reaped first.
    ``idle_timeout_s``: a session without activity for this long is closed even if its tab never said goodbye.
    ``display_size``: frames are upscaled (nearest neighbour) to about this many pixels on their longer side.
    ``realtime``: pace playback at the pipeline's fps (generation is still as fast as it goes).
    ``max_session_file_bytes``: the largest session file (a stream snapshot) Restore accepts.
    """

    max_frames_per_run: int = 960
    max_stream_frames: int = 9600
    max_sessions: int = 8
    global_stream_frames: int = 480
    idle_timeout_s: float = 1800.0
    display_size: int = 384
    realtime: bool = True
    # A session file a browser uploads is refused above this size before it is read (a shapeworld-tiny session is
    # 3-16 MB; a Wan 1.3B one is several GB: raise it for such a server).
    max_session_file_bytes: int = 256 * 2**20


class SessionsFull(RuntimeError):
    """Raised when a new session would exceed :attr:`DemoLimits.max_sessions`."""


@dataclass
class FrameUpdate:
    """One frame to show. ``chunk_done`` is set on the first frame of a newly generated chunk."""

    frame: np.ndarray  # uint8 [H, W, 3]
    chunk_index: int
    frame_index: int  # frames of this stream shown so far, this one included
    chunk_done: bool


@dataclass
class StreamStats:
    prompt: str = ""
    preset: str = ""
    seed: int = 0
    frames_generated: int = 0
    frames_shown: int = 0
    chunks: int = 0
    generation_seconds: float = 0.0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=500))  # (chunk index, ms)
    shown_at: deque = field(default_factory=lambda: deque(maxlen=64))  # perf_counter of recent shown frames
    state: str = "idle"


def frame_data_uri(frame: np.ndarray, display_size: int = 384) -> str:
    """``frame`` uint8 [H, W, 3] RGB -> a ``data:`` URI, upscaled by an integer factor with nearest neighbour so
    that its longer side is about ``display_size`` (never downscaled). PNG for small frames (exact pixels), JPEG
    for large ones (cheap to encode at 480p)."""
    import cv2

    height, width = frame.shape[:2]
    scale = max(1, display_size // max(height, width))
    if scale > 1:
        frame = cv2.resize(frame, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
    bgr = np.ascontiguousarray(frame[..., ::-1])
    if max(height, width) <= 128:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        mime = "image/png"
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        mime = "image/jpeg"
    if not ok:
        raise RuntimeError("could not encode a frame")
    return f"data:{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class DemoSession:
    """The stream, mp4 and temp folder of one browser session."""

    def __init__(self, session_id: str, pipe, limits: DemoLimits):
        self.id = session_id
        self.pipe = pipe
        self.limits = limits
        self.dir = Path(tempfile.mkdtemp(prefix="streamgen-demo-"))
        self.stream = None
        self.writer: Mp4StreamWriter | None = None
        self.stats = StreamStats()
        self.last_active = time.monotonic()
        self.closed = False
        self._streams = itertools.count(1)
        self._stream_no = 0
        self._step = threading.Lock()  # next(stream) + writer.write; never held across a yield
        self._run_token: object | None = None
        self._snapshot: Path | None = None
        self._carry: tuple | None = None  # (stream, [(chunk index, frames, fresh)]) generated, not shown yet
        self.pending_switch: tuple[str, str] | None = None

    # ---- control (any thread) -----------------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def running(self) -> bool:
        return self._run_token is not None

    def start(self, prompt: str, preset: str, seed: int) -> None:
        """Replace this session's stream by a new one (the old stream's run ends at its next frame)."""
        import torch

        from ..cache.presets import available_presets, load_preset

        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("enter a prompt first")
        check_prompt_length(prompt, self.pipe.config.max_prompt_chars)  # a browser can send more than the box takes
        if preset not in available_presets():  # names only: a browser must not point us at files
            raise ValueError(f"unknown cache preset {preset!r}; choose one of {available_presets()}")
        self._run_token = None
        with self._step:
            self._close_stream()
            device = self.pipe.transformer.device
            generator = torch.Generator(device).manual_seed(int(seed))
            num_frames = None
            if load_preset(preset).needs_stream_length:  # e.g. global: sized to the whole stream up front
                length = min(self.limits.global_stream_frames, self.limits.max_stream_frames)
                num_frames = self.pipe.num_video_frames(self.pipe.num_latent_frames(length))
            self.stream = self.pipe.stream(prompt.strip(), cache=preset, num_frames=num_frames, generator=generator)
            self._stream_no = next(self._streams)
            self._carry = None
            self.writer = Mp4StreamWriter(self.dir / f"stream-{self._stream_no}.mp4", fps=self.pipe.config.fps)
            self.stats = StreamStats(prompt=prompt.strip(), preset=preset, seed=int(seed), state="ready")
            self.pending_switch = None
        self.touch()

    def switch(self, prompt: str, mode: str) -> None:
        """Switch the running stream to ``prompt`` from its next chunk on (``stream.switch``)."""
        if self.stream is None:
            raise ValueError("no stream yet: press Start first")
        check_prompt_length(prompt, self.pipe.config.max_prompt_chars)
        self.stream.switch(prompt.strip() if isinstance(prompt, str) else prompt, mode)
        self.pending_switch = (prompt.strip(), mode)
        self.touch()

    def stop(self) -> None:
        """End the current run after the chunk in progress; the stream (and its cache) stays, Resume continues it.
        ``stats.state`` reads "stopping" until the run has written its last chunk, then "stopped"."""
        if self._run_token is not None:
            self._run_token = None
            self.stats.state = "stopping"
        elif self.stream is not None and self.stats.state == "ready":
            self.stats.state = "stopped"
        self.touch()

    def close(self) -> None:
        """Free everything: the run ends, the stream (KV cache) is dropped, the mp4 finished, the folder removed."""
        self.closed = True
        self._run_token = None
        with self._step:
            self._close_stream()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close_stream(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close(timeout=10)
            except Exception:  # a failed or slow ffmpeg must not keep the session alive
                pass
        self.writer = None
        self.stream = None  # the pipeline only holds streams weakly: this frees the session's KV cache

    # ---- save / restore (a stream snapshot: it survives the server) ----------------------------------------------
    def save_session(self) -> Path:
        """The stream's snapshot as a file to download: Restore Session (here or on a restarted server with the
        same pipeline) continues the stream from its last generated chunk. Chunks generated but not shown yet are
        not replayed after a restore."""
        with self._step:  # between chunks
            if self.stream is None:
                raise ValueError("no stream yet: press Start first")
            s = self.stats
            path = self.dir / f"streamgen-session-{self._stream_no}-chunk{self.stream.chunks}.safetensors"
            self.stream.snapshot(path, extra={"demo": {"prompt": s.prompt, "preset": s.preset, "seed": s.seed,
                                                       "frames_generated": s.frames_generated}})
        for old in self.dir.glob("streamgen-session-*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
        self.touch()
        return path

    def restore_session(self, path: str | Path) -> None:
        """Replace this session's stream by the one a :meth:`save_session` file holds; Resume plays it on."""
        from ..cache.presets import available_presets
        from ..snapshot import SnapshotError, read_manifest

        path = Path(path)
        size = path.stat().st_size if path.is_file() else 0
        if size > self.limits.max_session_file_bytes:
            raise ValueError(f"the session file is {size:,} bytes, more than the {self.limits.max_session_file_bytes:,} "
                             "this server accepts")
        try:
            manifest = read_manifest(path)
            preset = manifest["preset"].get("name")
            if preset not in available_presets():  # names only: an uploaded file must not point us at files
                raise ValueError(f"the session's cache preset {preset!r} is not one of {available_presets()}")
            demo = manifest.get("extra", {}).get("demo") or {}
            self._run_token = None
            with self._step:
                stream = self.pipe.resume(path, cache=preset)
                self._close_stream()
                self.stream = stream
                self._stream_no = next(self._streams)
                self._carry = None
                self.writer = Mp4StreamWriter(self.dir / f"stream-{self._stream_no}.mp4", fps=self.pipe.config.fps)
                self.stats = StreamStats(prompt=str(demo.get("prompt") or stream.prompt or ""), preset=preset,
                                         seed=int(demo.get("seed") or 0), chunks=stream.chunks,
                                         frames_generated=int(demo.get("frames_generated") or 0),
                                         state="restored: press Resume")
                self.pending_switch = None
        except SnapshotError as err:
            raise ValueError(str(err)) from None
        self.touch()

    # ---- the run (one worker thread) ----------------------------------------------------------------------------
    def run(self) -> Iterator[FrameUpdate]:
        """Generate and yield frames until stopped, replaced, closed or a frame cap is hit (sets ``stats.state``).

        Frames are yielded paced at the pipeline's fps when ``limits.realtime`` (when generation falls behind, a late
        chunk is shown at once); every chunk is in the mp4 before any of its frames is yielded.
        """
        if self.stream is None:
            raise ValueError("no stream yet: press Start first")
        token = object()
        self._run_token = token
        stream, stats = self.stream, self.stats
        stats.state = "running"
        stats.shown_at.clear()
        try:
            yield from self._frames(token, stream, stats)
        finally:  # also when the consumer drops the generator (tab closed mid-run)
            if self._run_token is token:
                self._run_token = None
            if self._run_token is None and stats.state in ("running", "stopping"):
                stats.state = "stopped"

    def _generate(self, token, stream, stats: StreamStats) -> tuple[int, np.ndarray] | None:
        """The next chunk of ``stream`` as (index, uint8 frames [F, H, W, 3]), written to the mp4; None if the run
        was stopped or replaced or the stream ended."""
        with self._step:
            if self._run_token is not token or self.stream is not stream:
                return None
            began = time.perf_counter()
            try:
                chunk = next(stream)
            except StopIteration:  # a stream with a length (global cache) ended
                stats.state = "stream finished: press Start for a new one"
                return None
            frames = chunk.frames[0]
            latency = time.perf_counter() - began
            self.writer.write(frames)
        stats.generation_seconds += latency
        stats.latencies_ms.append((chunk.index, latency * 1000.0))
        stats.chunks = chunk.index + 1
        stats.frames_generated += len(frames)
        stats.prompt = chunk.prompt
        if self.pending_switch is not None and chunk.prompt == self.pending_switch[0]:
            self.pending_switch = None
        self.touch()
        return chunk.index, frames

    def _frames(self, token, stream, stats: StreamStats) -> Iterator[FrameUpdate]:
        limits = self.limits
        fps = float(self.pipe.config.fps)
        run_frames = 0
        clock_start, clock_frames = time.perf_counter(), 0
        carry, self._carry = self._carry, None
        queue = list(carry[1]) if carry is not None and carry[0] is stream else []  # [(index, frames, fresh)]
        lookahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamgen-demo")
        pending = None
        try:
            if not queue:
                item = self._generate(token, stream, stats)
                queue = [(*item, True)] if item is not None else []
            while queue:
                index, frames, fresh = queue.pop(0)
                end = None
                if queue:
                    pass  # more carried chunks to show first
                elif stats.frames_generated >= limits.max_stream_frames:
                    end = f"stream cap of {limits.max_stream_frames} frames reached: press Start for a new one"
                elif limits.max_frames_per_run and run_frames + len(frames) >= limits.max_frames_per_run:
                    end = f"paused after {limits.max_frames_per_run} frames (fair share): press Resume"
                else:
                    pending = lookahead.submit(self._generate, token, stream, stats)
                for i, frame in enumerate(frames):
                    if self._run_token is not token:
                        queue.insert(0, (index, frames[i:], False))
                        return
                    if limits.realtime:
                        due = clock_start + clock_frames / fps
                        wait = due - time.perf_counter()
                        if wait > 0:
                            time.sleep(wait)
                        elif wait < -0.25:  # far behind (slow chunk): restart the clock rather than fast-forward
                            clock_start, clock_frames = time.perf_counter(), 0
                        clock_frames += 1
                    stats.frames_shown += 1
                    stats.shown_at.append(time.perf_counter())
                    run_frames += 1
                    yield FrameUpdate(frame, index, stats.frames_shown, chunk_done=(i == 0 and fresh))
                if end is not None:
                    stats.state = end
                if pending is not None:
                    item, pending = pending.result(), None
                    if item is not None:
                        queue.append((*item, True))
        finally:
            if pending is not None:  # wait for the lookahead chunk: it is in the mp4, so it must be shown later
                item = pending.result()
                if item is not None:
                    queue.append((*item, True))
            if queue and self.stream is stream:  # generated, not shown yet: the next run shows these first
                self._carry = (stream, queue)
            lookahead.shutdown(wait=False)

    # ---- readouts -----------------------------------------------------------------------------------------------
    def display_fps(self) -> float:
        """Frames shown per second over the last ~2 s (0 when not playing)."""
        shown = [t for t in self.stats.shown_at if t > time.perf_counter() - 2.0]
        if len(shown) < 2 or not self.running:
            return 0.0
        return (len(shown) - 1) / max(shown[-1] - shown[0], 1e-6)

    def generation_fps(self) -> float:
        s = self.stats
        return s.frames_generated / s.generation_seconds if s.generation_seconds > 0 else 0.0

    def readout(self) -> dict:
        s = self.stats
        stream = self.stream
        return {
            "state": s.state,
            "prompt": s.prompt,
            "preset": s.preset,
            "seed": s.seed,
            "chunks": s.chunks,
            "frames": s.frames_generated,
            "display_fps": self.display_fps(),
            "generation_fps": self.generation_fps(),
            "cache_bytes": stream.cache_bytes if stream is not None else 0,
            "transformer_seconds": stream.engine.transformer_seconds if stream is not None else 0.0,
            "last_latency_ms": s.latencies_ms[-1][1] if s.latencies_ms else None,
            "pending_switch": self.pending_switch,
        }

    # ---- download -----------------------------------------------------------------------------------------------
    def snapshot_mp4(self, settle_s: float = 2.0) -> Path | None:
        """A playable copy of this stream's mp4 so far, cut after its last whole fragment; None before any frame.

        It holds every frame written but the newest (ffmpeg closes a frame's fragment when the next frame arrives).
        Frames just written may still be in ffmpeg's pipe: this waits up to ``settle_s`` for them."""
        writer = self.writer
        if writer is None or writer.frames_written == 0:
            return None
        deadline = time.monotonic() + settle_s
        while True:
            wanted = writer.frames_written - 1
            data = Path(writer.path).read_bytes()
            end, fragments = mp4_complete_prefix(data)
            if fragments >= wanted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if end == 0 or fragments == 0:
            return None
        out = self.dir / f"streamgen-{self._stream_no}-{fragments}frames.mp4"
        out.write_bytes(data[:end])
        if self._snapshot is not None and self._snapshot != out:
            self._snapshot.unlink(missing_ok=True)
        self._snapshot = out
        return out


def release_freed_memory() -> None:
    """Hand memory freed by a closed session back to the system. glibc keeps freed blocks in per-thread arenas for
    reuse, so without this a server's RSS stays at the high-water mark of its busiest moment (a session's KV cache,
    its worker's arena) long after the session is gone. A no-op where the C library is not glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's, on Linux
    except (AttributeError, OSError, TypeError):  # musl, macOS, Windows
        return
    trim(0)


class SessionRegistry:
    """Sessions by gradio session hash. Closing a session (the tab's unload event, or idleness) frees it."""

    def __init__(self, pipe, limits: DemoLimits | None = None):
        self.pipe = pipe
        self.limits = limits or DemoLimits()
        self._sessions: dict[str, DemoSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def ids(self) -> list[str]:
        return list(self._sessions)

    def get(self, session_id: str) -> DemoSession | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.touch()
        return session

    def get_or_create(self, session_id: str) -> DemoSession:
        self.reap_idle()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                if len(self._sessions) >= self.limits.max_sessions:
                    raise SessionsFull(
                        f"the demo is serving its maximum of {self.limits.max_sessions} sessions; try again later"
                    )
                session = self._sessions[session_id] = DemoSession(session_id, self.pipe, self.limits)
        session.touch()
        return session

    def close(self, session_id: str) -> bool:
        """Free a session; it leaves the registry once its stream, mp4 and folder are gone."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.close()
        with self._lock:
            if self._sessions.get(session_id) is session:
                del self._sessions[session_id]
        release_freed_memory()
        return True

    def reap_idle(self) -> list[str]:
        """Close sessions idle for longer than ``limits.idle_timeout_s`` (a tab that vanished without unload)."""
        cutoff = time.monotonic() - self.limits.idle_timeout_s
        stale = [sid for sid, s in list(self._sessions.items()) if s.last_active < cutoff]
        for sid in stale:
            self.close(sid)
        return stale

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)
