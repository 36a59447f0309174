"""Erasure, second layer: states from streaming rollouts (after a switch, with the clean frames before the chunk),
the ``erase`` command end to end (LoRA, report, a resume that continues), the ``erasure`` bench suite's JSON, and
the concept / paraphrase parsing."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from streamgen.bench.quality import run_quality
from streamgen.bench.quality.cli import erasure_options
from streamgen.erasure import ErasurePrompts, erasure_loss, load_lora
from streamgen.bench.quality.erase_command import register_cli
from streamgen.erasure.concepts import (DEFAULT_PARAPHRASES, Concept, Paraphrases, concept_caption, load_paraphrases,
                                        parse_concept)
from streamgen.erasure.driver import STATE_FILE, read_state
from streamgen.erasure.lora import LoraConfig, LoraWeights, add_lora, save_lora
from streamgen.erasure.rollout import Rollout, play_rollout, record_stream, to_states
from streamgen.pipeline import load_pipeline
from streamgen.resources import pipeline_path
from streamgen.schedule import Schedule, Segment
from streamgen.erasure.objective import ChunkCausalPredictor as ChunkCausalFlow
from streamgen.world.scenes import Attributes, Draws

CHUNK = 3


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(pipeline_path("tiny-random"))


# ---- rollouts -----------------------------------------------------------------------------------------------------
def switch_rollout(mode: str) -> Rollout:
    return Rollout((("a blue square drifting up over a black backdrop", 2, "cut"),
                    ("a red circle drifting left over a white backdrop", 2, mode)), seed=3,
                   record_prompts=("a red circle drifting left over a white backdrop",))


@pytest.mark.parametrize("mode", ["cut", "smooth"])
def test_the_rollout_sampler_records_the_chunks_after_a_switch_with_their_clean_context(pipe, mode):
    records = play_rollout(pipe, switch_rollout(mode), max_context=6, guidance_scale=3.0)
    steps = len(pipe.make_sampler().timesteps)  # tiny-random samples with the few-step schedule
    assert [r.chunk for r in records] == [2, 3] and [r.start for r in records] == [6, 9]
    assert all(r.prompt == "a red circle drifting left over a white backdrop" for r in records)
    for record in records:
        assert record.states.shape == (steps, 1, 3, CHUNK, 32, 32) and len(record.timesteps) == steps
        assert record.context_frames == 6  # two chunks before it, the old scene's for the first
        assert record.timesteps[0] == pytest.approx(1000.0) and record.timesteps == sorted(record.timesteps)[::-1]
    # The context is the stream's own clean frames: the second recorded chunk's context ends with the first's result
    # (the clean chunk the sampler returned), so states live inside the stream.
    assert not torch.equal(records[0].context, records[1].context)
    assert torch.equal(records[1].context[:, :, :3], records[0].context[:, :, 3:])

    again = play_rollout(pipe, switch_rollout(mode), max_context=6, guidance_scale=3.0)  # deterministic
    assert all(torch.equal(a.states, b.states) and torch.equal(a.context, b.context) for a, b in zip(records, again))

    states = to_states(records)
    assert states.context_frames == 6 and states.latents.shape == (2 * steps, 3, 6 + CHUNK, 32, 32)
    assert (states.timesteps[:, :6] == 0).all() and states.positions.tolist() == list(range(9))
    assert sorted(set(states.progress.tolist())) == [i / steps for i in range(steps)]
    text = pipe.encode_prompt(["a red circle", "", "a blue square"])
    loss = erasure_loss(ChunkCausalFlow(pipe.transformer, CHUNK), ChunkCausalFlow(pipe.transformer, CHUNK), states,
                        ErasurePrompts(text[:1], text[1:2], text[2:]))
    assert float(loss.detach()) > 0  # the reversed late targets differ from the model's own prediction


def test_recording_leaves_the_stream_unchanged_and_sees_the_real_context(pipe):
    schedule = Schedule((Segment("a green cross racing down", 6, "latent_frames"),
                         Segment("a red circle drifting left", 6, "latent_frames", transition="cut")))

    def play(record: bool):
        stream = pipe.stream(schedule=schedule, num_frames=12, generator=torch.Generator().manual_seed(1),
                             guidance_scale=3.0)
        sampler = record_stream(stream, max_context=3) if record else None
        chunks = [c.latents for c in stream]
        return chunks, sampler

    plain, _ = play(False)
    chunks, sampler = play(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, chunks))
    assert [r.context_frames for r in sampler.records] == [0, 3, 3, 3]  # at most max_context, whole chunks
    assert all(torch.equal(r.context, chunks[r.chunk - 1]) for r in sampler.records[1:])
    assert [r.prompt for r in sampler.records] == ["a green cross racing down"] * 2 + ["a red circle drifting left"] * 2


# ---- the command --------------------------------------------------------------------------------------------------
TINY = ["--pipeline", "tiny-random", "--rollouts", "1", "--chunks", "1", "--switch-after", "1", "--long-chunks", "2",
        "--saliency-iterations", "1", "--save-every", "1", "--no-progress", "--lr", "1e-2",
        "--anchor-rollouts", "1", "--max-progress", "0.5"]


def erase_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["erase", *argv])
    return args.func(args)


def lora_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def test_erase_writes_a_lora_and_a_report_and_a_resume_continues_where_the_state_stopped(pipe, tmp_path):
    out = tmp_path / "erased"
    paraphrases, anchors = tmp_path / "paraphrases.yaml", tmp_path / "anchors.txt"
    paraphrases.write_text("train: ['a {c} {s} {m} {d} {bp}']\nheldout: ['{b} scene with a {c} {s} {m} {d}']\n")
    anchors.write_text("# kept\na blue square drifting up over a black backdrop\n")
    files = ["--paraphrases", str(paraphrases), "--anchors", str(anchors)]
    assert erase_cli("--concept", "red", "--out", str(out), "--steps", "2", "--eval", "quick", *files, *TINY) == 0
    folder = out / "color-red"
    weights = load_lora(folder, pipe.transformer)  # the diffusers-layout file loads onto the pipeline's model
    assert weights.masks and weights.rank == 4
    assert json.loads((folder / "concept.json").read_text())["value"] == "red"
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["color-red"]["steps"] == 2 and report["training"]["color-red"]["resumed_from"] == 0
    suite = report["evaluation"]["suites"]["erasure"]
    assert set(suite["erased"]) == {"color-red"} and "red" in (out / "report.md").read_text()
    assert report["anchors"] == ["a blue square drifting up over a black backdrop"]
    assert suite["paraphrases"]["heldout"] == ["{b} scene with a {c} {s} {m} {d}"]
    _, step, losses, _ = read_state(folder / STATE_FILE)
    assert step == 2 and len(losses) == 2
    with pytest.raises(ValueError, match="other paraphrases"):  # a resume must use the same files
        erase_cli("--concept", "red", "--out", str(out), "--steps", "4", "--eval", "none", "--resume", *TINY)

    with pytest.raises(ValueError, match="--resume"):  # never silently overwritten
        erase_cli("--concept", "red", "--out", str(out), "--steps", "4", "--eval", "none", *files, *TINY)
    assert erase_cli("--concept", "red", "--out", str(out), "--steps", "4", "--eval", "none", "--resume", *files,
                     *TINY) == 0
    resumed = json.loads((out / "report.json").read_text())["training"]["color-red"]
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    _, step, resumed_losses, _ = read_state(folder / STATE_FILE)
    assert step == 4 and resumed_losses[:2] == losses  # continued, not restarted

    straight = tmp_path / "straight"  # the same 4 steps in one go give the same LoRA and losses
    assert erase_cli("--concept", "red", "--out", str(straight), "--steps", "4", "--eval", "none", *files, *TINY) == 0
    assert read_state(straight / "color-red" / STATE_FILE)[2] == pytest.approx(resumed_losses, rel=1e-5)
    a, b = lora_tensors(folder), lora_tensors(straight / "color-red")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ---- the bench suite ----------------------------------------------------------------------------------------------
def random_lora(pipe, folder, concept: Concept) -> None:
    model = __import__("copy").deepcopy(pipe.transformer)
    adapters = add_lora(model, LoraConfig(rank=2, alpha=2.0, init_seed=1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_B.weight.copy_(0.2 * torch.randn(adapter.lora_B.weight.shape, generator=g))
    save_lora(LoraWeights.from_adapters(adapters), folder)
    (folder / "concept.json").write_text(json.dumps(concept.as_dict()))


def test_the_erasure_suite_runs_original_and_erased_on_the_same_seeds_and_reports_every_field(pipe, tmp_path):
    red, white = parse_concept("red"), parse_concept("white background")
    random_lora(pipe, tmp_path / "red", red)
    random_lora(pipe, tmp_path / "white", white)
    args = argparse.Namespace(erasure=[str(tmp_path / "red"), f"{tmp_path / 'red'},{tmp_path / 'white'}"],
                              erasure_concepts=None)
    options = erasure_options(args)
    assert [c["name"] for c in options["erasure"]] == ["color-red", "color-red+background-white"]
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    result = run_quality(pipe, ["erasure"], cache="rolling", quick=True, options=options)
    assert all(torch.allclose(before[k], v, atol=1e-5) for k, v in pipe.transformer.state_dict().items())  # unloaded
    suite = result["suites"]["erasure"]
    assert set(suite["concepts"]) == {"color-red", "background-white"}
    for concept in suite["concepts"].values():
        assert set(concept["baseline"]) == {"direct", "paraphrase", "switch_cut", "switch_smooth", "long",
                                            "long_last_quarter"}
        assert isinstance(concept["measurable"], bool)
    pair = suite["erased"]["color-red+background-white"]
    assert set(pair["rates"]) == {"color-red", "background-white"} and set(pair["verdicts"]) == set(pair["rates"])
    assert set(pair["attributes"]) == {"background", "color", "shape"}
    assert "red" not in pair["attributes"]["color"]["values"] and "white" not in pair["attributes"]["background"]["values"]
    for key in ("max_attribute_drop", "keeps_other_attributes", "meets_bar", "loras", "concepts"):
        assert key in pair
    assert set(suite["bars"]) == {"max_rate", "max_attribute_drop", "min_baseline"}
    # Every measured rate of the random model: its baseline is below 30%, so nothing counts as erased.
    assert not any(v["erased"] for r in suite["erased"].values() for v in r["verdicts"].values()
                   if not suite["concepts"][next(iter(r["verdicts"]))]["measurable"])
    json.dumps(result)


# ---- concepts and paraphrases ---------------------------------------------------------------------------------------
def test_concepts_parse_and_ambiguous_ones_are_refused():
    assert parse_concept("red") == Concept("color", "red")
    assert parse_concept("ball") == Concept("shape", "circle")
    assert parse_concept("white background") == parse_concept("background:white") == Concept("background", "white")
    assert parse_concept("colour=blue") == Concept("color", "blue")
    with pytest.raises(ValueError, match="ambiguous"):
        parse_concept("blue")
    with pytest.raises(ValueError, match="no background"):
        parse_concept("purple")


def test_training_and_held_out_paraphrases_are_disjoint_and_neutral_captions_drop_the_concept(tmp_path):
    with pytest.raises(ValueError, match="both 'train' and 'heldout'"):
        Paraphrases(("a {c} {s} {m} {d} {bp}",), ("a  {c} {s} {m} {d} {bp}",))
    path = tmp_path / "p.yaml"
    path.write_text("train: ['a {c} {s} {m} {d} {bp}']\nheldout: ['{b} scene: {c} {s} {m} {d}']\n")
    assert load_paraphrases(path).heldout == ("{b} scene: {c} {s} {m} {d}",)
    path.write_text("train: ['a {s} {m} {d}']\nheldout: ['{c} {s}']\n")
    with pytest.raises(ValueError, match="never names the color"):
        load_paraphrases(path).check_covers(Concept("color", "red"))
    attributes = Attributes("circle", "red", "white", "left", "slow")
    text, neutral = concept_caption(DEFAULT_PARAPHRASES.train[0], attributes, Draws(1), Concept("color", "red"))
    assert text == "a red circle drifting left over a white backdrop" or text.startswith("a red circle")
    assert "red" not in neutral and "circle" in neutral
    text, neutral = concept_caption(DEFAULT_PARAPHRASES.train[1], attributes, Draws(1), Concept("background", "white"))
    assert "white" in text and "white" not in neutral and "plain" in neutral


def test_the_erasure_predictor_is_the_trainer_s_chunk_causal_forward(pipe):
    from streamgen.train.trainer import ChunkCausalFlow as TrainerFlow

    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 3, 6, 32, 32, generator=g), pipe.encode_prompt("a red circle")
    t = torch.tensor([[0.0] * 3 + [700.0] * 3])
    with torch.no_grad():
        assert torch.equal(ChunkCausalFlow(pipe.transformer, CHUNK)(x, t, text),
                           TrainerFlow(pipe.transformer, CHUNK)(x, t, text))


def test_the_before_after_gif_pair_is_written_with_the_loras_fused_then_taken_out(pipe, tmp_path):
    from streamgen.erasure.media import before_after

    random_lora(pipe, tmp_path / "red", parse_concept("red"))
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    summary = before_after(pipe, [tmp_path / "red"], tmp_path / "gif",
                           schedule=(("a blue square over a black backdrop", 3), ("a red circle", 3)))
    assert (tmp_path / "gif" / "before.gif").read_bytes()[:6] == b"GIF89a"
    assert (tmp_path / "gif" / "after.gif").read_bytes()[:6] == b"GIF89a"
    assert len(summary["before"]["background"]) == len(summary["after"]["color"]) == 6
    assert all(torch.allclose(before[k], v, atol=1e-5) for k, v in pipe.transformer.state_dict().items())


def test_a_concept_s_videos_do_not_depend_on_the_other_concepts_a_run_measures():
    alone = run_quality("reference", ["erasure"], quick=True, options={"erasure_concepts": ["red"]})
    both = run_quality("reference", ["erasure"], quick=True, options={"erasure_concepts": ["circle", "red"]})
    assert alone["suites"]["erasure"]["concepts"]["color-red"] == both["suites"]["erasure"]["concepts"]["color-red"]


def test_the_ranks_shares_of_an_erasure_batch_are_the_whole_batch_in_rank_order(pipe):
    """On N processes rank r trains on its rows of every step's batch, drawn whole: the shares, concatenated, are
    the one-process batch (states, timesteps, progress and prompts; the anchors are every rank's)."""
    from streamgen.erasure.driver import EraseSettings, build_pool, default_anchors
    from streamgen.erasure.processes import Processes

    settings = EraseSettings(batch=4, rollouts_per_kind=1, chunks=1, switch_after=1, long_chunks=2)
    concept = parse_concept("red")
    paraphrases = load_paraphrases(None)
    anchors = default_anchors([concept], paraphrases, 4, 0)
    pool = build_pool(pipe, concept, [], paraphrases, anchors, settings, lambda text: pipe.encode_prompt(text),
                      progress=False)
    whole_states, whole_prompts = pool.batch(5)
    shares = [pool.batch(5, rows=Processes(rank, 2).rows(settings.batch, "--batch")) for rank in range(2)]
    for field in ("latents", "timesteps", "progress"):
        assert torch.equal(torch.cat([getattr(s, field) for s, _ in shares]), getattr(whole_states, field))
    assert torch.equal(torch.cat([p.concept for _, p in shares]), whole_prompts.concept)
    assert all(torch.equal(p.anchors, whole_prompts.anchors) for _, p in shares)
    with pytest.raises(ValueError, match="--batch is 4: on 3 processes it must be a multiple of 3"):
        Processes(0, 3).rows(settings.batch, "--batch")
    assert [Processes(r, 2).mine(5) for r in range(2)] == [[0, 2, 4], [1, 3]]


@pytest.mark.parametrize("cache, context, expected", [
    ("longlive", 9, [0, 1, 2, *range(12, 21)]),  # the sink keeps its stream indices, far behind the window
    ("block-relative", 9, list(range(12))),  # the window shifted to sit right after the pinned sink
    ("self-forcing", 12, list(range(15))),  # a 21-frame window: the last max_context frames, contiguous
])
def test_recorded_states_carry_the_positions_the_stream_gave_its_context_and_chunk(pipe, cache, context, expected):
    """The 7th chunk of a stream (frames 18-20): with a sink it attends to frames 0-2 and 12-17, whose clean latents
    the engine's history no longer holds; the states keep them and reproduce the temporal RoPE positions of the
    preset's policy (relative to the first), not 0..k+f-1 for every preset."""
    rollout = Rollout((("a red circle drifting left over a blue backdrop", 7, "cut"),), 3,
                      ("a red circle drifting left over a blue backdrop",), record_chunks=(3, 6))
    early, record = play_rollout(pipe, rollout, cache=cache, max_context=12, num_inference_steps=2)
    assert record.context_frames == context and record.start == 18
    if cache != "self-forcing":  # frames 0-2: from the engine's history at chunk 3, from the recorder's own at 6
        assert early.start == 9 and torch.equal(record.context[:, :, :3], early.context[:, :, :3])
    assert record.positions.tolist() == expected
    assert to_states([record]).positions.tolist() == expected
