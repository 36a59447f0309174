"""``streamgen demo``: a Gradio app for live streaming with prompt switches.

Gradio is optional (``pip install -e ".[demo]"``): this module and :func:`register_cli` import nothing heavy; the app
itself lives in :mod:`streamgen.demo.app`, imported only when the command runs.

Wire it into the ``streamgen`` parser with::

    from streamgen.demo import register_cli
    register_cli(sub)          # sub = parser.add_subparsers(...)
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys

__all__ = ["INSTALL_HINT", "check_port", "cmd_demo", "register_cli", "torch_threads"]

INSTALL_HINT = (
    "the demo needs gradio, an optional extra: install it with\n"
    '    pip install -e ".[demo]"        (from a checkout; or: pip install "streamgen[demo]")'
)


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "demo", help="live demo in the browser (Gradio): streaming, prompt switches, mp4 download",
        description="Serve a Gradio app that streams video live, with prompt switches. Binds 127.0.0.1 by default.",
    )
    p.add_argument("--pipeline", help="pipeline folder, or a shipped one by name (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=int,
                   help="streams playing at once (default: --max-sessions, a worker per session, so that no "
                        "session waits for another's run to end; their chunks come from --generation-workers)")
    p.add_argument("--generation-workers", type=int,
                   help="chunks generated at once, across all sessions, first come first served: worker processes, "
                        "each with its own copy of the model (default: the physical cores on a CPU, where more only "
                        "slow every session down, one on an accelerator; with more than one, each uses one torch "
                        "thread unless 'streamgen --threads N demo' says otherwise)")
    p.add_argument("--in-process", action="store_true",
                   help="generate in threads of the web server's own process (one copy of the model, which then "
                        "shares the server's interpreter) instead of worker processes")
    p.add_argument("--queue-size", type=int, default=16, help="events waiting for a worker, at most (default 16)")
    p.add_argument("--max-sessions", type=int, default=8, help="browser sessions holding a stream (default 8)")
    p.add_argument("--max-frames-per-run", type=int, default=960,
                   help="a run pauses after this many frames, freeing its worker (Resume continues; 0: no limit)")
    p.add_argument("--max-stream-frames", type=int, default=9600, help="frames in one stream, at most")
    p.add_argument("--idle-timeout", type=float, default=1800.0, help="close sessions idle this many seconds")
    p.set_defaults(func=cmd_demo)
    return p


def _port_busy(host: str, port: int) -> str:
    return f"port {port} on {host} is already in use: pass another --port (e.g. --port {port + 1 if port < 65535 else 7861})"


def check_port(host: str, port: int) -> None:
    """ValueError naming ``--port`` / ``--host`` if the demo could not listen there (gradio's own error names its
    environment variable and ``launch()`` argument instead). Binds as gradio does (SO_REUSEADDR), then lets go."""
    import socket

    if not 0 < port < 65536:
        raise ValueError(f"--port must be 1-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host!r}: not an address of this machine ({err})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(_port_busy(host, port)) from None
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None


def torch_threads(args) -> int | None:
    """Torch CPU threads of each generation worker: ``--threads`` if given; else 1 when several workers run at once
    on the CPU; else None (the pipeline's own default).

    Each worker's torch ops start their own OpenMP team: with one thread per core, N workers keep N x cores threads
    spinning for the cores. On 2 busy cores with 4 sessions generating at once (one sending 1 MB prompts and
    switching every second) one thread each took the others' worst frame gap from 3.3-3.8 to 2.0-2.1 chunk times,
    and a prompt's encoding from 530 to 14 ms."""
    from .session import default_workers

    if getattr(args, "threads", None) is not None:
        return args.threads
    if args.device.split(":")[0] != "cpu":
        return None
    return 1 if default_workers(args.generation_workers, "cpu") > 1 else None


def cmd_demo(args) -> int:
    if args.generation_workers is not None and args.generation_workers < 1:
        raise ValueError(f"--generation-workers must be at least 1, got {args.generation_workers}")
    check_port(args.host, args.port)  # before loading anything: a busy port is the commonest first-run failure
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from ..loading import check_device
    from ..resources import find_pipeline
    from .app import build_demo, launch_demo
    from .generation import ProcessGeneration, ThreadGeneration
    from .session import DemoLimits, default_workers

    folder = find_pipeline(args.pipeline)  # a wrong name fails here, in one line, not in every worker
    check_device(args.device)
    workers = default_workers(args.generation_workers, args.device.split(":")[0])
    threads = torch_threads(args)
    limits = DemoLimits(
        max_frames_per_run=args.max_frames_per_run, max_stream_frames=args.max_stream_frames,
        max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout, generation_workers=workers,
    )
    if args.in_process:
        generation = ThreadGeneration(_load_in_process(folder, args.device, threads), workers)
    else:
        generation = ProcessGeneration(folder, args.device, workers, threads=threads, max_streams=args.max_sessions)
    try:
        demo, registry = build_demo(generation, limits, concurrency=args.concurrency, queue_size=args.queue_size)

        def terminate(signum, frame):  # `kill` / a service manager: shut down as on Ctrl-C
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            launch_demo(demo, args.host, args.port)  # blocks until Ctrl-C
        except OSError as err:  # the port was taken between the check and gradio's bind
            reason = err.strerror or "gradio could not bind it"
            raise ValueError(f"{_port_busy(args.host, args.port)} ({reason})") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            registry.close_all()  # finish every session's mp4 and remove its temp folder
    finally:
        generation.close()
    return 0


def _load_in_process(folder, device: str, threads: int | None):
    import torch

    from ..loading import open_pipeline
    from ..threads import use_default_threads

    pipe = open_pipeline(folder, device)
    if threads is not None:
        torch.set_num_threads(threads)
    else:
        use_default_threads(pipe)
    return pipe
