"""`accelerate launch -m streamgen.batch` shards a prompt file over processes; outputs do not depend on how many."""

import os
import subprocess
import sys

import numpy as np

from streamgen.batch import main
from streamgen.resources import pipeline_path
from streamgen.video_io import read_video

TINY = pipeline_path("tiny-random")
PROMPTS = (
    '{"prompts": ["a red circle", "a blue square"], "seed": 1}\n'
    '{"prompts": ["a green triangle", "a red circle"], "seed": 2}\n'
    '{"prompts": ["a yellow square", "a blue square"]}\n'
)


def test_two_cpu_processes_write_the_same_videos_as_one(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    common = ["--prompts", str(prompts), "--switch-frame-indices", "3", "--frames", "6", "--pipeline", str(TINY)]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "streamgen.batch", *common, "--out-dir", str(tmp_path / "two"),
    ]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[process 0/2]" in result.stdout and "[process 1/2]" in result.stdout

    assert main([*common, "--out-dir", str(tmp_path / "one")]) == 0
    for name in ("0000.mp4", "0001.mp4", "0002.mp4"):
        two, one = read_video(tmp_path / "two" / name), read_video(tmp_path / "one" / name)
        assert two.shape == (6, 32, 32, 3) and np.array_equal(two, one), name
