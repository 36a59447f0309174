"""``streamgen.geometry.estimators.TransformersDepth``: a transformers depth-estimation model in a local folder as a
camera stream's depth_estimator (a tiny random DPT built here; no weights are fetched)."""

import math

import numpy as np
import pytest
import torch

from streamgen.camera_control import CameraTrack
from streamgen.geometry.estimators import TransformersDepth
from streamgen.world.camera import CameraState, default_intrinsics, pan, render_flight, sample_map

from test_camera_control_fused import anchored_pipeline


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
                       backbone_out_indices=[0, 1, 2, 3], num_attention_heads=4, intermediate_size=37,
                       reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16)
    torch.manual_seed(0)
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():  # the last conv before the head's ReLU: a positive prediction everywhere but where it dips
        model.head.head[-2].bias.fill_(1.0)
    folder = tmp_path_factory.mktemp("dpt")
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def frame():
    world = sample_map(5)
    return world, render_flight(world, pan(CameraState(120, 110), 2.0, 0.0, 12))


def test_a_models_prediction_is_read_as_metric_depth_or_as_disparity(dpt_folder):
    _, flight = frame()
    image, camera = torch.from_numpy(flight.frames[0]), default_intrinsics()
    metric = TransformersDepth(dpt_folder)(image, camera)
    disparity = TransformersDepth(dpt_folder, output="disparity", scale=48.0)(image, camera)
    assert metric.shape == disparity.shape == (camera.height, camera.width)
    assert bool((metric > 0).all()) and bool(torch.isfinite(metric).all())
    assert torch.allclose(metric * disparity, torch.full_like(metric, 48.0), rtol=1e-5)  # depth = 48 / prediction
    assert torch.equal(TransformersDepth(dpt_folder, scale=2.0)(image, camera), metric * 2)


def test_a_stream_estimates_its_memorys_depth_with_the_model(dpt_folder):
    world, flight = frame()
    track = CameraTrack(flight.intrinsics, flight.poses, memory_frames=6,
                        depth_estimator=TransformersDepth(dpt_folder, output="disparity", scale=48.0))
    stream = anchored_pipeline().stream(world.caption, video=flight.frames[:6], camera=track, num_frames=6,
                                        generator=torch.Generator().manual_seed(0))
    video = np.concatenate([c.frames[0] for c in stream])
    assert video.shape[0] == 6 and len(stream.engine.camera.memory) == 6
    depths = [f.depth for f in stream.engine.camera.memory.frames]
    assert all(bool((d > 0).all()) for d in depths)


def test_generate_estimates_a_camera_streams_depth_with_depth_model(dpt_folder, tmp_path, capsys):
    from streamgen.cli import main
    from streamgen.video_io import read_video

    world, flight = frame()
    anchored_pipeline().save_pretrained(tmp_path / "cam")
    CameraTrack(flight.intrinsics, flight.poses).to_json(tmp_path / "cam.json")
    args = ["generate", "--prompt", world.caption, "--frames", "6", "--pipeline", str(tmp_path / "cam")]
    depth = ["--depth-model", str(dpt_folder), "--depth-output", "disparity", "--depth-scale", "48"]
    assert main(args + ["--camera", str(tmp_path / "cam.json"), *depth, "--out", str(tmp_path / "a.mp4")]) == 0
    assert len(read_video(str(tmp_path / "a.mp4"))) == 6
    assert main(args + depth + ["--out", str(tmp_path / "b.mp4")]) == 2  # no --camera
    assert main(args + ["--camera", str(tmp_path / "cam.json"), "--depth-model", str(tmp_path / "nothing"),
                        "--out", str(tmp_path / "c.mp4")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "--depth-model is for a camera stream" in err[0] and "no such model folder" in err[1]
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "c.mp4").exists()


def test_a_bad_folder_or_setting_is_refused_in_one_line(dpt_folder, tmp_path):
    (tmp_path / "pickled").mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / "pickled" / name).write_bytes((dpt_folder / name).read_bytes())
    torch.save({}, tmp_path / "pickled" / "pytorch_model.bin")  # no safetensors: never read
    for folder, message in ((tmp_path / "missing", "no such model folder"),
                            (tmp_path / "pickled", "not a depth-estimation model with safetensors weights")):
        with pytest.raises(ValueError, match=message) as err:
            TransformersDepth(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="output must be one of metric, disparity"):
        TransformersDepth(dpt_folder, output="inverse")
    for scale in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            TransformersDepth(dpt_folder, scale=scale)
    with pytest.raises(ValueError, match="expected a uint8 image 32x32x3"):
        TransformersDepth(dpt_folder)(torch.zeros(32, 32, 3), default_intrinsics())
