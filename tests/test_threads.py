"""Torch CPU threads: one for a small model, the physical cores for a large one, the pipeline's own statement over
both, ``--threads`` over everything and accepted after any subcommand."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from streamgen.cli import build_parser, main
from streamgen.resources import pipeline_path
from streamgen.threads import SMALL_MODEL_PARAMETERS, default_threads, physical_cores, stated_threads

TINY = pipeline_path("tiny-random")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _model(parameters: int):
    weight = SimpleNamespace(numel=lambda: parameters)
    return SimpleNamespace(transformer=SimpleNamespace(parameters=lambda: [weight]), name_or_path=None)


def test_a_small_model_gets_one_thread_and_a_large_one_the_physical_cores():
    assert default_threads(_model(1_000_000)) == 1
    assert default_threads(_model(1_400_000_000)) == physical_cores() >= 1
    assert default_threads(_model(SMALL_MODEL_PARAMETERS)) == physical_cores()


def test_a_pipeline_folder_may_state_its_threads(tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(TINY, folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert stated_threads(folder) is None
    (folder / "model_index.json").write_text(json.dumps({**index, "torch_threads": 3}))
    assert stated_threads(folder) == 3
    assert default_threads(SimpleNamespace(name_or_path=str(folder))) == 3  # no parameter count needed
    (folder / "model_index.json").write_text(json.dumps({**index, "torch_threads": 0}))
    with pytest.raises(ValueError, match="torch_threads"):
        stated_threads(folder)


@pytest.mark.parametrize("argv", [["--threads", "2", "bench", "speed"], ["bench", "speed", "--threads", "2"],
                                  ["generate", "--threads", "2"], ["demo", "--threads", "2"],
                                  ["info", "--threads", "2"]])
def test_threads_is_accepted_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).threads == 2


def test_without_threads_a_command_uses_the_models_default(tmp_path):
    torch.set_num_threads(2)
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--pipeline", str(TINY), "--frames", "6", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["threads"] == 1  # tiny-random: a few thousand parameters
    assert main(["bench", "speed", "--pipeline", str(TINY), "--frames", "6", "--threads", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["threads"] == 2
