"""RoPE re-alignment: training clips at the positions a cache preset gives them in a long stream, against the data or
against the resumed model's own prediction at the standard positions."""

from __future__ import annotations

import json

import pytest
import torch

from streamgen.train import Trainer, config_from_dict
from streamgen.train.positions import StreamPositions

from test_train import text, tiny  # noqa: F401  (the packaged text encoder fixture, the tiny config)


def test_a_clip_takes_the_positions_of_the_frames_a_preset_attends_to():
    tri = StreamPositions("anchor-forcing", clip_frames=12, chunk_frames=3)
    assert tri(12).tolist() == list(range(12))  # the first 12 frames keep their absolute positions
    assert tri(300).tolist() == [0, 1, 2, *range(12, 21)]  # sink 0..2, then the window ending at 20
    rolling = StreamPositions("rolling", clip_frames=12, chunk_frames=3)
    assert rolling(2199).tolist() == [0, 1, 2, *range(2190, 2199)]  # absolute: the sink, then where the stream is
    window = StreamPositions("self-forcing", clip_frames=12, chunk_frames=3)  # no sink: the 12 newest frames
    assert window(2199).tolist() == list(range(2187, 2199))
    assert StreamPositions("streamgen", clip_frames=9, chunk_frames=3, rope_range=12)(90).tolist() == list(range(9))


def test_presets_that_cannot_hold_a_clip_or_a_long_stream_are_refused():
    with pytest.raises(ValueError, match="'infinity-rope' attends to 6 frames between switches"):
        StreamPositions("infinity-rope", clip_frames=12, chunk_frames=3)
    with pytest.raises(ValueError, match="never evicts"):
        StreamPositions("global", clip_frames=12, chunk_frames=3)
    with pytest.raises(ValueError, match="positions.rope_range must give the range"):
        StreamPositions("streamgen", clip_frames=9, chunk_frames=3)
    with pytest.raises(ValueError, match="multiple of 3"):
        StreamPositions("rolling", clip_frames=12, chunk_frames=3)(13)
    with pytest.raises(ValueError, match="set positions.preset"):
        config_from_dict({"positions": {"target": "teacher"}})
    with pytest.raises(ValueError, match="positions.prob"):
        config_from_dict({"positions": {"preset": "rolling", "prob": 2}})


def test_the_teacher_target_is_the_resumed_model_at_standard_positions(tmp_path, text):  # noqa: F811
    Trainer(tiny(tmp_path), text=text).run(until=2)
    realign = dict(preset="anchor-forcing", target="teacher", max_stream_frames=300)
    with pytest.raises(ValueError, match="pass --resume"):
        Trainer(tiny(tmp_path / "fresh", positions=realign), text=text)

    def loss_at(prob):
        trainer = Trainer(tiny(tmp_path, positions={**realign, "prob": prob}), resume=True, text=text)
        trainer.ema.copy_to(trainer.transformer)  # the student starts as the teacher
        batch = trainer.data.batch(0, 0, 1)
        return trainer, float(trainer.loss(batch, torch.Generator().manual_seed(0)).detach())

    _, same_positions = loss_at(0.0)
    assert same_positions == 0.0  # the student under the teacher's own positions reproduces it exactly
    trainer, shifted = loss_at(1.0)
    assert shifted > 1e-6  # under the preset's positions it does not yet: that is what the fine-tune teaches
    trainer.run()
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    assert index["rope_range"] == 21  # trained on anchor-forcing's range now


def test_without_re_alignment_the_export_states_the_clip_length(tmp_path, text):  # noqa: F811
    Trainer(tiny(tmp_path, max_steps=1), text=text).run()
    assert json.loads((tmp_path / "pipeline" / "model_index.json").read_text())["rope_range"] == 6
