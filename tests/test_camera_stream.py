"""Camera-controlled streams: ``pipe.stream(prompt, camera=CameraTrack(...))``, ``stream.move(...)``, camera files,
and a pipeline folder that carries a camera encoder."""

import json

import numpy as np
import pytest
import torch

from streamgen.camera_control import CameraTrack, camera_step
from streamgen.models.camera import CameraEncoder
from streamgen.pipeline import StreamingVideoPipeline
from streamgen.tiny import build_tiny_pipeline
from streamgen.world.camera import CameraState, camera_to_world, default_intrinsics, pan


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline()
    pipe.register_modules(camera_encoder=CameraEncoder.for_transformer(pipe.transformer, hidden_dim=8).eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def track(frames=9, dx=2.0):
    return CameraTrack(default_intrinsics(), camera_to_world(pan(CameraState(64, 64), dx, 0.0, frames)))


def frames_of(pipe, camera=None, chunks=3, cache="self-forcing", move=None):
    stream = pipe.stream("a red circle", cache=cache, camera=camera, generator=torch.Generator().manual_seed(0))
    out = []
    for i, chunk in enumerate(stream):
        out.append(chunk.video)
        if move is not None and i == 0:
            stream.move(move)
        if len(out) == chunks:
            break
    return torch.cat(out, 2)


def randomize(encoder, seed=1):
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)


def test_a_fresh_camera_encoder_streams_exactly_as_no_camera(pipe):
    for cache in ("self-forcing", "rolling"):
        assert torch.equal(frames_of(pipe, None, cache=cache), frames_of(pipe, track(), cache=cache))


def test_the_camera_steers_the_stream_and_move_changes_only_what_follows():
    pipe = build_tiny_pipeline()
    encoder = CameraEncoder.for_transformer(pipe.transformer, hidden_dim=8).eval()
    randomize(encoder)
    pipe.register_modules(camera_encoder=encoder)
    plain, still = frames_of(pipe, None), frames_of(pipe, track(dx=0.0))
    panning = frames_of(pipe, track(dx=2.0))
    assert not torch.equal(plain, still) and not torch.equal(still, panning)
    assert torch.equal(panning, frames_of(pipe, track(dx=2.0)))  # deterministic
    # a 3-frame track, then the camera holds still (identity step) or moves 2 units right per frame
    short = track(frames=3)
    held, moved = frames_of(pipe, short), frames_of(pipe, short, move=camera_step(right=2.0))
    assert torch.equal(held[:, :, :3], moved[:, :, :3]) and not torch.equal(held[:, :, 3:], moved[:, :, 3:])
    # moving right 2 units per frame from the track's end is the 9-frame pan itself
    assert torch.equal(moved, panning)


def test_camera_streams_refuse_what_they_cannot_do(pipe):
    with pytest.raises(ValueError, match="camera_encoder"):
        build_tiny_pipeline().stream("x", camera=track())
    with pytest.raises(ValueError, match="intrinsics are for 16x16"):
        pipe.stream("x", camera=CameraTrack(default_intrinsics(16), track().poses))
    bad = track().poses.clone()
    bad[4, 0, 0] = 2.0
    with pytest.raises(ValueError, match="pose 4 is not a rigid"):
        CameraTrack(default_intrinsics(), bad)
    with pytest.raises(RuntimeError, match="no camera"):
        pipe.stream("x").move(camera_step(right=1.0))
    stream = pipe.stream("x", camera=track())
    next(stream)
    with pytest.raises(ValueError, match="pose 0 has a NaN"):
        stream.move(torch.full((4, 4), float("nan")))


def test_camera_files_round_trip_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "cam.json"
    track().to_json(path)
    loaded = CameraTrack.from_json(path)
    assert loaded.intrinsics == default_intrinsics() and torch.equal(loaded.poses, track().poses)
    flat = json.loads(path.read_text())
    flat["poses"] = [np.asarray(p).reshape(-1).tolist() for p in flat["poses"]]
    path.write_text(json.dumps(flat))
    assert torch.equal(CameraTrack.from_json(path).poses, track().poses)
    cases = {"{": "not JSON", '{"poses": []}': "expected an object", '{"intrinsics": {"fx": 1}, "poses": []}':
             "'fy' is missing", json.dumps({"intrinsics": json.loads(path.read_text())["intrinsics"],
                                            "poses": [[1, 2, 3]]}): "shaped"}
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            CameraTrack.from_json(path)
    with pytest.raises(ValueError, match="cannot read"):
        CameraTrack.from_json(tmp_path / "missing.json")


def test_a_pipeline_folder_carries_its_camera_encoder(tmp_path):
    pipe = build_tiny_pipeline()
    pipe.register_modules(camera_encoder=CameraEncoder.for_transformer(pipe.transformer))
    randomize(pipe.camera_encoder, seed=3)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["camera_encoder"] == ["streamgen.models.camera", "CameraEncoder"]
    loaded = StreamingVideoPipeline.from_pretrained(tmp_path / "p")
    rays = torch.randn(1, 6, 3, 32, 32)
    assert torch.equal(loaded.camera_encoder(rays), pipe.camera_encoder(rays))
    plain = build_tiny_pipeline()
    plain.save_pretrained(tmp_path / "q")
    assert StreamingVideoPipeline.from_pretrained(tmp_path / "q").camera_encoder is None


def test_generate_takes_a_camera_file(tmp_path, capsys):
    from streamgen.cli import main
    from streamgen.video_io import read_video

    pipe = build_tiny_pipeline()
    encoder = CameraEncoder.for_transformer(pipe.transformer)
    randomize(encoder, seed=4)
    pipe.register_modules(camera_encoder=encoder)
    pipe.save_pretrained(tmp_path / "cam")
    build_tiny_pipeline().save_pretrained(tmp_path / "plain")
    track().to_json(tmp_path / "cam.json")
    args = ["generate", "--prompt", "a red circle", "--frames", "6", "--camera", str(tmp_path / "cam.json")]
    assert main(args + ["--pipeline", str(tmp_path / "cam"), "--out", str(tmp_path / "a.mp4")]) == 0
    assert len(read_video(str(tmp_path / "a.mp4"))) == 6
    assert main(args + ["--pipeline", str(tmp_path / "plain"), "--out", str(tmp_path / "b.mp4")]) == 2
    (tmp_path / "bad.json").write_text('{"intrinsics": {}, "poses": []}')
    bad = ["generate", "--prompt", "x", "--pipeline", str(tmp_path / "cam"), "--camera", str(tmp_path / "bad.json")]
    assert main(bad + ["--out", str(tmp_path / "c.mp4")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 2 and "camera_encoder" in err[0] and "'fx' is missing" in err[1]


def anchored_pipeline(seed=None):
    pipe = build_tiny_pipeline()
    encoder = CameraEncoder.for_transformer(pipe.transformer, anchors=True).eval()
    if seed is not None:
        randomize(encoder, seed)
    pipe.register_modules(camera_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def world_track(frames=18, **kwargs):
    from streamgen.world.camera import ground_depth

    return CameraTrack(default_intrinsics(), camera_to_world(pan(CameraState(64, 64), 2.0, 1.0, frames)),
                       depth_fn=ground_depth, **kwargs)


def test_a_stream_remembers_its_frames_and_a_fresh_anchor_encoder_still_changes_nothing():
    pipe = anchored_pipeline()
    assert torch.equal(frames_of(pipe, None), frames_of(pipe, world_track()))
    stream = pipe.stream("a red circle", camera=world_track(memory_frames=4),
                         generator=torch.Generator().manual_seed(0))
    for _, _ in zip(range(4), stream):
        pass
    memory = stream.engine.camera.memory
    assert len(memory) == 4 and [f.time for f in memory.frames][0] == 0  # bounded, first frame kept
    assert memory.frames[-1].time == 8  # the 3 chunks before the 4th were taken in
    with pytest.raises(ValueError, match="depth_fn"):
        pipe.stream("x", camera=track())
    with pytest.raises(ValueError, match="batch_size=1"):
        pipe.stream("x", camera=world_track(), batch_size=2)
    with pytest.raises(ValueError, match="retrieval must be one of"):
        world_track(retrieval="nearest")


def test_the_anchors_of_a_true_flight_are_its_frames_where_the_memory_covers_them():
    from streamgen.world.camera import ground_depth, render_flight, sample_map

    world = sample_map(3)
    states = pan(CameraState(100, 100), 2.0, 1.0, 12)
    flight = render_flight(world, states)
    latents = torch.tensor(flight.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # pixel VAE: latents = pixels
    pipe = anchored_pipeline(seed=2)
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth)
    stream = pipe.stream(world.caption, video=flight.frames[:9], camera=track,
                         generator=torch.Generator().manual_seed(0))
    next(stream)  # prefills the 9 true frames, then generates frames 9-11
    camera = stream.engine.camera
    anchors, holes = camera.anchors(9, flight.poses[9:12])  # what frames 9-11 were generated against
    covered = holes[0] == 0
    assert covered.float().mean() > 0.8
    truth = latents[0, :, 9:12]
    assert torch.allclose(anchors[:, covered], truth[:, covered], atol=1e-5)


def test_training_a_camera_model_runs_resumes_and_exports_a_loadable_pipeline(tmp_path):
    from streamgen.train.camera import CameraTrainConfig, CameraTrainer, clip_anchors, camera_clip

    config = CameraTrainConfig(clip_frames=9, batch_size=2, steps=2, save_every=2, threads=1, warmup=1)
    frames, poses, caption = camera_clip(5, config)
    video = torch.tensor(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    anchors, holes = clip_anchors(video, poses, default_intrinsics(), 3, 4)
    assert holes[:, :3].eq(1).all() and holes[:, 3:].eq(0).float().mean() > 0.5  # chunk 0 has no memory
    covered = holes[0] == 0
    assert torch.equal(anchors[:, covered], video[:, covered])  # pixel-aligned pans: exact
    build_tiny_pipeline().save_pretrained(tmp_path / "tiny")
    config = CameraTrainConfig(init=str(tmp_path / "tiny"), out=str(tmp_path / "run"), clip_frames=9,
                               batch_size=2, steps=2, save_every=2, threads=1, warmup=1)
    CameraTrainer(config).run()
    with pytest.raises(ValueError, match="--resume"):
        CameraTrainer(config)
    resumed = CameraTrainer(CameraTrainConfig(**{**config.__dict__, "steps": 3}), resume=True)
    assert resumed.step == 2
    resumed.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 3]
    pipe = StreamingVideoPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.camera_encoder is not None and pipe.camera_encoder.takes_anchors
