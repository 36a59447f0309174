"""Where the demo's chunks are generated: in threads of the web server's own process, or in worker processes.

The web server moves every frame through gradio's event loop; in the model's interpreter it shares the GIL with the
model's Python between ops. :class:`ProcessGeneration` gives the model interpreters of its own (one per worker, at a
lower CPU priority than the web server), and a chunk's frames come back over a pipe: over HTTP on 2 cores, with 3
users and a hostile one, 14.7-16.0 frames/s per session instead of 14.7 and worst gaps of 0.54-1.65 chunk times
instead of 1.54-1.68 (docs/benchmarks.md). :class:`ThreadGeneration` keeps everything in one process (for a pipeline
built in Python).

Both give :class:`~streamgen.demo.session.DemoSession` the same small surface: ``config``, ``open()``, ``resume()``
and an ``executor`` to wait for chunks in, and streams with ``next()``, ``switch()``, ``snapshot()``, ``chunks``,
``prompt``, ``cache_bytes`` and ``transformer_seconds``.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import pickle
import struct
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ProcessGeneration", "ThreadGeneration", "WorkerStopped", "is_generation", "open_stream",
           "release_freed_memory", "stream_info"]


STEER_SPEED = 2.0  # world units per frame a steering key flies the camera (the fastest pan the camera model learned)


def open_stream(pipe, prompt: str, preset: str, seed: int, stream_frames: int):
    """``pipe.stream(prompt)`` as the demo opens it: seeded, and ``stream_frames`` long when the preset must know its
    length up front (``global``: its cache holds every frame); open-ended otherwise. A camera model's stream starts
    still over the middle of a camera-world map (:func:`demo_camera`), steered with ``move()``."""
    import torch

    from ..cache.presets import load_preset

    generator = torch.Generator().manual_seed(int(seed))
    num_frames = None
    if load_preset(preset).needs_stream_length:
        num_frames = pipe.num_video_frames(pipe.num_latent_frames(stream_frames))
    camera = demo_camera(pipe) if has_camera(pipe) else None
    return pipe.stream(prompt, cache=preset, num_frames=num_frames, generator=generator, camera=camera)


def resume_stream(pipe, path, preset: str):
    """``pipe.resume(path)`` as the demo resumes a saved session: a camera model's with the demo's camera (a
    snapshot does not hold the camera's depth source)."""
    return pipe.resume(path, cache=preset, camera=demo_camera(pipe) if has_camera(pipe) else None)


def has_camera(pipe) -> bool:
    return getattr(pipe, "camera_encoder", None) is not None


def demo_camera(pipe):
    """The camera a demo stream starts with: the camera world's, still, at the default height over a map's middle
    (the geometric memory's depth is the world's ground)."""
    from ..camera_control import CameraTrack
    from ..world.camera import CameraState, ground_depth
    from ..geometry import Intrinsics

    height, width = pipe.default_size()
    intrinsics = Intrinsics.centred(width, height, float(width))
    return CameraTrack(intrinsics, CameraState(128.0, 128.0, float(width)).camera_to_world()[None],
                       depth_fn=ground_depth)


def release_freed_memory() -> None:
    """Hand memory freed by a closed stream back to the system (~1 ms). glibc keeps freed blocks in per-thread arenas
    for reuse, so without this a server's RSS stays at the high-water mark of its busiest moment (a session's KV cache,
    its worker's arena) long after the session is gone. A no-op where the C library is not glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's, on Linux
    except (AttributeError, OSError, TypeError):  # musl, macOS, Windows
        return
    trim(0)


@dataclass
class Chunk:
    """What the demo needs of a :class:`~streamgen.pipeline.StreamChunk`."""

    index: int
    frames: np.ndarray  # uint8 [F, H, W, 3]: the one video of StreamChunk.frames
    prompt: str


def stream_info(stream) -> dict:
    """What the demo reads of a :class:`~streamgen.pipeline.VideoStream` besides its chunks."""
    return {"chunks": stream.chunks, "prompt": stream.prompt, "cache_bytes": stream.cache_bytes,
            "transformer_seconds": stream.engine.transformer_seconds}


class DemoStream:
    """The readouts of a stream as the demo sees it, from ``info`` (a :func:`stream_info` dict)."""

    info: dict

    @property
    def chunks(self) -> int:
        return self.info["chunks"]

    @property
    def prompt(self) -> str | None:
        return self.info["prompt"]

    @property
    def cache_bytes(self) -> int:
        return self.info["cache_bytes"]

    @property
    def transformer_seconds(self) -> float:
        return self.info["transformer_seconds"]


# ---- in this process ----------------------------------------------------------------------------------------------
class ThreadGeneration:
    """Streams of ``pipe`` generated by a pool of ``workers`` threads of this process, first come first served."""

    def __init__(self, pipe, workers: int):
        if workers < 1:
            raise ValueError(f"generation_workers must be at least 1, got {workers}")
        self.pipe = pipe
        self.config = pipe.config
        self.camera = has_camera(pipe)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamgen-demo-generate")

    def open(self, prompt: str, preset: str, seed: int, stream_frames: int):
        return LocalStream(open_stream(self.pipe, prompt, preset, seed, stream_frames))

    def resume(self, path: str | Path, preset: str):
        return LocalStream(resume_stream(self.pipe, path, preset))

    def close(self) -> None:
        self.executor.shutdown(wait=False)


class LocalStream(DemoStream):
    """A :class:`~streamgen.pipeline.VideoStream` of this process, seen as the demo sees a stream."""

    def __init__(self, stream):
        self.stream = stream

    @property
    def info(self) -> dict:
        return stream_info(self.stream)

    def __next__(self) -> Chunk:
        chunk = next(self.stream)
        return Chunk(chunk.index, chunk.frames[0], chunk.prompt)

    def switch(self, prompt: str, mode: str) -> None:
        self.stream.switch(prompt, mode)

    def move(self, key: str) -> None:
        from ..camera_control import steering_step

        self.stream.move(steering_step(key, STEER_SPEED))

    def snapshot(self, path: str | Path, extra: dict | None = None) -> Path:
        return self.stream.snapshot(path, extra)

    def close(self) -> None:
        self.stream = None  # the pipeline holds streams weakly: this frees the KV cache


def is_generation(obj) -> bool:
    """True for a generation host (rather than a pipeline)."""
    return isinstance(obj, (ThreadGeneration, ProcessGeneration))


# ---- in worker processes ------------------------------------------------------------------------------------------
PLAYING_WINDOW_S = 5.0
PLAYING_WINDOW_CHUNKS = 4


class WorkerStopped(RuntimeError):
    """A generation worker process is gone (killed, or out of memory): its streams are lost."""


class WorkerProcess:
    """One generation process (:mod:`streamgen.demo.worker`), and the lane that talks to it over its stdin/stdout:
    its requests are served one at a time, in the order they were asked, so the sessions whose streams it holds take
    turns. A fresh interpreter (not multiprocessing's fork, unsafe beside gradio's threads, nor its spawn, which
    imports the caller's main script again)."""

    def __init__(self, number: int, pipeline, device: str, threads: int | None, nice: int):
        self.name = f"streamgen-demo-worker-{number}"
        spec = json.dumps({"pipeline": str(pipeline) if pipeline is not None else None, "device": device,
                           "threads": threads, "nice": nice})
        self.process = subprocess.Popen([sys.executable, "-m", "streamgen.demo.worker", spec],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streamgen-demo-lane-{number}")
        self._asked: dict[int, tuple[float, float]] = {}  # stream id -> (when it last asked for a chunk, its window)
        self._asked_lock = threading.Lock()
        self.closed = False
        self.config, self.camera = None, False

    def wait_ready(self) -> "WorkerProcess":
        """Wait for the worker to load its pipeline (it sends the config and whether it steers a camera, or why it
        failed); return it."""
        try:
            self.config, self.camera = self._answer()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    # ---- what it holds, for placing new streams ----
    @property
    def streams(self) -> int:
        """Streams open in this worker."""
        return len(self._asked)

    @property
    def playing(self) -> int:
        """Streams that asked for a chunk lately: within :data:`PLAYING_WINDOW_CHUNKS` of their chunk's round trip,
        and at least :data:`PLAYING_WINDOW_S` (a new stream counts as playing). A stopped session's stream, or an
        abandoned one waiting for the idle reaper, holds memory here but no share of the worker."""
        now = time.monotonic()
        with self._asked_lock:
            return sum(now - asked < window for asked, window in self._asked.values())

    def admit(self, sid: int) -> None:
        with self._asked_lock:
            self._asked[sid] = (time.monotonic(), PLAYING_WINDOW_S)

    def asked(self, sid: int, round_trip_s: float) -> None:
        with self._asked_lock:
            if sid in self._asked:  # not a stream closed meanwhile
                self._asked[sid] = (time.monotonic(), max(PLAYING_WINDOW_S, PLAYING_WINDOW_CHUNKS * round_trip_s))

    def forget(self, sid: int) -> None:
        with self._asked_lock:
            self._asked.pop(sid, None)

    def call(self, op: str, *args):
        """``op(*args)`` in the worker, after every request asked before it; its result, or its error raised here."""
        return self._lane.submit(self._roundtrip, op, args).result()

    def post(self, op: str, *args) -> None:
        """``op(*args)`` in the worker without waiting for it (closing a stream); nothing once it is closed."""
        if self.alive and not self.closed:
            self._lane.submit(self._roundtrip, op, args)

    def _roundtrip(self, op: str, args: tuple):
        try:
            send_message(self.process.stdin, (op, args))
        except (OSError, ValueError):  # a broken pipe, or one closed by close()
            self._stopped()
        return self._answer()

    def _answer(self):
        try:
            status, value = receive_message(self.process.stdout)
        except (EOFError, OSError, ValueError):
            self._stopped()
        if status == "ok":
            return value
        kind, message = value
        raise (ValueError if kind == "value" else RuntimeError)(message)

    def _stopped(self):
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        raise WorkerStopped(f"the generation worker {self.name} stopped (exit code {code}): its streams are lost; "
                            "press Start for a new one") from None

    def close(self) -> None:
        self.closed = True
        self._lane.shutdown(wait=False)
        try:
            self.process.stdin.close()  # the worker reads EOF and exits
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def send_message(pipe, message) -> None:
    """``message`` pickled, after its length. Only between the server and the workers it started: a pickle runs
    code, so neither ever reads one from anywhere else."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def receive_message(pipe):
    header = pipe.read(8)
    if len(header) < 8:
        raise EOFError("the pipe closed")
    (size,) = struct.unpack("<Q", header)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError("the pipe closed mid-message")
    return pickle.loads(data)


class ProcessGeneration:
    """Streams generated in ``workers`` processes, each with its own copy of the pipeline (``pipeline``: a folder or
    a shipped name, as ``open_pipeline`` takes). A stream stays in the worker it starts in (its KV cache is there); a
    new one goes to the worker with the fewest streams playing, then the fewest held (placing by streams held put a
    third playing stream on one worker while the other held a stopped one: 3 chunks per round on one core, late
    frames for all three). A worker that has died is started afresh for the next stream. ``threads``: torch threads
    per worker (None: the pipeline's default); ``nice``: how much lower than the web server the workers run, so
    that the server's event loop, which moves every frame, gets a core the moment it has work (POSIX).
    ``max_streams``: sessions that may wait for a chunk at once (threads that only wait)."""

    def __init__(self, pipeline, device: str = "cpu", workers: int = 1, threads: int | None = None, nice: int = 5,
                 max_streams: int = 8):
        if workers < 1:
            raise ValueError(f"generation_workers must be at least 1, got {workers}")
        self._spec = (pipeline, device, threads, nice)
        self._numbers = itertools.count()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        started = [WorkerProcess(next(self._numbers), *self._spec) for _ in range(workers)]  # they load at once
        try:
            self.workers = [worker.wait_ready() for worker in started]
        except BaseException:
            for worker in started:
                worker.close()
            raise
        self.config, self.camera = self.workers[0].config, self.workers[0].camera
        # A session waits for its chunk in a thread of its own: the workers' lanes, not this pool, take turns.
        self.executor = ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="streamgen-demo-wait")

    def _place(self) -> WorkerProcess:
        for i, worker in enumerate(self.workers):
            if not worker.alive:
                worker.close()
                self.workers[i] = WorkerProcess(next(self._numbers), *self._spec).wait_ready()
        worker = min(self.workers, key=lambda w: (w.playing, w.streams))
        return worker

    def open(self, prompt: str, preset: str, seed: int, stream_frames: int):
        return self._new_stream("open", prompt, preset, int(seed), int(stream_frames))

    def resume(self, path: str | Path, preset: str):
        return self._new_stream("resume", str(path), preset)

    def _new_stream(self, op: str, *args):
        with self._lock:  # placed and counted at once: two sessions starting together go to different workers
            worker, sid = self._place(), next(self._ids)
            worker.admit(sid)
        try:
            info = worker.call(op, sid, *args)
        except BaseException:
            worker.forget(sid)
            raise
        return RemoteStream(worker, sid, info)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        for worker in self.workers:
            worker.close()


class RemoteStream(DemoStream):
    """A stream living in a worker process. Dropping it (or :meth:`close`) frees it there."""

    def __init__(self, worker: WorkerProcess, sid: int, info: dict):
        self._worker, self._sid = worker, sid
        self.info = info  # as of its last chunk
        self._release = weakref.finalize(self, _release, worker, sid)

    def __next__(self) -> Chunk:
        began = time.monotonic()
        answer = self._worker.call("next", self._sid)
        self._worker.asked(self._sid, time.monotonic() - began)
        if answer is None:
            raise StopIteration
        index, frames, prompt, self.info = answer
        return Chunk(index, frames, prompt)

    def switch(self, prompt: str, mode: str) -> None:
        self._worker.call("switch", self._sid, prompt, mode)

    def move(self, key: str) -> None:
        self._worker.call("move", self._sid, key)

    def snapshot(self, path: str | Path, extra: dict | None = None) -> Path:
        return Path(self._worker.call("snapshot", self._sid, str(path), extra))

    def close(self) -> None:
        self._release()


def _release(worker: WorkerProcess, sid: int) -> None:
    worker.forget(sid)
    worker.post("close", sid)
