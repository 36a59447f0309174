"""AnchorWeave's weaving controller: zero-initialised injections, the pose-confidence weighting over visible anchors,
anchor-order independence, its inputs from a geometric memory, streams through the controller and its trainer."""

import json

import pytest
import torch

from streamgen.camera_control import CameraTrack
from streamgen.geometry import GeometricMemory
from streamgen.loading import open_pipeline
from streamgen.models.anchor_weave import AnchorWeaveController, anchor_inputs, pose_features, token_visibility
from streamgen.world.camera import CameraState, default_intrinsics, ground_depth, map_seed, pan, render_flight, sample_map


@pytest.fixture(scope="module")
def cam_pipe():
    return open_pipeline("shapeworld-cam-tiny")


def _inputs(b=1, k=3, f=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(latents=torch.randn(b, 3, f, h, w, generator=g), timestep=500.0,
                anchors=torch.randn(b, k, 3, f, h, w, generator=g),
                holes=(torch.rand(b, k, 1, f, h, w, generator=g) > 0.6).float(),
                anchor_poses=torch.randn(b, k, f, 12, generator=g), target_poses=torch.randn(b, f, 12, generator=g),
                text_states=torch.randn(b, 5, 384, generator=g))


def _randomised(controller: AnchorWeaveController) -> AnchorWeaveController:
    with torch.no_grad():
        for layer in (controller.inject, controller.camera_inject):
            layer.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return controller


def test_a_fresh_controller_leaves_the_base_exactly_as_it_was(cam_pipe):
    base = cam_pipe.transformer
    controller = AnchorWeaveController.for_transformer(base)
    x = _inputs()
    residuals = controller(**x)
    assert residuals.shape == (base.config.num_layers, 1, 3 * 16, 256)
    assert residuals.abs().max() == 0
    rotary = base.rotary(torch.arange(3), torch.arange(3), 32, 32)
    text = base.encode_prompt_kv(x["text_states"])
    with torch.no_grad():
        plain = base.forward_chunk(x["latents"], 500.0, text, None, rotary)
        woven = base.forward_chunk(x["latents"], 500.0, text, None, rotary, block_residuals=residuals)
    assert torch.equal(plain, woven)
    with pytest.raises(ValueError, match="block_residuals must be"):
        base.forward_chunk(x["latents"], 500.0, text, None, rotary, block_residuals=residuals[:2])


def test_the_anchor_order_does_not_matter_and_holes_pool_to_tokens_at_one_half(cam_pipe):
    controller = _randomised(AnchorWeaveController.for_transformer(cam_pipe.transformer)).eval()
    x = _inputs()
    x["holes"][:, 1] = 1.0  # anchor 1 covers nothing
    with torch.no_grad():
        out = controller(**x)
        order = torch.tensor([2, 0, 1])  # every anchor segment has the same RoPE: a permutation changes nothing
        permuted = dict(x, anchors=x["anchors"][:, order], holes=x["holes"][:, order],
                        anchor_poses=x["anchor_poses"][:, order])
        assert torch.allclose(controller(**permuted), out, atol=1e-5)
    visibility = token_visibility(x["holes"], (1, 8, 8))
    assert visibility.shape == (1, 3, 48) and visibility[0, 1].sum() == 0
    # a token is a hole when more than half of its pixels are
    holes = torch.zeros(1, 1, 1, 8, 8)
    holes[..., :4, :] = 1.0
    assert token_visibility(holes, (1, 8, 8)).item() == 1.0
    holes[..., 4, 0] = 1.0
    assert token_visibility(holes, (1, 8, 8)).item() == 0.0


def test_the_pose_confidence_weights_mix_the_visible_anchors_and_sum_to_one(cam_pipe):
    controller = _randomised(AnchorWeaveController.for_transformer(cam_pipe.transformer)).eval()
    seen = {}
    controller.inject.register_forward_hook(lambda module, args, out: seen.__setitem__("mixed", args[0]))
    x = _inputs(k=2)
    x["holes"].zero_()
    with torch.no_grad():
        controller(**x)
        # the same with one anchor made invisible everywhere: the mixture is then exactly the other's state
        both = seen["mixed"].clone()
        hidden = dict(x, holes=x["holes"].clone())
        hidden["holes"][:, 1] = 1.0
        controller(**hidden)
        only_first = seen["mixed"]
    c = controller.confidence(x["anchor_poses"]).squeeze(-1)  # [1, 2, 3]
    assert ((c > 0) & (c < 1)).all()
    assert not torch.allclose(both, only_first)
    # with no visible anchor at all the mixture is zero (max(sum, 1e-8) in the denominator), not NaN
    none_visible = dict(x, holes=torch.ones_like(x["holes"]))
    with torch.no_grad():
        controller(**none_visible)
    assert torch.isfinite(seen["mixed"]).all() and seen["mixed"].abs().max() == 0


def test_anchor_inputs_render_memory_frames_with_their_relative_poses():
    camera = default_intrinsics().scaled(1.0)
    world = sample_map(map_seed("heldout", 1))
    flight = render_flight(world, pan(CameraState(120, 120), 2, 0, 6), start_time=0.0)
    memory = GeometricMemory(8)
    video = torch.tensor(flight.frames).float() / 127.5 - 1
    for f in range(3):
        memory.add(video[f], flight.poses[f], camera, f, depth=ground_depth(flight.poses[f], camera))
    anchors, holes, poses = anchor_inputs(memory, [0, 2], flight.poses[2:5], camera, k=4, translation_unit=8.0)
    assert anchors.shape == (4, 3, 3, 32, 32) and holes.shape == (4, 1, 3, 32, 32) and poses.shape == (4, 3, 12)
    # frame 2 seen from its own pose: everything covered, its own pixels, the identity pose
    assert holes[1, 0, 0].sum() == 0
    assert torch.allclose(anchors[1, :, 0], video[2].permute(2, 0, 1), atol=1e-5)
    assert torch.allclose(poses[1, 0], pose_features(torch.eye(4), 8.0))
    # frame 0 seen from 2 and 4 frames on: shifted by 4 and 8 units, a quarter and a half of the unit of 8
    assert poses[0, 0, 3].item() == pytest.approx(-4 / 8) and poses[0, 2, 3].item() == pytest.approx(-8 / 8)
    # the empty slots are all holes at the identity pose
    assert holes[2:].min() == 1 and torch.equal(poses[3, 0], pose_features(torch.eye(4), 1.0))


def _track(weave, frames=15, retrieval="coverage"):
    world = sample_map(map_seed("heldout", 2))
    flight = render_flight(world, pan(CameraState(100, 100), 1, 0, frames), start_time=0.0)
    return world, flight, CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, memory_frames=6,
                                      weave=weave, retrieval=retrieval)


def test_a_stream_weaves_its_memory_through_the_controller_when_asked(cam_pipe):
    world, flight, track = _track("controller")
    stream = cam_pipe.stream(world.caption, video=flight.frames[:3], camera=track, num_frames=12,
                             generator=torch.Generator().manual_seed(0))
    frames = [c.frames for c in stream]
    camera = stream.engine.camera
    assert camera.controller is cam_pipe.controller and camera.weave_inputs is not None
    assert len(camera.memory) == 6 and len(camera._weave) <= camera.keep
    # the encoder got rays and an empty memory, as the controller was trained
    world2, flight2, encoder_track = _track("encoder")
    other = [c.frames for c in cam_pipe.stream(world.caption, video=flight.frames[:3], camera=encoder_track,
                                               num_frames=12, generator=torch.Generator().manual_seed(0))]
    assert any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(frames, other))


def test_weave_options_are_checked_in_one_line(cam_pipe):
    with pytest.raises(ValueError, match="weave must be one of encoder, controller"):
        _track("sideways")
    with pytest.raises(ValueError, match="one by one"):
        _track("controller", retrieval="fused")
    tiny = open_pipeline("shapeworld-tiny")
    world, flight, track = _track("controller")
    with pytest.raises(ValueError, match="weaving controller"):
        tiny.stream(world.caption, camera=track, num_frames=6)


def test_the_weave_trainer_trains_only_the_controller_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from streamgen.train.weave import WeaveTrainConfig, WeaveTrainer, map_captions

    def config(out):
        return WeaveTrainConfig(out=str(out), steps=3, batch_size=1, clip_frames=6, reuse=2, save_every=100,
                                threads=1, bf16=False)

    whole = WeaveTrainer(config(tmp_path / "whole"))
    before = {k: v.clone() for k, v in whole.flow.base.state_dict().items()}
    whole.run()
    assert all(torch.equal(before[k], v) for k, v in whole.flow.base.state_dict().items())
    part = WeaveTrainer(config(tmp_path / "part"))
    part.run(until=1)
    resumed = WeaveTrainer(config(tmp_path / "part"), resume=True)
    assert resumed.step == 1
    resumed.run()
    for key, value in whole.controller.state_dict().items():
        assert torch.allclose(resumed.controller.state_dict()[key], value, atol=1e-6), key
    exported = open_pipeline(str(tmp_path / "whole" / "pipeline"))
    assert type(exported.controller).__name__ == "AnchorWeaveController"
    saved = load_file(str(tmp_path / "whole" / "pipeline" / "controller" / "diffusion_pytorch_model.safetensors"))
    assert saved["inject.weight"].abs().max() > 0  # it learned something away from zero
    with pytest.raises(ValueError, match="--resume"):
        WeaveTrainer(config(tmp_path / "whole"))
    captions = map_captions()
    assert captions[0] == "" and len(set(captions)) == len(captions)
    assert {sample_map(map_seed("train", i)).caption for i in range(20)} <= set(captions)
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["reuse"] == 2


def test_streamgen_train_runs_the_weave_trainer_from_a_config(tmp_path, capsys):
    from streamgen.cli import main
    from streamgen.train.cli import load_trainer_config

    name, shipped = load_trainer_config("configs/train/shapeworld-cam-weave.yaml")
    assert name == "weave" and shipped.init == "shapeworld-cam-tiny" and shipped.anchor_k == 4
    config = tmp_path / "weave.yaml"
    config.write_text("trainer: weave\nsteps: 1\nbatch_size: 1\nclip_frames: 6\nthreads: 1\nbf16: false\n"
                      "device: cpu\nworkers: 0\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "pipeline" / "controller" / "config.json").is_file()
    config.write_text("trainer: weave\nsteps: 1\nretrieval: sideways\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    assert "retrieval must be one of coverage, greedy, fov, recency, got 'sideways'" in capsys.readouterr().err


def test_the_revisit_bench_weaves_through_the_controller_and_times_the_plain_model_beside_it(cam_pipe):
    from streamgen.bench.revisit import PLAIN_MODEL, memory_speed, run_model_revisit

    rows = run_model_revisit(cam_pipe, trials=1, memories=("coverage",), flights=("straight",), weave="controller")
    assert len(rows) == 1 and rows[0].memory == "coverage" and 0 <= rows[0].objects <= 1
    fps = memory_speed(cam_pipe, memories=("none",), frames=30, rounds=1, weave="controller")
    assert set(fps) == {"none", PLAIN_MODEL} and all(v[0] > 0 for v in fps.values())


def test_two_cpu_processes_train_the_controller_one_process_trains_and_only_rank_0_writes(tmp_path):
    """torchrun, gloo: batch 2 split 1 + 1 (each rank renders and trains its clip, its rows of every draw); DDP's
    average over the two is the 1-process step, to 1e-5 in fp32."""
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from streamgen.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    from test_distributed import TOLERANCE, log, torchrun, writes

    config = tmp_path / "weave.yaml"
    config.write_text("trainer: weave\nsteps: 2\nbatch_size: 2\nclip_frames: 6\nreuse: 1\nthreads: 1\nbf16: false\n"
                      "device: cpu\nworkers: 0\nsave_every: 100\nlog_every: 1\n")
    two, one, audit = tmp_path / "two", tmp_path / "one", tmp_path / "audit"
    result = torchrun(audit, "train", "--config", str(config), "--out", str(two))
    assert result.stdout.count("trained to step 2") == 1
    written = writes(audit, two)
    assert set(written) == {0, 1} and written[1] == []
    assert "checkpoint/state.safetensors" in written[0] and any(p.startswith("pipeline/controller") for p in written[0])
    assert main(["--threads", "1", "train", "--config", str(config), "--out", str(one)]) == 0
    a = load_file(str(two / "checkpoint" / "state.safetensors"))
    b = load_file(str(one / "checkpoint" / "state.safetensors"))
    keys = [k for k in b if k.startswith("model/")]
    assert keys and max(float((a[k] - b[k]).abs().max()) for k in keys) <= TOLERANCE
    assert float(b["model/inject.weight"].abs().max()) > 100 * TOLERANCE  # zero-initialised: it did train
    assert [r["step"] for r in log(two)] == [1, 2] and all(r["processes"] == 2 for r in log(two))
    assert all(abs(x["loss"] - y["loss"]) <= TOLERANCE * max(1.0, abs(y["loss"])) for x, y in zip(log(two), log(one)))


def test_controller_every_runs_the_controller_on_every_nth_pass_and_reuses_it_between(cam_pipe):
    def calls(every: int) -> tuple[int, int]:
        seen = []
        handle = cam_pipe.controller.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            world, flight, track = _track("controller")
            track.controller_every = every
            stream = cam_pipe.stream(world.caption, camera=track, num_frames=6,
                                     generator=torch.Generator().manual_seed(0))
            list(stream)
        finally:
            handle.remove()
        return len(seen), stream.engine.sampler.num_inference_steps + 1  # denoising passes + the clean pass

    every_pass, passes = calls(1)
    assert every_pass == 2 * passes  # two chunks
    assert calls(3)[0] == 2 * -(-passes // 3)
    world, flight, _ = _track("controller")
    with pytest.raises(ValueError, match="controller_every must be 1..1000"):
        CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, controller_every=0)
