"""Soak the demo: 3 ordinary sessions play while a 4th is hostile, then report what the ordinary users saw.

The hostile session, every second, sends a 1 MB prompt (the server must refuse it) and switches to a fresh random
2,000-character prompt (cut or smooth); every 30 s it abandons its session and opens a new one. The report: the
ordinary sessions' worst gap between two frames, in chunk times (frames are due every 1/fps s; issue 16's goal is
<= 2 chunk times), and the server's RSS (its generation worker processes included) after a warm-up with 4 ordinary
sessions against after the soak, once every session is closed (goal: <= +5%).

    python scripts/demo_soak.py --seconds 600                 # sessions driven in-process, as gradio's workers do
    python scripts/demo_soak.py --seconds 600 --http          # a real `streamgen demo` server, over HTTP

Without ``--http`` the sessions generate in threads of this process. ``--http`` starts `streamgen demo` in a
subprocess (generating in its worker processes, or with ``--in-process-generation`` in its own) and drives it over
HTTP: each ordinary session is a process of its own reading gradio's event stream as a page does, and frames are
timed as they arrive there (the hostile session uses gradio_client); the RSS is the server's and its workers', and
abandoned sessions are closed by the server's idle reaper (``--idle-timeout``), as tabs that vanished. It needs the
``demo`` extra. The JSON report goes to stdout; ``worst_gaps`` says when the worst gaps came (s from the first
frame), and ``--timeline`` adds when the hostile session opened, switched and left.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

PROMPTS = [
    "a red circle drifting left over a blue backdrop",
    "a yellow square drifting right over a green backdrop",
    "a blue triangle bouncing over a red backdrop",
]
ONE_MB_PROMPT = "a red circle " * 80_000
HOSTILE_SESSION_S = 30.0


def random_prompt(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(2000))


def memory(process: psutil.Process) -> dict:
    """RSS, and its anonymous / file-backed parts (Linux), in bytes: of the server and every process it started (its
    generation workers), summed; ``server`` and ``workers``: the server's own RSS and each child's."""
    parts = [process, *process.children(recursive=True)]
    out = {"rss": 0}
    for part in parts:
        try:
            out["rss"] += part.memory_info().rss
            status = Path(f"/proc/{part.pid}/status")
            for line in status.read_text().splitlines() if status.exists() else []:
                if line.startswith(("RssAnon", "RssFile")):
                    key = line.split(":")[0]
                    out[key] = out.get(key, 0) + int(line.split()[1]) * 1024
        except (psutil.NoSuchProcess, FileNotFoundError):  # an ffmpeg that just finished
            continue
    out["server"] = process.memory_info().rss
    out["workers"] = [p.memory_info().rss for p in parts[1:] if _is_worker(p)]
    return out


def _is_worker(process: psutil.Process) -> bool:
    try:
        return "streamgen.demo.worker" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


# ---- the two ways to drive sessions ------------------------------------------------------------------------------
class InProcess:
    """Sessions of a SessionRegistry in this process, sent as the app sends them: each frame as a data URI, and each
    chunk's stats panel and latency chart."""

    def __init__(self, args):
        import torch

        from streamgen.demo.session import DemoLimits, SessionRegistry
        from streamgen.loading import open_pipeline

        torch.set_num_threads(1)  # what `streamgen demo` does with several sessions on a CPU
        self.pipe = open_pipeline(args.pipeline)
        self.pipe.set_progress_bar_config(disable=True)
        self.registry = SessionRegistry(self.pipe, DemoLimits(max_frames_per_run=0, max_stream_frames=10**7))
        self.process = psutil.Process()

    @property
    def chunk_s(self) -> float:
        return self.pipe.config.chunk_frames / self.pipe.config.fps

    def play(self, sid: str, prompt: str, stop: threading.Event, arrivals: list) -> None:
        from streamgen.demo.app import _latency_svg, _stats_html
        from streamgen.demo.session import frame_data_uri

        session = self.registry.get_or_create(sid)
        session.start(prompt, self.pipe.config.default_cache, random.Random(sid).randrange(1000))
        chunk = None
        for update in session.run():
            if update.chunk_index != chunk:  # the app's stats and chart, once per chunk
                chunk = update.chunk_index
                _stats_html(session), _latency_svg(session)
            frame_data_uri(update.frame)
            arrivals.append(time.monotonic())
            if stop.is_set():
                session.stop()
        self.registry.close(sid)

    def hostile(self, stop: threading.Event, log: HostileLog) -> None:
        rng = random.Random(0)
        while not stop.is_set():
            sid = f"hostile-{log['sessions']}"
            session = self.registry.get_or_create(sid)
            log.mark("opened")
            try:
                session.start(ONE_MB_PROMPT, self.pipe.config.default_cache, 0)
            except ValueError:
                log["refused_start"] += 1
            session.start(random_prompt(rng), "rolling", log["sessions"])
            runner = threading.Thread(target=lambda: [None for _ in session.run()], daemon=True)
            runner.start()
            opened = time.monotonic()
            while time.monotonic() - opened < HOSTILE_SESSION_S and not stop.is_set():
                time.sleep(1.0)
                try:
                    session.switch(ONE_MB_PROMPT + str(log["switches"]), "cut")
                except ValueError:
                    log["refused_switch"] += 1
                session.switch(random_prompt(rng), rng.choice(["cut", "smooth"]))
                log.mark("switches")
            self.registry.close(sid)
            runner.join(timeout=30)
            log.mark("sessions")

    def settle(self) -> None:
        self.registry.close_all()
        gc.collect()
        time.sleep(2)

    def close(self) -> None:
        pass


class OverHttp:
    """A `streamgen demo` server in a subprocess, driven by gradio_client (one Client = one browser session)."""

    def __init__(self, args):
        from gradio_client import Client

        self.Client = Client
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        command = [sys.executable, "-m", "streamgen.cli", "demo", "--port", str(port), "--max-frames-per-run", "0",
                   "--max-stream-frames", str(10**7), "--idle-timeout", str(args.idle_timeout)]
        if args.pipeline:
            command += ["--pipeline", args.pipeline]
        if args.in_process_generation:
            command += ["--in-process"]
        # The server's log goes to a file: a pipe nobody reads would fill and block the server mid-soak.
        self.log = tempfile.TemporaryFile()
        self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log)
        self.process = psutil.Process(self.server.pid)
        deadline = time.monotonic() + 300
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"the demo server exited: {self.server_log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the demo server did not open its port in 300 s") from None
                time.sleep(0.5)
        self.idle_timeout = args.idle_timeout
        from streamgen.loading import open_pipeline  # only for the chunk time (configs, weights are small)

        pipe = open_pipeline(args.pipeline)
        self._chunk_s = pipe.config.chunk_frames / pipe.config.fps
        self.default_cache = pipe.config.default_cache
        del pipe

    @property
    def chunk_s(self) -> float:
        return self._chunk_s

    def server_log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def client(self):
        return self.Client(self.url, verbose=False)

    def play(self, sid: str, prompt: str, stop: threading.Event, arrivals: list) -> None:
        """A browser session in a process of its own (as browsers are: in one process, the sessions' readers shared
        one interpreter and waited for each other); it plays until its stdin closes and reports its arrivals."""
        seed = random.Random(sid).randrange(1000)
        browser = subprocess.Popen([sys.executable, __file__, "--browser", self.url, prompt, self.default_cache,
                                    str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        stop.wait()
        browser.stdin.close()
        out = browser.stdout.read()
        browser.wait(timeout=120)
        arrivals.extend(json.loads(out))

    def hostile(self, stop: threading.Event, log: HostileLog) -> None:
        rng = random.Random(0)
        while not stop.is_set():
            client = self.client()
            try:
                client.predict(ONE_MB_PROMPT, self.default_cache, 0, api_name="/start")
            except Exception:  # noqa: BLE001 - the server's refusal arrives as an AppError
                log["refused_start"] += 1
            log.mark("opened")
            job = client.submit(random_prompt(rng), "rolling", log["sessions"], api_name="/start")
            opened = time.monotonic()
            while time.monotonic() - opened < HOSTILE_SESSION_S and not stop.is_set():
                time.sleep(1.0)
                try:
                    client.predict(ONE_MB_PROMPT + str(log["switches"]), "cut", api_name="/switch")
                except Exception:  # noqa: BLE001
                    log["refused_switch"] += 1
                client.predict(random_prompt(rng), rng.choice(["cut", "smooth"]), api_name="/switch")
                log.mark("switches")
            client.predict(api_name="/stop_1")
            job.cancel()
            client.close()  # abandoned, as a tab that vanished: the server's idle reaper closes the session
            log.mark("sessions")

    def settle(self) -> None:
        # Every session is stopped and abandoned now; a new session's Start runs the reaper once they have gone idle
        # (its own 1 MB prompt is refused, so it holds no stream).
        time.sleep(self.idle_timeout + 2)
        client = self.client()
        try:
            client.predict(ONE_MB_PROMPT, self.default_cache, 0, api_name="/start")
        except Exception:  # noqa: BLE001 - refused, as intended
            pass
        finally:
            client.close()
        time.sleep(2)

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=60)
        log = self.server_log()
        self.log_tail = log[-1000:]  # what the server said (tracebacks would show here)
        self.log_bytes = len(log)


def browser(url: str, prompt: str, preset: str, seed: int) -> int:
    """One browser session (``--browser``): start a stream and read gradio's event stream as a page does, noting
    when each new frame arrives (``time.monotonic()``, one clock for every process on the machine); on EOF on stdin,
    press Stop, read on until the run ends, and print the arrivals as JSON.

    Not gradio_client: it hands each message through polling threads and diff copies of its own, and with four
    sessions on this machine it delayed frames by up to 2 s that the server had sent on time (a frame's server-side
    timestamp against its arrival; this reader, on the same server, saw no gap over 0.5 chunk times)."""
    import uuid

    import httpx

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    arrivals, stopping = [], False
    with httpx.Client(timeout=60) as http:
        events = {d.get("api_name"): d["id"] for d in http.get(url + "config").json()["dependencies"]}
        session = uuid.uuid4().hex[:11]

        def trigger(api: str, data: list, route: str) -> None:
            http.post(url + route, json={"data": data, "fn_index": events[api], "session_hash": session,
                                         "event_data": None, "trigger_id": None}).raise_for_status()

        trigger("start", [prompt, preset, seed], "gradio_api/queue/join")
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=None) as sse:
            for line in sse.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                kind = message.get("msg")
                if kind == "process_generating" and message["output"]["data"][0]:  # the frame changed
                    arrivals.append(time.monotonic())
                elif kind in ("process_completed", "close_stream", "unexpected_error"):
                    break
                if stop.is_set() and not stopping:
                    stopping = True
                    trigger("stop_1", [], "gradio_api/run/predict")
    json.dump(arrivals, sys.stdout)
    return 0


class HostileLog(Counter):
    """What the hostile session did: counts, and when (``times``: [(time.monotonic(), what)])."""

    def __init__(self):
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self[what] += 1
        self.times.append((time.monotonic(), what))


# ---- the soak -----------------------------------------------------------------------------------------------------
def run_sessions(driver, names: list[str], seconds: float, hostile: bool):
    stop = threading.Event()
    arrivals = {name: [] for name in names}
    log = HostileLog()
    threads = [threading.Thread(target=driver.play, args=(name, PROMPTS[i % 3], stop, arrivals[name]))
               for i, name in enumerate(names)]
    if hostile:
        threads.append(threading.Thread(target=driver.hostile, args=(stop, log)))
    for t in threads:
        t.start()
    began, peak = time.monotonic(), 0
    while time.monotonic() - began < seconds:
        time.sleep(1.0)
        peak = max(peak, memory(driver.process)["rss"])
    stop.set()
    for t in threads:
        t.join()
    return arrivals, log, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--pipeline", default=None, help="pipeline folder or shipped name (default: the embedded model)")
    parser.add_argument("--http", action="store_true", help="drive a real `streamgen demo` server over HTTP")
    parser.add_argument("--control", action="store_true", help="the 4th session is an ordinary one")
    parser.add_argument("--in-process-generation", action="store_true",
                        help="--http: the server generates in its own process (`streamgen demo --in-process`), not "
                             "in worker processes (without --http, sessions always generate in this process)")
    parser.add_argument("--warm-up", type=float, default=15.0, help="seconds of 4 ordinary sessions before the baseline")
    parser.add_argument("--idle-timeout", type=float, default=10.0, help="--http: the server's idle reaper (s)")
    parser.add_argument("--timeline", action="store_true",
                        help="also report when the hostile session opened, switched and left (s from the start)")
    parser.add_argument("--browser", nargs=4, metavar=("URL", "PROMPT", "PRESET", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.browser:
        url, prompt, preset, seed = args.browser
        return browser(url, prompt, preset, int(seed))

    driver = (OverHttp if args.http else InProcess)(args)
    gc.collect()
    gc.freeze()  # as the demo server does once it serves: the libraries' objects are not scanned by every collection
    try:
        loaded = memory(driver.process)
        # The baseline is taken after 4 ordinary sessions have played and closed, so what any server keeps after
        # serving 4 sessions at once (allocator pools, worker threads, ffmpeg) is in it and only a leak shows after.
        run_sessions(driver, [f"warm-{i}" for i in range(4)], args.warm_up, hostile=False)
        driver.settle()
        before = memory(driver.process)
        names = [f"user-{i}" for i in range(4 if args.control else 3)]
        arrivals, log, peak = run_sessions(driver, names, args.seconds, hostile=not args.control)
        log_times = log.times
        driver.settle()
        after = memory(driver.process)
    finally:
        driver.close()

    chunk_s = driver.chunk_s
    gaps = {name: [b - a for a, b in zip(times, times[1:])] for name, times in arrivals.items()}
    start = min((times[0] for times in arrivals.values() if times), default=0.0)
    worst = sorted(((b - a) / chunk_s, a - start, name) for name, times in arrivals.items()
                   for a, b in zip(times, times[1:]))[-12:][::-1]
    report = {
        "mode": "http" if args.http else "in-process", "seconds": args.seconds, "control": args.control,
        "chunk_s": chunk_s,
        "frames_shown_per_s": {n: len(t) / args.seconds for n, t in arrivals.items()},
        "worst_gap_chunks": {n: max(g) / chunk_s for n, g in gaps.items() if g},
        "p99.9_gap_chunks": {n: sorted(g)[int(0.999 * (len(g) - 1))] / chunk_s for n, g in gaps.items() if g},
        "gaps_over_2_chunks": {n: sum(x > 2 * chunk_s for x in g) for n, g in gaps.items()},
        "worst_gaps": [{"chunks": round(g, 2), "at_s": round(at, 2), "session": n} for g, at, n in worst],
        "hostile": dict(log),
        "memory_loaded": loaded, "memory_before": before, "rss_peak": peak, "memory_after": after,
        "rss_after_vs_before": after["rss"] / before["rss"] - 1,
    }
    if args.timeline:
        report["hostile_timeline"] = [(round(t - start, 2), what) for t, what in log_times if t >= start]
    if args.http:
        report.update(server_log_bytes=driver.log_bytes, server_log_tail=driver.log_tail)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
