"""The camera trainer through ``streamgen train --config`` (a ``trainer: camera`` YAML): the shipped recipe parses,
unknown keys are refused in one line, a run trains and exports a pipeline with a camera encoder, resumes to the
uninterrupted run's weights, and 2 CPU processes (gloo) train what 1 process trains, only rank 0 writing."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from streamgen.cli import main
from streamgen.train.cli import TRAINERS, TrainerEntry, load_trainer_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "train" / "shapeworld-cam-tiny.yaml"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from streamgen.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("init") / "tiny"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


def tiny_config(folder: Path, **over) -> Path:
    """A seconds-long camera run: the shipped recipe at a toy size (batch 1, 6-frame clips), fp32 on the CPU."""
    values = {"extends": str(SHIPPED), "clip_frames": 6, "batch_size": 1, "steps": 4, "save_every": 2, "log_every": 1,
              "warmup": 1, "threads": 1, "bf16": False, "device": "cpu", **over}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cam.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path


def state(out: Path) -> dict:
    from streamgen.train.checkpoint import load_state

    s = load_state(out / "checkpoint" / "state.safetensors")
    return {"step": s["step"], "processes": s.get("processes"), "generator": s["generator"],
            **{f"model/{part}/{k}": v for part in ("transformer", "encoder") for k, v in s["model"][part].items()},
            **{f"ema/{part}/{k}": v for part in ("transformer", "encoder") for k, v in s["ema"][part]["shadow"].items()}}


def weights(s: dict) -> dict:
    return {k: v for k, v in s.items() if k.startswith(("model/", "ema/"))}


def max_difference(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_shipped_config_is_the_shipped_models_recipe():
    name, config = load_trainer_config(SHIPPED)
    assert name == "camera"
    recipe = json.loads((REPO / "streamgen/pipelines/shapeworld-cam-tiny/training/config.json").read_text())
    ours = dataclasses.asdict(config)
    differs = {k for k, v in recipe.items() if (list(ours[k]) if isinstance(ours[k], tuple) else ours[k]) != v}
    assert differs == {"out", "steps"}  # the run's folder, and its planned 8,000 steps: it was stopped at 2,800
    shipped_log = (REPO / "streamgen/pipelines/shapeworld-cam-tiny/training/log.jsonl").read_text().splitlines()
    assert config.steps == json.loads(shipped_log[-1])["step"] == 2800
    assert config.speeds == (-2, -1, 0, 1, 2) and config.device is None


def test_a_config_without_trainer_is_the_main_trainers():
    from streamgen.train import load_config

    name, config = load_trainer_config(REPO / "configs" / "train" / "shapeworld-tiny.yaml")
    assert name is None and config == load_config(REPO / "configs" / "train" / "shapeworld-tiny.yaml")


def test_unknown_keys_and_trainers_are_refused_in_one_line_naming_them_and_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: camera\nsteps: 3\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "learning_rate" in err and str(bad) in err
    bad.write_text("trainer: kamera\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'kamera'" in err and "camera" in err and str(bad) in err
    bad.write_text("trainer: camera\nclip_frames: 7\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "multiple of chunk_frames" in capsys.readouterr().err


@dataclass
class EchoConfig:
    init: str = "x"
    out: str = "runs/echo"
    steps: int = 1
    threads: int = 1
    device: str | None = "cpu"
    word: str = ""

    def validate(self):
        return self


def echo_train(config: EchoConfig, resume: bool = False, init: str | None = None) -> Path:
    Path(config.out).mkdir(parents=True, exist_ok=True)
    (Path(config.out) / "seen.json").write_text(json.dumps({**dataclasses.asdict(config), "resume": resume,
                                                            "init_flag": init}))
    return Path(config.out)


def test_another_trainer_is_one_registry_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TRAINERS, "echo", TrainerEntry(__name__, "EchoConfig", "echo_train"))
    (tmp_path / "echo.yaml").write_text("trainer: echo\nword: hello\n")
    out = tmp_path / "out"
    assert main(["--threads", "3", "train", "--config", str(tmp_path / "echo.yaml"), "--out", str(out),
                 "--max-steps", "7", "--init", "pipe"]) == 0
    seen = json.loads((out / "seen.json").read_text())
    assert (seen["word"], seen["out"], seen["steps"], seen["threads"], seen["init_flag"]) == ("hello", str(out), 7, 3,
                                                                                              "pipe")
    assert "trained to step 7" in capsys.readouterr().out


def test_streamgen_train_trains_a_camera_model_exports_it_and_resumes_as_if_never_stopped(tmp_path, tiny_pipeline,
                                                                                        capsys):
    from streamgen.pipeline import StreamingVideoPipeline

    config = tiny_config(tmp_path / "configs")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["--threads", "1", "train", "--config", str(config), "--init", str(tiny_pipeline)]
    assert main([*common, "--out", str(whole)]) == 0
    assert f"trained to step 4: {whole}" in capsys.readouterr().out
    assert json.loads((whole / "config.json").read_text())["init"] == str(tiny_pipeline)  # --init over the config's
    pipe = StreamingVideoPipeline.from_pretrained(whole / "pipeline")
    assert pipe.camera_encoder is not None and pipe.camera_encoder.takes_anchors
    assert (whole / "pipeline" / "camera_encoder").is_dir()
    assert [r["step"] for r in log(whole)] == [1, 2, 3, 4]

    assert main([*common, "--out", str(parts), "--max-steps", "2"]) == 0  # interrupted after step 2
    assert main(["--threads", "1", "train", "--config", str(config), "--out", str(parts)]) == 2  # no --resume
    assert "--resume" in capsys.readouterr().err
    resume = ["--threads", "1", "train", "--config", str(config), "--out", str(parts), "--resume"]
    with pytest.raises(SystemExit, match="exclude each other"):
        main([*resume, "--init", str(tiny_pipeline)])
    assert main(resume) == 0  # goes on from the pipeline the run started from (--init), not the config's init
    assert json.loads((parts / "config.json").read_text())["init"] == str(tiny_pipeline)
    a, b = state(whole), state(parts)
    assert a["step"] == b["step"] == 4 and torch.equal(a["generator"], b["generator"])
    assert max_difference(weights(a), weights(b)) <= 1e-6
    assert float(b["model/encoder/proj.weight"].abs().max()) > 1e-4  # zero-initialised: it did train
    assert [r["step"] for r in log(parts)] == [1, 2, 3, 4]
    assert all(abs(x["loss"] - y["loss"]) <= 1e-6 for x, y in zip(log(whole), log(parts)))


def test_two_cpu_processes_train_the_camera_model_one_process_trains_and_only_rank_0_writes(tmp_path, tiny_pipeline):
    """torchrun, gloo: batch 2 split 1 + 1, each rank its rows of every draw; DDP's average over the two is the
    1-process step (to 1e-5, fp32)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_distributed import TOLERANCE, torchrun, writes

    config = tiny_config(tmp_path / "configs", batch_size=2, steps=2, init=str(tiny_pipeline))
    two, one, audit = tmp_path / "two", tmp_path / "one", tmp_path / "audit"
    result = torchrun(audit, "train", "--config", str(config), "--out", str(two))
    assert result.stdout.count("trained to step 2") == 1  # printed by the main process only
    written = writes(audit, two)
    assert set(written) == {0, 1} and written[1] == []  # rank 1 wrote no log, checkpoint or export
    assert "checkpoint/state.safetensors" in written[0] and "log.jsonl" in written[0]
    assert any(p.startswith("pipeline/camera_encoder") for p in written[0])
    assert main(["--threads", "1", "train", "--config", str(config), "--out", str(one)]) == 0
    a, b = state(two), state(one)
    assert (a["step"], a["processes"], b["processes"]) == (2, 2, 1)
    assert torch.equal(a["generator"], b["generator"])  # one random stream, every rank's
    assert max_difference(weights(a), weights(b)) <= TOLERANCE
    assert float(b["model/encoder/proj.weight"].abs().max()) > 100 * TOLERANCE  # zero-initialised: it did train
    assert [r["step"] for r in log(two)] == [1, 2] and all(r["processes"] == 2 for r in log(two))
    assert all(abs(x["loss"] - y["loss"]) <= TOLERANCE * max(1.0, abs(y["loss"])) for x, y in zip(log(two), log(one)))
