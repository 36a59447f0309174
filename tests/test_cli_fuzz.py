"""Fuzzing the command line: random combinations of the documented flags of ``generate`` and ``info`` with hostile
values (negative, huge, NaN, wrong types, folders, devices, pickles, missing files) never end in a traceback.

Each case is one in-process run of ``streamgen`` on tiny-random (loaded once per dtype) under a time limit: a case
whose arguments are all valid may generate for long, and is stopped when the limit is reached (that is a pass).
Hypothesis is derandomized, so every CI run tries the same 2,000 cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamgen.pipeline as pipeline_module
from streamgen.cli import main
from streamgen.resources import pipeline_path

TINY = pipeline_path("tiny-random")
CASES = 2000
TIME_LIMIT_S = 0.5


class CaseTimeLimit(BaseException):
    """The case ran past its time limit (it was valid and kept generating)."""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Hostile values by flag; files live in one temp folder."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "text.txt").write_text("not an image\n")
    (tmp / "folder").mkdir()
    (tmp / "bad.yaml").write_text("segments:\n  - prompt: a red circle\n    frames: -3\n")
    (tmp / "ok.yaml").write_text("segments:\n  - {prompt: a red circle, frames: 3}\n  - {prompt: a blue square}\n")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 4)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp / 'ran'}",)

    torch.save({"x": Payload()}, tmp / "evil.pt")
    files = [tmp / "text.txt", tmp / "folder", tmp / "missing.png", tmp / "evil.pt", tmp / "binary.bin", "/dev/null", ""]
    out = [tmp / "out.mp4", tmp / "folder", tmp / "text.txt" / "x.mp4", "/dev/full", "", tmp / "new" / "o.mp4",
           "/proc/streamgen.mp4"]
    numbers = ["1", "0", "-1", "3", "abc", "1e3", "", "9" * 30]
    sizes = ["32", "0", "-32", "33", "65536", "x", "64", "2"]
    return tmp, {
        "--pipeline": [str(TINY), "tiny-random", "", "/nonexistent", "/dev/null", str(tmp / "folder"), "wan2.1-1.3b"],
        "--prompt": ["a red circle", "", "   ", "x" * 2001, "\x00\x01", "ünïcødé 🎥", "--frames", "a\nb"],
        "--prompts": [tmp / "bad.yaml", tmp / "ok.yaml", tmp / "binary.bin", tmp / "folder", "/nonexistent.yaml",
                      "/dev/null", ""],
        "--frames": numbers + ["10000000", "7", "48"],
        "--height": sizes, "--width": sizes,
        "--cache": ["rolling", "global", "echo-forcing", "nope", "/etc/passwd", "", str(tmp / "bad.yaml")],
        "--switch": ["none", "recache", "bogus", ""],
        "--steps": numbers + ["100000"],
        "--guidance-scale": ["1", "0", "-1", "nan", "inf", "1e308", "3", "x"],
        "--seed": ["0", "-1", str(2**64), "abc", str(-(2**63) - 1)],
        "--init-image": files, "--init-video": files,
        "--index": ["0", "-1", "5", "x"],
        "--switch-frame-indices": ["1,2", "a", "", "-1", "1,,2"],
        "--device": ["cpu", "cuda", "cuda:7", "meta", "", "mps", "cpu:0"],
        "--dtype": ["fp32", "bf16", "fp8"],
        "--out": out,
        "--threads": ["1", "0", "-2", "x"],
    }


GENERATE = ["--pipeline", "--prompt", "--prompts", "--frames", "--height", "--width", "--cache", "--switch",
            "--steps", "--guidance-scale", "--seed", "--init-image", "--init-video", "--index",
            "--switch-frame-indices", "--device", "--dtype", "--out"]
INFO = ["--pipeline", "--frames", "--cache", "--height", "--width"]


@pytest.fixture(scope="module")
def cached_loads():
    """Loading a pipeline folder happens once per (folder, dtype); everything before and after it runs as usual."""
    real = pipeline_module.load_pipeline
    cache = {}

    def load(folder, device="cpu", dtype=None):
        key = (str(folder), dtype)
        if key not in cache:
            cache[key] = real(folder, device, dtype)
        return cache[key]

    pipeline_module.load_pipeline = load
    yield
    pipeline_module.load_pipeline = real


def _time_limit(signum, frame):
    raise CaseTimeLimit


@st.composite
def argv(draw, values):
    command = draw(st.sampled_from(["generate", "info"]))
    flags = draw(st.lists(st.sampled_from(GENERATE if command == "generate" else INFO), unique=True, max_size=7))
    if command == "generate" and "--prompt" not in flags and "--prompts" not in flags and draw(st.booleans()):
        flags.append("--prompt")  # most cases get past the prompt check
    args = [command]
    if draw(st.integers(0, 9)) == 0:
        args = ["--threads", draw(st.sampled_from(values["--threads"]))] + args
    for flag in flags:
        args += [flag, str(draw(st.sampled_from(values[flag])))]
    if command == "generate" and "--frames" not in flags:
        args += ["--frames", "6"]  # the default 48 frames would spend the time limit in valid cases
    return args


def test_no_argument_vector_ends_in_a_traceback(hostile, cached_loads):
    tmp, values = hostile
    seen = {"cases": 0, "timed_out": 0}
    previous = signal.signal(signal.SIGALRM, _time_limit)

    @settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(argv(values))
    def case(args):
        out, err = io.StringIO(), io.StringIO()
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(args)
                except SystemExit as exit_:  # argparse's usage error, or a command's one-line message
                    rc = exit_.code
        except CaseTimeLimit:
            seen["timed_out"] += 1
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seen["cases"] += 1
        assert "Traceback" not in err.getvalue(), (args, err.getvalue())
        assert rc in (0, 1, 2, None) or isinstance(rc, str), (args, rc)
        if isinstance(rc, str) or rc:  # a failure says what in one line
            message = rc if isinstance(rc, str) else err.getvalue().strip().splitlines()[-1]
            assert "\n" not in message.strip() and message, (args, err.getvalue())

    try:
        case()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen["cases"] + seen["timed_out"] >= CASES
    assert seen["timed_out"] < CASES // 20, seen  # most cases fail fast, as hostile input should
    assert not (tmp / "ran").exists()
