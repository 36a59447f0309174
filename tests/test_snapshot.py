"""Snapshots: a stream resumed from a snapshot goes on exactly as the uninterrupted stream, for every preset."""

from __future__ import annotations

import json
import random
import struct
import zlib

import numpy as np
import pytest
import torch

from streamgen import StreamingVideoPipeline
from streamgen.cache.presets import available_presets
from streamgen.resources import pipeline_path
from streamgen.snapshot import SnapshotError, read_manifest

CHUNKS = 12
FRAMES = 3 * CHUNKS  # enough for a preset that keeps the whole stream (global)


@pytest.fixture(scope="module")
def pipe():
    pipe = StreamingVideoPipeline.from_pretrained(pipeline_path("tiny-random"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def switches_around(k: int) -> dict[int, tuple[str, str]]:
    """After which chunk which switch comes: one before the snapshot at chunk ``k``, three after it."""
    return {1: ("a blue square drifting right", "cut"), k + 1: ("a red circle drifting left", "recall"),
            k + 2: ("a green triangle", "smooth"), k + 4: ("a blue square drifting right", "recall")}


def drive(stream, switches, snapshot_at=None, path=None) -> list[torch.Tensor]:
    """Chunks (latents and video) until CHUNKS, switching after the chunks ``switches`` names."""
    out = []
    for chunk in stream:
        out.append((chunk.latents, chunk.video))
        if chunk.index in switches:
            stream.switch(*switches[chunk.index])
        if chunk.index == snapshot_at:
            stream.snapshot(path)
        if chunk.index + 1 == CHUNKS:
            break
    return out


def start(pipe, preset):
    return pipe.stream("a red circle drifting left", cache=preset, num_frames=FRAMES,
                       generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("preset", available_presets())
def test_a_resumed_stream_equals_the_uninterrupted_one(pipe, preset, tmp_path):
    k = random.Random(zlib.crc32(preset.encode())).randint(2, CHUNKS - 6)  # a switch before and three after
    path = tmp_path / "stream.safetensors"
    whole = drive(start(pipe, preset), switches_around(k), snapshot_at=k, path=path)
    resumed = pipe.resume(path)
    assert resumed.chunks == k + 1 and resumed.latent_frame == 3 * (k + 1)
    rest = drive(resumed, switches_around(k))
    assert len(rest) == CHUNKS - k - 1
    for (latents, video), (latents_again, video_again) in zip(whole[k + 1:], rest):
        assert torch.equal(latents, latents_again) and torch.equal(video, video_again)


def test_a_causal_vae_decoder_resumes_with_its_feature_cache(tmp_path):
    """Wan's VAE decodes chunk by chunk through a causal-conv feature cache: it is part of the stream's state."""
    from streamgen.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(vae="wan", height=16, width=16)
    pipe.set_progress_bar_config(disable=True)

    def run(stream, snapshot_at=None):
        videos = []
        for chunk in stream:
            videos.append(chunk.video)
            if chunk.index == snapshot_at:
                stream.snapshot(tmp_path / "s.safetensors")
        return videos

    whole = run(pipe.stream("a red circle", num_frames=1 + 4 * 14, generator=torch.Generator().manual_seed(0)), 1)
    rest = run(pipe.resume(tmp_path / "s.safetensors"))
    assert len(whole) == 5 and len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(whole[2:], rest))


def test_the_scene_pool_and_hierarchy_are_populated_when_the_snapshot_is_taken(pipe, tmp_path):
    stream = start(pipe, "echo-forcing")
    drive(stream, switches_around(5), snapshot_at=5, path=tmp_path / "s.safetensors")
    state = json.dumps(read_manifest(tmp_path / "s.safetensors")["state"])
    assert "SceneEntry" in state and "ring_k" in state  # the scene pool's entries, the hierarchical memory's ring
    assert len(stream.engine.switch_strategy.pool.entries) >= 1 and max(stream.engine.memory.ring_frame) >= 0


def test_branches_share_the_frames_before_the_snapshot_and_follow_their_own_switch(pipe, tmp_path):
    path = tmp_path / "s.safetensors"
    k = 4
    drive(start(pipe, "longlive"), {1: ("a blue square", "cut")}, snapshot_at=k, path=path)
    for prompt in ("a green triangle", "a yellow circle"):
        branch = pipe.resume(path)
        branch.switch(prompt, mode="cut")
        ahead = [c.latents for _, c in zip(range(3), branch)]
        # The branch is the stream that took that switch there: the frames before it are the shared ones.
        uninterrupted = drive(start(pipe, "longlive"), {1: ("a blue square", "cut"), k: (prompt, "cut")})
        assert all(torch.equal(a, b[0]) for a, b in zip(ahead, uninterrupted[k + 1:]))
        if prompt == "a green triangle":
            first = ahead
    assert not torch.equal(first[0], ahead[0])


def test_snapshot_size_does_not_grow_with_stream_length(pipe, tmp_path):
    sizes = []
    for at in (2, 9):
        stream = start(pipe, "rolling")
        drive(stream, {}, snapshot_at=at, path=tmp_path / f"{at}.safetensors")
        manifest = read_manifest(tmp_path / f"{at}.safetensors")
        sizes.append(sorted(manifest["crc32"]))
        assert (tmp_path / f"{at}.safetensors").stat().st_size < 2 * stream.memory_bytes + 2**20
    assert sizes[0] == sizes[1]  # the same tensors, at any length


@pytest.fixture
def snapshot(pipe, tmp_path):
    path = tmp_path / "s.safetensors"
    drive(start(pipe, "rolling"), {1: ("a blue square", "cut")}, snapshot_at=3, path=path)
    return path


def refused(pipe, path, **kwargs) -> str:
    with pytest.raises(SnapshotError) as err:
        pipe.resume(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_truncated_snapshot_is_refused_in_one_line(pipe, snapshot):
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupted" in refused(pipe, snapshot)


def test_a_corrupted_tensor_is_refused_naming_it(pipe, snapshot):
    data = bytearray(snapshot.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + 100] ^= 0xFF  # a byte of the first tensor's data
    snapshot.write_bytes(bytes(data))
    assert "is corrupted (its checksum does not match)" in refused(pipe, snapshot)


def test_a_corrupted_manifest_or_another_file_is_refused(pipe, snapshot, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    assert "not a streamgen snapshot" in refused(pipe, other)
    assert "no such file" in refused(pipe, tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert "truncated or corrupted" in refused(pipe, junk)


def test_another_pipeline_or_preset_is_refused_naming_both(pipe, snapshot):
    assert "taken with cache preset 'rolling', not 'longlive'" in refused(pipe, snapshot, cache="longlive")
    other = StreamingVideoPipeline.from_pretrained(pipeline_path("tiny-random"))
    with torch.no_grad():
        next(other.transformer.parameters()).add_(1e-3)
    message = refused(other, snapshot)
    assert "was taken on pipeline" in message and "not on this one" in message


def test_a_failed_or_busy_stream_cannot_be_snapshotted(pipe, tmp_path):
    seen = []

    def during(pipe_, chunk):  # between chunks, inside the callback: allowed
        stream.snapshot(tmp_path / f"{chunk.index}.safetensors")
        seen.append(chunk.index)

    stream = pipe.stream("a red circle", cache="rolling", callback_on_chunk_end=during)
    next(stream), next(stream)
    assert seen == [0, 1] and (tmp_path / "1.safetensors").is_file()
    stream._generating = True  # what a half-generated chunk leaves
    with pytest.raises(SnapshotError, match="a chunk is being generated"):
        stream.snapshot(tmp_path / "x.safetensors")


# ---- the command line: generate --snapshot DIR, then --resume DIR after a crash ------------------------------------
def cli(capsys, *argv) -> tuple[int, str]:
    from streamgen.cli import main

    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def crash_at_chunk(monkeypatch, index: int):
    """The engine fails on its ``index``-th chunk (counting from 0), as a dying run would."""
    from streamgen.engine import StreamEngine

    real, calls = StreamEngine.generate_chunk, []

    def generate_chunk(self, noise):
        calls.append(1)
        if len(calls) == index + 1:
            raise RuntimeError("the machine went away")
        return real(self, noise)

    monkeypatch.setattr(StreamEngine, "generate_chunk", generate_chunk)


def test_a_crashed_run_resumes_keeping_its_frames_byte_for_byte(capsys, monkeypatch, tmp_path):
    from streamgen.video_io import read_video

    args = ["generate", "--pipeline", "tiny-random", "--prompt", "a red circle drifting left", "--frames", 30]
    assert cli(capsys, *args, "--out", tmp_path / "whole.mp4")[0] == 0
    whole = read_video(tmp_path / "whole.mp4")

    out, snap = tmp_path / "o.mp4", tmp_path / "snap"
    with monkeypatch.context() as patch:
        crash_at_chunk(patch, 7)  # snapshots after chunks 2, 4, 6: the last one is at 18 video frames
        rc, err = cli(capsys, *args, "--out", out, "--snapshot", snap, "--snapshot-every", 2)
    assert rc == 1 and "the machine went away" in err and not out.exists()
    with monkeypatch.context() as patch:  # the resumed run crashes too, after its next snapshot (at 24 frames)
        crash_at_chunk(patch, 3)
        rc, err = cli(capsys, "generate", "--resume", snap)
    assert rc == 1 and "resumed" in err and "18 video frames kept" in err
    second = read_video(tmp_path / "o.mp4.partial")  # what the resumed run wrote before it crashed
    rc, err = cli(capsys, "generate", "--resume", snap)
    assert rc == 0 and "24 video frames kept" in err, err
    video = read_video(out)
    assert video.shape == whole.shape
    # Kept as they were written, never re-encoded: the first run's 18 frames, then the first resumed run's 6.
    assert np.array_equal(video[:18], whole[:18]) and np.array_equal(video[18:24], second[:6])
    # The frames after the snapshot are the uninterrupted stream's; only the encoder's restart tells them apart.
    assert np.abs(video[24:].astype(int) - whole[24:].astype(int)).mean() < 3
    assert sorted(p.name for p in snap.iterdir()) == ["prefix-24.mp4", "stream.safetensors"]


def test_resume_refuses_a_folder_without_a_run_and_new_prompts(capsys, tmp_path, pipe):
    from streamgen.cli import main

    stream = start(pipe, "rolling")
    next(stream)
    (tmp_path / "snap").mkdir()
    stream.snapshot(tmp_path / "snap" / "stream.safetensors")  # from Python: no run record
    rc = main(["generate", "--resume", str(tmp_path / "snap")])
    assert rc == 2 and "was not written by `streamgen generate --snapshot`" in capsys.readouterr().err
    rc = main(["generate", "--resume", str(tmp_path / "snap"), "--prompt", "x"])
    assert rc == 2 and "a resumed run goes on with its snapshot's schedule" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["self-forcing", "echo-forcing"])
def test_info_counts_the_snapshot_a_stream_writes_and_it_does_not_grow(preset, capsys, tmp_path):
    from safetensors import safe_open

    from streamgen.cli import main

    sizes = []
    for frames in (200, 2000):
        assert main(["info", "--cache", preset, "--frames", str(frames)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("snapshot"))
        sizes.append(int(row.split()[1].replace(",", "")))
    assert sizes[0] == sizes[1]
    shipped = StreamingVideoPipeline.from_pretrained(pipeline_path("shapeworld-tiny"))
    shipped.set_progress_bar_config(disable=True)
    stream = shipped.stream("a red circle", cache=preset, generator=torch.Generator().manual_seed(0))
    next(stream), next(stream)
    stream.snapshot(tmp_path / "s.safetensors")
    with safe_open(tmp_path / "s.safetensors", framework="pt") as f:
        written = sum(f.get_tensor(name).nbytes for name in f.keys())
    assert written == sizes[0]


def rewrite_manifest(path, change):
    """The snapshot at ``path`` with its manifest passed through ``change`` (its tensors and CRCs intact)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        manifest = json.loads(f.metadata()["streamgen_snapshot"])
    save_file(tensors, path, metadata={"streamgen_snapshot": json.dumps(change(manifest))})


def test_a_crafted_state_cannot_build_foreign_objects_or_recurse_without_end(pipe, snapshot):
    original = snapshot.read_bytes()

    def foreign_class(manifest):  # a class reachable from a streamgen module but not streamgen's own
        manifest["state"]["fields"]["decoder"]["object"] = "streamgen.cli:subprocess.Popen"
        return manifest

    rewrite_manifest(snapshot, foreign_class)
    assert "'streamgen.cli:subprocess.Popen' is not one of streamgen's loaded classes" in refused(pipe, snapshot)

    def deep(manifest):
        nested = 1
        for _ in range(500):
            nested = [nested]
        manifest["state"]["fields"]["scenes"] = nested
        return manifest

    snapshot.write_bytes(original)
    rewrite_manifest(snapshot, deep)
    assert "nested more than 64 levels deep" in refused(pipe, snapshot)

    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, snapshot, metadata={"streamgen_snapshot": "[" * 100_000 + "]" * 100_000})
    assert "its manifest is not valid JSON" in refused(pipe, snapshot)


def test_a_mechanism_keeping_foreign_state_makes_snapshot_fail_naming_the_attribute(pipe, tmp_path):
    import numpy

    stream = start(pipe, "rolling")
    next(stream)
    stream.engine.memory.rng = numpy.random.RandomState(0)  # state a snapshot cannot carry
    with pytest.raises(SnapshotError, match=r"stream\.engine\.context\.memory\.rng: a numpy\.random\..*RandomState "
                                            r"cannot be part of a stream's state"):
        stream.snapshot(tmp_path / "s.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_batch_video_cut_short_resumes_from_its_snapshot_on_the_next_run(capsys, monkeypatch, tmp_path):
    from streamgen.batch import main as batch
    from streamgen.video_io import read_video

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle drifting left\na blue square drifting right\n")
    args = ["--prompts", prompts, "--frames", 30, "--pipeline", "tiny-random", "--cpu", "--snapshot-every", 2]
    assert batch([str(a) for a in [*args, "--out-dir", tmp_path / "whole"]]) == 0
    out = tmp_path / "videos"
    with monkeypatch.context() as patch:  # line 0 whole (10 chunks), then line 1 dies in its 6th chunk
        crash_at_chunk(patch, 15)
        with pytest.raises(RuntimeError, match="the machine went away"):
            batch([str(a) for a in [*args, "--out-dir", out]])
    assert (out / "0000.mp4").is_file() and not (out / "0001.mp4").exists()
    capsys.readouterr()
    assert batch([str(a) for a in [*args, "--out-dir", out]]) == 0
    said = capsys.readouterr().out
    assert "0000.mp4 (complete, skipped)" in said and "0001.mp4: resumed at chunk 4 (12 frames kept)" in said
    whole, video = read_video(tmp_path / "whole" / "0001.mp4"), read_video(out / "0001.mp4")
    assert video.shape == whole.shape and np.array_equal(video[:12], whole[:12])
    assert np.abs(video[12:].astype(int) - whole[12:].astype(int)).mean() < 3
    assert [json.loads(line)["frames"] for line in (out / "manifest.jsonl").read_text().splitlines()] == [30, 30]
    assert not list((out / ".snapshots").iterdir())  # a whole video's snapshot is removed


def test_the_state_codec_round_trips_every_kind_of_value_in_place():
    from collections import deque

    from streamgen.cache.scene_pool import SceneEntry
    from streamgen.snapshot import _crc
    from streamgen.stream_state import capture, restore
    from streamgen.transitions import Transition

    buffer = torch.arange(12.0).reshape(3, 4)
    state = {
        "scalar": torch.tensor(2.5), "bf16": torch.ones(3, dtype=torch.bfloat16), "flags": torch.tensor([True, False]),
        "buffer": buffer, "view_again": buffer,  # one object reached twice stays one object
        "tuple_keys": {(0, 1): [None, "Rep", 3]}, "ring": deque([1, 2], maxlen=4), "marked": {3, 1},
        "transition": Transition.CUT, "entry": SceneEntry(2, "a red circle", 9, 0), "span": slice(0, 6, None),
        "dtype": torch.float16, "nan": float("nan"),
    }
    tree, tensors = capture(state)
    assert all(isinstance(_crc(t), int) for t in tensors.values())  # 0-d, bf16 and bool tensors included
    template = {"buffer": torch.zeros(3, 4), "ring": deque(maxlen=4)}
    kept_buffer, kept_ring = template["buffer"], template["ring"]
    back = restore(json.loads(json.dumps(tree)), tensors, template, device="cpu")
    assert back is template and back["buffer"] is kept_buffer and back["view_again"] is kept_buffer  # in place
    assert torch.equal(back["buffer"], buffer) and back["ring"] is kept_ring and list(kept_ring) == [1, 2]
    assert back["scalar"].item() == 2.5 and back["bf16"].dtype == torch.bfloat16 and back["flags"].tolist() == [True, False]
    assert back["tuple_keys"] == {(0, 1): [None, "Rep", 3]} and back["marked"] == {1, 3}
    assert back["transition"] is Transition.CUT and back["entry"] == SceneEntry(2, "a red circle", 9, 0)
    assert back["span"] == slice(0, 6) and back["dtype"] is torch.float16 and back["nan"] != back["nan"]
