"""Mp4StreamWriter: round trip, input validation and crash safety (SIGKILL / Ctrl-C of the writing process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from streamgen.video_io import Mp4StreamWriter, read_video

REPO_ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4  # frames per write() in these tests
# Deadlines hold on a loaded 2-core machine (a child's imports alone can take seconds there); a passing test never
# waits for them: each wait ends on the event it waits for (a line, an exit, frames on disk).
DEADLINE = 120.0


def make_frames(start: int, count: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Deterministic, smooth (codec-friendly) RGB frames; frame ``t`` differs visibly from frame ``t + 1``."""
    t = np.arange(start, start + count, dtype=np.float64)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = 128 + 100 * np.sin(x / 16 + t / 3)
    g = 128 + 100 * np.cos(y / 16 - t / 4)
    b = 128 + 80 * np.sin((x + y) / 16 + t / 5)
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1).round().astype(np.uint8)


def mean_abs_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def finished_cleanly(path: Path) -> bool:
    """A fragmented MP4 that ffmpeg finished (rather than was killed while writing) ends with an 'mfro' box."""
    data = path.read_bytes()
    return len(data) > 16 and data[-12:-8] == b"mfro"


# ---------------------------------------------------------------------------------------------------------------
# round trip and validation
# ---------------------------------------------------------------------------------------------------------------


def test_roundtrip_chunks(tmp_path):
    path = tmp_path / "sub" / "video.mp4"  # parent directory is created
    reference = make_frames(0, 3 * CHUNK)
    with Mp4StreamWriter(path, fps=16, crf=10) as writer:
        assert not path.exists()  # ffmpeg starts at the first write
        for i in range(3):
            writer.write(reference[i * CHUNK : (i + 1) * CHUNK])
        assert writer.frames_written == 3 * CHUNK and writer.frame_size == (32, 32)
    frames = read_video(path)
    assert frames.shape == reference.shape
    # 4:2:0 chroma subsampling dominates the error at 32x32; about 2 grey levels on average at crf 10
    assert mean_abs_err(frames, reference) < 3.0
    # frames are in order: each decoded frame is closest to the frame written at that position
    errors = np.abs(frames[:, None].astype(np.int16) - reference[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(len(reference))).all()
    assert finished_cleanly(path)


def test_odd_size_yuv420p_is_padded_yuv444p_is_exact(tmp_path):
    reference = make_frames(0, CHUNK, height=33, width=31)
    with Mp4StreamWriter(tmp_path / "a.mp4", fps=8, crf=10) as writer:
        writer.write(reference)
    padded = read_video(tmp_path / "a.mp4")
    assert padded.shape == (CHUNK, 34, 32, 3)
    assert mean_abs_err(padded[:, :33, :31], reference) < 3.0

    with Mp4StreamWriter(tmp_path / "b.mp4", fps=8, crf=10, pix_fmt="yuv444p") as writer:
        writer.write(reference)
    exact = read_video(tmp_path / "b.mp4")
    assert exact.shape == reference.shape
    assert mean_abs_err(exact, reference) < 2.0


def test_validation_errors(tmp_path):
    writer = Mp4StreamWriter(tmp_path / "v.mp4", fps=8)
    frames = make_frames(0, 2)
    with pytest.raises(ValueError, match="dtype uint8"):
        writer.write(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\].*\(32, 32, 3\)"):
        writer.write(frames[0])
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\].*\(2, 32, 32, 4\)"):
        writer.write(np.concatenate([frames, frames[..., :1]], axis=-1))
    with pytest.raises(ValueError, match="numpy.ndarray"):
        writer.write(frames.tolist())
    writer.write(frames)
    with pytest.raises(ValueError, match="frame size changed from HxW=32x32 to 16x32"):
        writer.write(frames[:, :16])
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        writer.write(frames)
    assert read_video(tmp_path / "v.mp4").shape == (2, 32, 32, 3)

    with pytest.raises(ValueError, match="fps"):
        Mp4StreamWriter(tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError, match="pix_fmt"):
        Mp4StreamWriter(tmp_path / "x.mp4", fps=8, pix_fmt="rgb24")


def test_no_frames_no_file_and_exception_in_body_keeps_frames(tmp_path):
    with Mp4StreamWriter(tmp_path / "empty.mp4", fps=8):
        pass
    assert not (tmp_path / "empty.mp4").exists()

    with pytest.raises(KeyError):
        with Mp4StreamWriter(tmp_path / "partial.mp4", fps=8, crf=10) as writer:
            writer.write(make_frames(0, CHUNK))
            raise KeyError("generation failed")
    assert read_video(tmp_path / "partial.mp4").shape[0] == CHUNK


def test_ffmpeg_failure_is_reported(tmp_path):
    writer = Mp4StreamWriter(tmp_path / "bad.mp4", fps=8, preset="no-such-preset")
    with pytest.raises(RuntimeError, match="ffmpeg"):
        # ffmpeg may die before or after our bytes fit into the pipe: either write() or close() must raise
        for _ in range(50):
            writer.write(make_frames(0, CHUNK))
            time.sleep(0.02)
        writer.close()


def _frames_on_disk(path: Path) -> int:
    """Frames readable from a copy of a file that may be in the middle of being written."""
    if not path.exists():  # ffmpeg is still starting up
        return 0
    snapshot = path.with_name("snapshot.mp4")
    snapshot.write_bytes(path.read_bytes())
    try:
        return read_video(snapshot).shape[0]
    except Exception:  # header only, nothing decodable yet
        return 0


def test_file_is_playable_while_writing(tmp_path):
    """Frames reach the file as they are written, not at close(): what protects us if ffmpeg dies too.

    The muxer closes a frame's fragment when the next frame arrives, so the newest frame may still be pending.
    """
    path = tmp_path / "live.mp4"
    with Mp4StreamWriter(path, fps=8, crf=10) as writer:
        for i in range(3):
            writer.write(make_frames(i * CHUNK, CHUNK))
            expected = (i + 1) * CHUNK - 1
            deadline = time.monotonic() + DEADLINE
            while (n := _frames_on_disk(path)) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert expected <= n <= (i + 1) * CHUNK


def test_truncated_file_still_readable(tmp_path):
    """What survives if ffmpeg itself is killed: the file cut at an arbitrary byte still plays up to the cut."""
    path = tmp_path / "full.mp4"
    reference = make_frames(0, 3 * CHUNK)
    with Mp4StreamWriter(path, fps=8, crf=10) as writer:
        writer.write(reference)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = read_video(cut)
    assert 2 <= frames.shape[0] < len(reference)
    assert mean_abs_err(frames, reference[: len(frames)]) < 3.0


# ---------------------------------------------------------------------------------------------------------------
# crash safety
# ---------------------------------------------------------------------------------------------------------------

# The writing process: writes chunk after chunk forever, announcing ffmpeg's pid and every returned write().
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    # Ctrl-C raises KeyboardInterrupt, as in a program started from a terminal, even when pytest itself runs with
    # SIGINT ignored (a background job of a script, nohup ... &), which this child would inherit and so never stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {repo!r})
    from tests.test_video_writer import CHUNK, make_frames
    from streamgen.video_io import Mp4StreamWriter

    with Mp4StreamWriter({path!r}, fps=8, crf=10) as writer:
        i = 0
        while True:
            writer.write(make_frames(i * CHUNK, CHUNK))
            i += 1
            if i == 1:
                print("ffmpeg", writer.pid, flush=True)
            print("wrote", i, flush=True)
            time.sleep({pause})
    """
)


def _spawn_writer(path: Path, pause: float) -> subprocess.Popen:
    code = CHILD.format(repo=str(REPO_ROOT), path=str(path), pause=pause)
    # Own session, like a separate program: a signal to its process group does not reach pytest.
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO_ROOT
    )


def _read_until(proc: subprocess.Popen, wanted: str, timeout: float = DEADLINE) -> tuple[int, int]:
    """Read the child's lines until ``wanted``; return (ffmpeg pid, chunks written)."""
    deadline = time.monotonic() + timeout
    ffmpeg_pid, written = None, 0
    for line in proc.stdout:
        key, value = line.split()
        if key == "ffmpeg":
            ffmpeg_pid = int(value)
        else:
            written = int(value)
        if line.strip() == wanted or time.monotonic() > deadline:
            break
    assert ffmpeg_pid is not None and line.strip() == wanted, f"child did not print {wanted!r}"
    return ffmpeg_pid, written


def _wait_gone(pid: int, timeout: float = DEADLINE) -> None:
    """Wait for a process that is not our child (ffmpeg, orphaned) to exit. Zombies count as exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        except OSError:  # no /proc: fall back to signal 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    raise AssertionError(f"ffmpeg (pid {pid}) still running {timeout} s after its writer died")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigkill_keeps_every_written_frame(tmp_path):
    path = tmp_path / "killed.mp4"
    proc = _spawn_writer(path, pause=0.05)  # keeps writing, so the kill may land in the middle of a write()
    try:
        ffmpeg_pid, _ = _read_until(proc, "wrote 3")
        # SIGKILL to the writer's whole process group (as a job runner or `kill -9 -PGID` would): ffmpeg, in its own
        # session, must survive it and then finish the file by itself.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Every "wrote N" line the child managed to print before dying is still in the pipe.
    written = max([int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("wrote")] + [3])
    proc.stdout.close()

    _wait_gone(ffmpeg_pid)  # ffmpeg saw EOF and finished the file on its own
    assert finished_cleanly(path)
    frames = read_video(path)
    assert written * CHUNK <= frames.shape[0] <= (written + 1) * CHUNK  # at most one more (partially sent) chunk
    reference = make_frames(0, frames.shape[0])
    assert mean_abs_err(frames, reference) < 3.0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_does_not_reach_ffmpeg(tmp_path):
    """SIGINT to the writer's process group (what Ctrl-C in a terminal does) is handled by Python only."""
    path = tmp_path / "interrupted.mp4"
    proc = _spawn_writer(path, pause=0.05)
    try:
        ffmpeg_pid, _ = _read_until(proc, "wrote 2")
        assert os.getpgid(ffmpeg_pid) != os.getpgid(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=DEADLINE)  # KeyboardInterrupt -> writer.close() -> traceback, non-zero exit
    finally:
        if proc.poll() is None:
            proc.kill()
    written = max([int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("wrote")] + [2])
    proc.stdout.close()
    _wait_gone(ffmpeg_pid)
    assert finished_cleanly(path)
    assert written * CHUNK <= read_video(path).shape[0] <= (written + 1) * CHUNK
