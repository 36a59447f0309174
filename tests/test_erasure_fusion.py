"""Several concept LoRAs fused by MACE's closed-form refinement of the cross-attention K/V: the closed form is the
least-squares solution (float64), reproduces each LoRA on its own inputs when they span disjoint subspaces, holds the
anchors' outputs as their weight grows; on a pipeline it fits the text projections' real inputs, its folder is one
diffusers-layout LoRA that loads and names its concepts; bad input is refused in one line."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch

from streamgen.bench.quality.cli import erasure_options
from streamgen.bench.quality.erase_command import default_fuse
from streamgen.bench.quality.erase_command import main as erase_main
from streamgen.erasure.concepts import DEFAULT_PARAPHRASES, parse_concept
from streamgen.erasure.fusion import (FusionConfig, closed_form_delta, closed_form_weight, fuse_closed_form,
                                      fuse_folders, fuse_sum, fusion_prompts, read_concepts, save_fused,
                                      text_inputs)
from streamgen.erasure.lora import LoraConfig, LoraWeights, add_lora, load_lora, remove_lora, save_lora
from streamgen.pipeline import load_pipeline
from streamgen.resources import pipeline_path

CROSS_KV = ("blocks.*.attn2.to_k", "blocks.*.attn2.to_v")


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- the closed form, float64 ------------------------------------------------------------------------------------
def test_the_closed_form_equals_the_least_squares_solution():
    out, d = 5, 8
    w0, d1, d2 = randn(out, d, seed=0), randn(out, d, seed=1), randn(out, d, seed=2)
    e1, e2, ep = randn(20, d, seed=3), randn(15, d, seed=4), randn(30, d, seed=5)
    lam, ridge = 0.7, 0.1
    w = closed_form_weight(w0, [e1, e2], [d1, d2], ep, preserve_weight=lam, ridge=ridge)
    # Rows: each input vector with its target output, anchors scaled by sqrt(lam), the ridge as sqrt(ridge) I -> W0.
    a = torch.cat([e1, e2, lam ** 0.5 * ep, ridge ** 0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([e1 @ (w0 + d1).T, e2 @ (w0 + d2).T, lam ** 0.5 * ep @ w0.T, ridge ** 0.5 * w0.T])
    expected = torch.linalg.lstsq(a, b).solution.T
    assert w.dtype == torch.float64
    assert torch.allclose(w, expected, atol=1e-10, rtol=0)
    # The formula as the issue writes it (with W0 in it) gives the same W.
    g1, g2, gp = e1.T @ e1, e2.T @ e2, ep.T @ ep
    lhs = (w0 + d1) @ g1 + (w0 + d2) @ g2 + lam * w0 @ gp + ridge * w0
    assert torch.allclose(w, lhs @ torch.linalg.inv(g1 + g2 + lam * gp + ridge * torch.eye(d, dtype=torch.float64)),
                          atol=1e-10, rtol=0)


def test_with_no_anchor_weight_and_disjoint_subspaces_each_concept_gets_exactly_its_own_lora():
    out, d = 4, 6
    w0, d1, d2 = randn(out, d, seed=10), randn(out, d, seed=11), randn(out, d, seed=12)
    e1 = torch.cat([randn(9, 3, seed=13), torch.zeros(9, 3, dtype=torch.float64)], 1)  # span e0..e2
    e2 = torch.cat([torch.zeros(7, 3, dtype=torch.float64), randn(7, 3, seed=14)], 1)  # span e3..e5
    w = closed_form_weight(w0, [e1, e2], [d1, d2], randn(5, d, seed=15), preserve_weight=0.0, ridge=0.0)
    assert torch.allclose(e1 @ w.T, e1 @ (w0 + d1).T, atol=1e-10, rtol=0)
    assert torch.allclose(e2 @ w.T, e2 @ (w0 + d2).T, atol=1e-10, rtol=0)
    # Adding the deltas instead changes concept 1's outputs by concept 2's LoRA.
    assert not torch.allclose(e1 @ (w0 + d1 + d2).T, e1 @ (w0 + d1).T, atol=1e-3)


def test_the_anchors_outputs_stay_put_as_their_weight_grows():
    out, d = 4, 8
    w0, d1, d2 = randn(out, d, seed=20), randn(out, d, seed=21), randn(out, d, seed=22)
    e1, e2, ep = randn(12, d, seed=23), randn(12, d, seed=24), randn(3, d, seed=25)
    moved = []
    for lam in (0.0, 0.1, 1.0, 10.0, 1e3, 1e8):
        w = closed_form_weight(w0, [e1, e2], [d1, d2], ep, preserve_weight=lam, ridge=1e-6)
        moved.append(float((ep @ (w - w0).T).norm() / (ep @ w0.T).norm()))
    assert all(a > b for a, b in zip(moved, moved[1:])), moved
    assert moved[0] > 0.1 and moved[-1] < 1e-6


@pytest.mark.parametrize("call, words", [
    (lambda: closed_form_weight(randn(3, 4, seed=0), [randn(5, 3, seed=1)], [randn(3, 4, seed=2)]), r"\[n, 4\]"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [randn(5, 4, seed=1)], [randn(3, 5, seed=2)]), "delta"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [torch.full((5, 4), float("nan"), dtype=torch.float64)],
                                [randn(3, 4, seed=2)]), "NaN"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [torch.zeros(0, 4)], [randn(3, 4, seed=2)]), "no input"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [randn(5, 4, seed=1)], []), "one delta per"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [randn(2, 4, seed=1)], [randn(3, 4, seed=2)]), "singular"),
    (lambda: closed_form_weight(randn(3, 4, seed=0), [randn(5, 4, seed=1)], [randn(3, 4, seed=2)], ridge=-1),
     "ridge"),
    (lambda: closed_form_delta([torch.eye(3)], [None], [1.0]), "no group has a LoRA delta"),
    (lambda: FusionConfig(preserve_weight=float("inf")), "preserve_weight"),
    (lambda: FusionConfig(tokens="some"), "tokens"),
    (lambda: FusionConfig(prompts_per_concept=0), "prompts_per_concept"),
])
def test_invalid_closed_form_inputs_are_refused_in_one_line(call, words):
    with pytest.raises(ValueError, match=words) as err:
        call()
    assert "\n" not in str(err.value)


# ---- on a pipeline -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(pipeline_path("tiny-random"))


def concept_lora(pipe, seed: int, targets=CROSS_KV, masked: bool = True) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    masks = None
    if masked:
        masks = {f"{name}.weight": torch.rand(linear.weight.shape, generator=g) < 0.5
                 for name, linear in pipe.transformer.named_modules()
                 if name.endswith(("attn2.to_k", "attn2.to_v"))}
    adapters = add_lora(pipe.transformer, LoraConfig(rank=2, alpha=2.0, targets=targets, init_seed=seed), masks)
    try:
        with torch.no_grad():
            for adapter in adapters.values():
                adapter.lora_B.weight.copy_(0.3 * torch.randn(adapter.lora_B.weight.shape, generator=g))
        return LoraWeights.from_adapters(adapters)
    finally:
        remove_lora(pipe.transformer)


def write_concept_lora(pipe, folder, concept: str, seed: int, **kwargs):
    save_lora(concept_lora(pipe, seed, **kwargs), folder)
    (folder / "concept.json").write_text(json.dumps(parse_concept(concept).as_dict()))
    return folder


def prompt_kv(pipe, prompt: str):
    pipe._prompt_kv.clear()
    kv = pipe.prompt_kv(prompt, 1)
    return torch.cat([torch.cat([k.flatten(), v.flatten()]) for k, v in zip(kv.k, kv.v)]).double()


def test_on_a_pipeline_each_concept_keeps_its_own_lora_s_kv_and_the_anchors_the_original_s(pipe):
    red, white = parse_concept("red"), parse_concept("white background")
    loras = [(red, concept_lora(pipe, 1)), (white, concept_lora(pipe, 2))]
    config = FusionConfig(prompts_per_concept=12, anchors=12, preserve_weight=1.0, ridge=1e-4)
    prompts, anchors = fusion_prompts([red, white], DEFAULT_PARAPHRASES, config)
    assert all("red" in p and "white" not in p for p in prompts["color-red"])
    assert all("white" in p and " red " not in f" {p} " for p in prompts["background-white"])
    assert not any(" red " in f" {a} " or "white" in a for a in anchors)
    fused = fuse_closed_form(pipe, loras, DEFAULT_PARAPHRASES, config)
    assert fused.name == "color-red+background-white" and fused.record["method"] == "closed-form"
    assert fused.record["prompts"] == {"color-red": 12, "background-white": 12, "anchors": len(anchors)}

    # On the projections' real inputs (the text embedder's output, padding included), the fused delta minimises the
    # objective: adding the deltas does worse.
    modules = sorted(loras[0][1].down)
    grams = {}
    for name, texts in (("color-red", prompts["color-red"]), ("background-white", prompts["background-white"]),
                        ("anchors", anchors)):
        g, n = text_inputs(pipe, modules, texts)
        grams[name] = {m: g[m] / n[m] for m in modules}
        assert all(n[m] == len(texts) * pipe.config.max_sequence_length for m in modules)  # every text position

    def objective(delta, module):
        cost = sum(torch.einsum("oi,ij,oj->", delta - w.delta(module).double(), grams[c.name][module],
                                delta - w.delta(module).double()) for c, w in loras)
        cost += torch.einsum("oi,ij,oj->", delta, grams["anchors"][module], delta)
        return float(cost)

    for module in modules:
        summed = sum(w.delta(module).double() for _, w in loras)
        assert objective(fused.weights.delta(module).double(), module) < 0.9 * objective(summed, module)

    def kv_with(weights_list, prompt):
        for i, w in enumerate(weights_list):
            pipe.load_lora_weights(w, adapter_name=f"t{i}")
        try:
            return prompt_kv(pipe, prompt)
        finally:
            pipe.unload_lora_weights()

    # Through the pipeline's cross-attention K/V: with little anchor weight a concept's prompt gets (nearly) its own
    # LoRA's K/V, with much an anchor prompt the original's, closer than the sum (the tiny model's 24-d text
    # inputs overlap: no exact fit).
    concept_prompt, anchor = prompts["color-red"][0], anchors[0]
    own, summed = kv_with([loras[0][1]], concept_prompt), kv_with([w for _, w in loras], concept_prompt)
    loose = fuse_closed_form(pipe, loras, config=replace(config, preserve_weight=0.01))
    assert (kv_with([loose.weights], concept_prompt) - own).norm() < 0.7 * (summed - own).norm()
    original, summed = prompt_kv(pipe, anchor), kv_with([w for _, w in loras], anchor)
    tight = fuse_closed_form(pipe, loras, config=replace(config, preserve_weight=100.0))
    assert (kv_with([tight.weights], anchor) - original).norm() < 0.7 * (summed - original).norm()


def test_prompt_tokens_only_leaves_the_padding_out_and_sum_fusion_adds_the_deltas(pipe):
    class Padded:  # the pipeline with states zero past the 5th token, as a real tokenizer's padding leaves them
        transformer = pipe.transformer

        @staticmethod
        def encode_prompt(prompts):
            states = pipe.encode_prompt(prompts).clone()
            states[:, 5:] = 0
            return states

    modules = ["blocks.0.attn2.to_k", "blocks.1.attn2.to_v"]
    texts = ["a red circle drifting left over a white backdrop", "a blue square"]
    every, n_every = text_inputs(Padded, modules, texts, tokens="all")
    own, n_own = text_inputs(Padded, modules, texts, tokens="prompt")
    assert n_every[modules[0]] == 2 * pipe.config.max_sequence_length and n_own[modules[0]] == 2 * 5
    padding = pipe.transformer.condition_embedder.text_embedder(torch.zeros(1, pipe.transformer.config.text_dim))
    extra = (2 * pipe.config.max_sequence_length - 10) * padding.double().T @ padding.double()
    assert torch.allclose(every[modules[0]], own[modules[0]] + extra, atol=1e-6)

    red, white = parse_concept("red"), parse_concept("white background")
    loras = [(red, concept_lora(pipe, 3)), (white, concept_lora(pipe, 4))]
    summed = fuse_sum(loras)
    assert summed.record["method"] == "sum" and not summed.weights.masks
    for module in summed.weights.down:
        assert torch.allclose(summed.weights.delta(module), loras[0][1].delta(module) + loras[1][1].delta(module),
                              atol=1e-5)


def test_the_fused_folder_is_one_lora_that_loads_and_names_its_concepts(pipe, tmp_path):
    red = write_concept_lora(pipe, tmp_path / "red", "red", 5)
    white = write_concept_lora(pipe, tmp_path / "white", "white background", 6)
    fused = fuse_folders(pipe, [red, white], "closed-form", config=FusionConfig(prompts_per_concept=6, anchors=6))
    folder = save_fused(fused, tmp_path / fused.name)
    assert [c.name for c in read_concepts(folder)] == ["color-red", "background-white"]
    record = json.loads((folder / "concept.json").read_text())["fusion"]
    assert [s["concept"] for s in record["sources"]] == ["color-red", "background-white"]
    assert all(len(s["sha256"]) == 64 for s in record["sources"])
    loaded = load_lora(folder, pipe.transformer)  # safetensors, validated like any LoRA file
    assert not loaded.masks and loaded.rank == fused.weights.rank
    for module in fused.weights.down:
        assert torch.allclose(loaded.delta(module), fused.weights.delta(module), atol=1e-6)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(folder, adapter_name="fused")
    pipe.unload_lora_weights()
    assert all(torch.allclose(before[k], v, atol=1e-5) for k, v in pipe.transformer.state_dict().items())
    args = argparse.Namespace(erasure=[f"{red},{white}", str(folder)], erasure_concepts=None,
                              erasure_fuse="closed-form")
    configs = erasure_options(args)["erasure"]
    assert [c["name"] for c in configs] == ["color-red+background-white (closed-form)",
                                            "color-red+background-white (fused: closed-form)"]
    assert configs[0]["fuse"] == "closed-form" and configs[1]["loras"] == [str(folder)]
    with pytest.raises(ValueError, match="fused LoRA") as err:
        fuse_folders(pipe, [folder, red])
    assert "\n" not in str(err.value)


def test_fusion_refuses_what_it_cannot_do_in_one_line(pipe, tmp_path):
    red, white = parse_concept("red"), parse_concept("white background")
    everywhere = concept_lora(pipe, 7, targets=("blocks.*.attn1.to_q", "blocks.*.attn2.to_k"), masked=False)
    cases = [
        (lambda: fuse_closed_form(pipe, [(red, everywhere), (white, concept_lora(pipe, 8))]),
         "read the prompt's text states"),
        (lambda: fuse_closed_form(pipe, [(red, concept_lora(pipe, 8)), (red, concept_lora(pipe, 9))]), "given twice"),
        (lambda: read_concepts(tmp_path), "not a LoRA folder"),
        (lambda: fuse_folders(pipe, [tmp_path], method="mean"), "fusion method"),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "concept.json").write_text(json.dumps({"attribute": "color", "value": "ultraviolet"}))
    cases.append((lambda: read_concepts(tmp_path / "bad"), "not an erasable concept"))
    for call, words in cases:
        with pytest.raises(ValueError, match=words) as err:
            call()
        assert "\n" not in str(err.value)
    wrong = concept_lora(pipe, 10)
    module = next(iter(wrong.down))
    wrong.down[module] = wrong.down[module][:, :-1]
    with pytest.raises(ValueError, match="has shape"):
        pipe.load_lora_weights(wrong, adapter_name="wrong")
    assert pipe.lora_adapters == {}
    pipe.load_lora_weights(concept_lora(pipe, 11), adapter_name="loaded")
    try:
        with pytest.raises(ValueError, match="unload them first"):
            fuse_closed_form(pipe, [(red, concept_lora(pipe, 8))])
    finally:
        pipe.unload_lora_weights()


def test_erase_fuses_given_loras_into_one_folder_by_the_closed_form(pipe, tmp_path, capsys):
    red = write_concept_lora(pipe, tmp_path / "red", "red", 12)
    white = write_concept_lora(pipe, tmp_path / "white", "white background", 13)
    out = tmp_path / "out"
    code = erase_main(["--threads", "1", "erase", "--pipeline", "tiny-random", "--loras", str(red), str(white),
                       "--fuse", "closed-form", "--fuse-prompts", "6", "--fuse-preserve", "2", "--out", str(out),
                       "--eval", "none", "--no-progress"])
    assert code == 0
    folder = out / "color-red+background-white"
    assert [c.name for c in read_concepts(folder)] == ["color-red", "background-white"]
    report = json.loads((out / "report.json").read_text())
    assert report["fusion"]["method"] == "closed-form" and report["fusion"]["config"]["preserve_weight"] == 2.0
    assert "Fused by `closed-form`" in (out / "report.md").read_text()
    assert erase_main(["erase", "--pipeline", "tiny-random", "--loras", str(red), "--concept", "red", "--out",
                       str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    # Without --fuse: the closed form for cross-attention K/V LoRAs, the sum as soon as one adapts another layer.
    blue = write_concept_lora(pipe, tmp_path / "blue", "background:blue", 16,
                              targets=("blocks.*.attn1.to_q", "blocks.*.attn2.to_k"), masked=False)
    assert default_fuse([red, white]) == "closed-form" and default_fuse([red, blue]) == "sum"
    assert erase_main(["--threads", "1", "erase", "--pipeline", "tiny-random", "--loras", str(red), str(blue),
                       "--out", str(out), "--eval", "none", "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["fusion"]["method"] == "sum"


def test_the_erasure_suite_fuses_comma_joined_loras_by_the_closed_form_and_takes_them_out(pipe, tmp_path):
    from streamgen.bench.quality import run_quality

    red = write_concept_lora(pipe, tmp_path / "red", "red", 14)
    white = write_concept_lora(pipe, tmp_path / "white", "white background", 15)
    options = erasure_options(argparse.Namespace(erasure=[f"{red},{white}"], erasure_concepts=None,
                                                 erasure_fuse="closed-form"))
    options["erasure_fusion"] = {"prompts_per_concept": 4, "anchors": 4}
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    result = run_quality(pipe, ["erasure"], cache="rolling", quick=True, options=options)
    assert all(torch.allclose(before[k], v, atol=1e-5) for k, v in pipe.transformer.state_dict().items())
    assert pipe.lora_adapters == {}
    pair = result["suites"]["erasure"]["erased"]["color-red+background-white (closed-form)"]
    assert pair["fuse"] == "closed-form" and pair["fusion"]["method"] == "closed-form"
    assert pair["fusion"]["prompts"]["color-red"] == 4 and set(pair["rates"]) == {"color-red", "background-white"}
    json.dumps(result)
