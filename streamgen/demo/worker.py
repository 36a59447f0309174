"""A demo generation worker: a process of its own that holds a copy of the pipeline and the streams the server
places in it, and answers the server's requests, one at a time, on its stdin/stdout (:mod:`streamgen.demo.generation`
starts it and speaks the other end).

    python -m streamgen.demo.worker '{"pipeline": "tiny-random", "device": "cpu", "threads": 1, "nice": 5}'
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

from .generation import (
    STEER_SPEED, has_camera, open_stream, receive_message, release_freed_memory, resume_stream, send_message,
    stream_info,
)


def serve(pipeline, device: str, threads: int | None, nice: int) -> int:
    """Load the pipeline, send its config, then answer requests until the server closes the pipe."""
    # The protocol owns the real stdout; anything a library prints goes to stderr (the server's log) instead.
    requests = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server ends its workers
    if nice and hasattr(os, "nice"):  # POSIX; elsewhere the workers run at the server's priority
        os.nice(nice)
    try:
        import torch

        from ..loading import open_pipeline
        from ..progress import quiet_loading
        from ..threads import use_default_threads

        with quiet_loading():
            pipe = open_pipeline(pipeline, device)
        pipe.set_progress_bar_config(disable=True)
        if threads is not None:
            torch.set_num_threads(threads)
        else:
            use_default_threads(pipe)
    except Exception as err:  # noqa: BLE001 - the server says why, in one line
        send_message(answers, ("error", ("runtime", f"the generation worker could not load the pipeline: {err}")))
        return 1
    # What is loaded now lives as long as the worker: keep it out of the cyclic collector's full passes, which scan
    # every tracked object with the model waiting (the web server does the same for the same reason).
    gc.collect()
    gc.freeze()
    send_message(answers, ("ok", (pipe.config, has_camera(pipe))))
    streams: dict[int, object] = {}
    while True:
        try:
            op, args = receive_message(requests)
        except (EOFError, OSError):  # the server closed the pipe (or died)
            return 0
        try:
            answer = ("ok", handle(pipe, streams, op, args))
        except ValueError as err:
            answer = ("error", ("value", str(err)))
        except RuntimeError as err:  # e.g. a switch of a stream that has ended
            answer = ("error", ("runtime", str(err)))
        except Exception as err:  # noqa: BLE001 - sent to the server, which raises it for the session
            answer = ("error", ("runtime", f"{type(err).__name__}: {err}"))
        try:
            send_message(answers, answer)
        except OSError:
            return 0


def handle(pipe, streams: dict, op: str, args: tuple):
    """One request: open / resume / close a stream, or next / switch / move / snapshot one."""
    if op == "open":
        sid, prompt, preset, seed, stream_frames = args
        streams[sid] = open_stream(pipe, prompt, preset, seed, stream_frames)
        return stream_info(streams[sid])
    if op == "resume":
        sid, path, preset = args
        streams[sid] = resume_stream(pipe, path, preset)
        return stream_info(streams[sid])
    if op == "close":
        if streams.pop(args[0], None) is not None:
            release_freed_memory()
        return None
    stream = streams.get(args[0])
    if stream is None:
        raise RuntimeError(f"no stream {args[0]} in this worker")
    if op == "next":
        try:
            chunk = next(stream)
        except StopIteration:
            return None
        return chunk.index, chunk.frames[0], chunk.prompt, stream_info(stream)
    if op == "switch":
        return stream.switch(*args[1:])
    if op == "move":
        from ..camera_control import steering_step

        return stream.move(steering_step(args[1], STEER_SPEED))
    if op == "snapshot":
        return str(stream.snapshot(*args[1:]))
    raise RuntimeError(f"unknown request {op!r}")


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    sys.exit(serve(spec["pipeline"], spec["device"], spec["threads"], spec["nice"]))
