"""Concept erasure hooks (ANT): the objective's targets are the paper's, the saliency mask keeps the top half of each
tensor, LoRA files round-trip and refuse hostile input in one line, and a 20-step erase on tiny-random steers the
concept's guidance direction away while an anchor prompt's prediction stays put."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamgen.erasure import (EraseConfig, ErasurePrompts, ErasureStates, LoraConfig, LoraWeights,
                               ObjectiveConfig, SaliencyConfig, add_lora, ant_targets, erase, erasure_loss,
                               fuse_lora, load_lora, remove_lora, saliency_masks, save_lora, target_weights,
                               top_fraction_mask, trajectory_states, unfuse_lora)
from streamgen.erasure.lora import LORA_WEIGHT_NAME, METADATA_KEY
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.pipeline import StreamingVideoPipeline
from streamgen.resources import pipeline_path
from streamgen.train.trainer import ChunkCausalFlow

from conftest import TINY_WAN

CHUNK = 3  # latent frames per chunk of the test models


# ---- the objective --------------------------------------------------------------------------------------------
def toy_model(seed: int) -> CausalWanTransformer3DModel:
    torch.manual_seed(seed)
    return CausalWanTransformer3DModel(**TINY_WAN).double().eval()


def perturbed(model: CausalWanTransformer3DModel, seed: int, size: float = 0.05) -> CausalWanTransformer3DModel:
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(size * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return other


@pytest.fixture(scope="module")
def toy():
    """(frozen, trainable, states, prompts): a float64 toy transformer and a perturbed copy; one early state
    (progress 0) and one late state (progress 0.5); a concept, the empty prompt and two anchors."""
    frozen = toy_model(0)
    trainable = perturbed(frozen, 1)
    g = torch.Generator().manual_seed(2)
    states = ErasureStates(
        latents=torch.randn(2, 4, CHUNK, 4, 4, generator=g, dtype=torch.float64),
        timesteps=torch.tensor([[980.0] * CHUNK, [400.0] * CHUNK], dtype=torch.float64),
        progress=torch.tensor([0.0, 0.5]),
    )
    text = torch.randn(4, 5, TINY_WAN["text_dim"], generator=g, dtype=torch.float64)
    prompts = ErasurePrompts(concept=text[:1], empty=text[1:2], anchors=text[2:])
    return ChunkCausalFlow(frozen, CHUNK), ChunkCausalFlow(trainable, CHUNK), states, prompts


def predictions(model, states, text):
    """One prediction per state for one prompt [1, L, D], each state alone (no batching shared with the loss)."""
    with torch.no_grad():
        return torch.cat([model(states.latents[b:b + 1], states.timesteps[b:b + 1], text)
                          for b in range(states.latents.shape[0])])


def test_targets_keep_the_guidance_direction_early_and_reverse_it_late():
    cond, uncond = torch.tensor([[3.0], [3.0]], dtype=torch.float64), torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    target = ant_targets(cond, uncond, torch.tensor([True, False]), eta=1.0)
    assert target.tolist() == [[3.0], [-1.0]]  # early: the conditional prediction itself; late: mirrored about ∅
    assert ant_targets(cond, uncond, torch.tensor([True, False]), eta=0.5).tolist() == [[2.0], [0.0]]


def test_the_loss_equals_a_float64_hand_computation_of_both_branches_and_every_preservation_term(toy):
    frozen, trainable, states, prompts = toy
    config = ObjectiveConfig(eta=0.7, late_cond=1.3, late_uncond=0.4, early_cond=0.9, early_uncond=0.6, anchor=0.8)
    c, u = predictions(frozen, states, prompts.concept), predictions(frozen, states, prompts.empty)
    anchors_frozen = [predictions(frozen, states, a[None]) for a in prompts.anchors]
    pc, pu = predictions(trainable, states, prompts.concept), predictions(trainable, states, prompts.empty)
    anchors = [predictions(trainable, states, a[None]) for a in prompts.anchors]

    early_target = u[0] + 0.7 * (c[0] - u[0])
    late_target = u[1] - 0.7 * (c[1] - u[1])
    assert torch.allclose(ant_targets(c, u, states.progress < config.switch_progress, 0.7),
                          torch.stack((early_target, late_target)), rtol=0, atol=1e-12)

    def mse(a, b):
        return float((a - b).pow(2).mean())

    early = 0.9 * mse(pc[0], early_target) + 0.6 * mse(pu[0], u[0])
    late = 1.3 * mse(pc[1], late_target) + 0.4 * mse(pu[1], u[1])
    anchor = sum(mse(p[b], f[b]) for p, f in zip(anchors, anchors_frozen) for b in range(2)) / 4
    stats: dict[str, float] = {}
    loss = erasure_loss(trainable, frozen, states, prompts, config, stats).detach()
    assert float(loss) == pytest.approx((early + late) / 2 + 0.8 * anchor, rel=1e-9)
    assert stats["early"] == 0.5 and stats["anchor"] == pytest.approx(anchor, rel=1e-9)

    # The switch is the config's: with it before progress 0, both states take the reversed target.
    late_only = ObjectiveConfig(eta=0.7, switch_progress=0.0, late_cond=1.0, late_uncond=0.0, anchor=0.0)
    both_late = (mse(pc[0], u[0] - 0.7 * (c[0] - u[0])) + mse(pc[1], late_target)) / 2
    loss = erasure_loss(trainable, frozen, states, prompts, late_only).detach()
    assert float(loss) == pytest.approx(both_late, rel=1e-9)


@pytest.mark.parametrize("term", ["early_uncond", "late_uncond", "anchor"])
def test_each_preservation_term_alone_carries_gradient(toy, term):
    frozen, trainable, states, prompts = toy
    weights = dict(late_cond=0.0, late_uncond=0.0, early_cond=0.0, early_uncond=0.0, anchor=0.0)
    weights[term] = 1.0
    trainable.zero_grad(set_to_none=True)
    erasure_loss(trainable, frozen, states, prompts, ObjectiveConfig(**weights)).backward()
    grad = sum(float(p.grad.abs().sum()) for p in trainable.parameters() if p.grad is not None)
    trainable.zero_grad(set_to_none=True)
    assert grad > 0.0


# ---- saliency ----------------------------------------------------------------------------------------------------
def test_the_top_fraction_mask_keeps_the_largest_entries_and_breaks_ties_towards_the_lower_index():
    score = torch.tensor([[0.1, 0.9, 0.5], [0.5, 0.0, 0.5]])
    assert top_fraction_mask(score, 0.5).tolist() == [[False, True, True], [True, False, False]]
    assert top_fraction_mask(score, 0.01).sum() == 1  # every tensor keeps at least one entry


def test_saliency_keeps_the_top_half_of_accumulated_abs_gradients_per_tensor_and_intersects_augmentations():
    w = torch.nn.Parameter(torch.zeros(4))
    v = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)  # a frozen base weight, as under LoRA
    params = {"w": w, "v": v}

    def augmentation(grads_w, grads_v):  # the loss (w·g) has gradient g: gradients chosen by hand, per iteration
        return lambda i: (w * torch.tensor(grads_w[i])).sum() + (v * torch.tensor(grads_v[i])).sum()

    # |grad| summed over the 2 iterations: w [4, 3, 2, 5] -> top half {0, 3}; v [[1, 6], [5, 0]] -> {(0,1), (1,0)}
    first = augmentation([[1.0, -3.0, 2.0, 4.0], [-3.0, 0.0, 0.0, 1.0]],
                         [[[1.0, -6.0], [2.0, 0.0]], [[0.0, 0.0], [3.0, 0.0]]])
    # w [0, 9, 0, 8] -> {1, 3}; v [[7, 0], [0, 7]] -> {(0,0), (1,1)}
    second = augmentation([[0.0, 9.0, 0.0, -8.0], [0.0, 0.0, 0.0, 0.0]],
                          [[[7.0, 0.0], [0.0, -7.0]], [[0.0, 0.0], [0.0, 0.0]]])
    config = SaliencyConfig(iterations=2, keep_fraction=0.5)
    alone = saliency_masks(params, [first], config)
    assert alone["w"].tolist() == [True, False, False, True]
    assert alone["v"].tolist() == [[False, True], [True, False]]
    both = saliency_masks(params, [first, second], config)
    assert both["w"].tolist() == [False, False, False, True]  # the intersection
    assert both["v"].tolist() == [[False, False], [False, False]]
    assert w.grad is None and v.grad is None  # nothing accumulated into .grad
    assert w.requires_grad and not v.requires_grad  # flags restored


# ---- LoRA ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    pipe = StreamingVideoPipeline.from_pretrained(pipeline_path("tiny-random"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trained_lora(transformer, seed: int, masked: bool) -> LoraWeights:
    """A LoRA with random (non-zero) factors on a copy of ``transformer``; half of the weights masked if asked."""
    model = copy.deepcopy(transformer)
    masks = None
    if masked:
        g = torch.Generator().manual_seed(seed)
        masks = {name: torch.rand(w.shape, generator=g) < 0.5 for name, w in list(target_weights(model).items())[::2]}
    adapters = add_lora(model, LoraConfig(rank=2, alpha=3.0, init_seed=seed), masks)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_B.weight.copy_(0.1 * torch.randn(adapter.lora_B.weight.shape, generator=g))
    return LoraWeights.from_adapters(adapters), model


def sample_input(transformer):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, transformer.config.in_channels, CHUNK, 8, 8, generator=g)
    text = torch.randn(1, 6, transformer.config.text_dim, generator=g)
    return x, torch.full((1, CHUNK), 600.0), text


def test_a_lora_round_trips_through_its_file_and_its_fused_model_computes_what_the_adapters_did(pipe, tmp_path):
    base = pipe.transformer
    weights, adapted = trained_lora(base, seed=3, masked=True)
    path = save_lora(weights, tmp_path)
    assert path.name == LORA_WEIGHT_NAME
    keys = set(load_file(str(path)))
    assert {"transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.1.ffn.net.2.lora_B.weight"} <= keys
    assert "transformer.blocks.0.attn1.to_q.lora_mask" in keys  # masked modules carry their packed mask

    loaded = load_lora(tmp_path, base)
    assert (loaded.rank, loaded.alpha) == (2, 3.0)
    for part in ("down", "up", "masks"):
        ours, theirs = getattr(weights, part), getattr(loaded, part)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    plain = copy.deepcopy(base)
    fuse_lora(plain, loaded)
    x, t, text = sample_input(base)
    with torch.no_grad():
        expected = ChunkCausalFlow(adapted, CHUNK)(x, t, text)
        assert torch.allclose(ChunkCausalFlow(plain, CHUNK)(x, t, text), expected, atol=1e-5)
    for name, mask in loaded.masks.items():  # a masked LoRA changes only the masked entries
        assert not loaded.delta(name)[~mask].any()


def test_fuse_then_unfuse_gives_the_weights_back_and_two_loras_fused_add_their_deltas(pipe):
    model = copy.deepcopy(pipe.transformer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = trained_lora(model, seed=7, masked=False)
    second, _ = trained_lora(model, seed=8, masked=True)
    fuse_lora(model, first)
    fuse_lora(model, second)
    state = model.state_dict()
    for module in first.down:
        key = f"{module}.weight"
        assert torch.allclose(state[key] - original[key], first.delta(module) + second.delta(module), atol=1e-6)
    unfuse_lora(model, second)
    unfuse_lora(model, first)
    assert all(torch.allclose(model.state_dict()[k], original[k], atol=1e-6) for k in original)


def test_remove_lora_puts_the_base_layers_back(pipe):
    model = copy.deepcopy(pipe.transformer)
    keys = set(model.state_dict())
    add_lora(model)
    assert set(model.state_dict()) != keys
    remove_lora(model)
    assert set(model.state_dict()) == keys


def hostile(tmp_path, weights: LoraWeights, change) -> str:
    path = save_lora(weights, tmp_path / "lora.safetensors")
    tensors = load_file(str(path))
    metadata = {"format": "pt"}
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


A_KEY = "transformer.blocks.0.attn1.to_q.lora_A.weight"
B_KEY = "transformer.blocks.0.attn1.to_q.lora_B.weight"


@pytest.mark.parametrize("change, words", [
    (lambda t, m: t.update({"transformer.blocks.0.attn1.to_q.lora_A.bias": t[A_KEY].clone()}), "not a LoRA key"),
    (lambda t, m: t.update({"transformer.blocks.9.attn1.to_q.lora_A.weight": t.pop(A_KEY)}), "names no adaptable"),
    (lambda t, m: t.update({A_KEY: t[A_KEY][:, :-1].contiguous()}), "has shape"),
    (lambda t, m: t.pop(B_KEY), "is missing"),
    (lambda t, m: t.update({A_KEY: torch.full_like(t[A_KEY], float("nan"))}), "NaN"),
    (lambda t, m: m.update({METADATA_KEY: json.dumps({"transformer.r": 5})}), "declares rank 5"),
    (lambda t, m: m.update({METADATA_KEY: "{not json"}), "not valid LoRA metadata"),
])
def test_a_hostile_lora_file_is_refused_in_one_line_naming_the_key(pipe, tmp_path, change, words):
    weights, _ = trained_lora(pipe.transformer, seed=4, masked=False)
    with pytest.raises(ValueError, match=words) as err:
        load_lora(hostile(tmp_path, weights, change), pipe.transformer)
    assert "\n" not in str(err.value)


def test_a_truncated_or_pickled_lora_file_is_refused_in_one_line(pipe, tmp_path):
    weights, _ = trained_lora(pipe.transformer, seed=4, masked=False)
    path = save_lora(weights, tmp_path / "lora.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated") as err:
        load_lora(path, pipe.transformer)
    assert "\n" not in str(err.value)
    pickled = tmp_path / "lora.pt"
    torch.save({A_KEY: torch.zeros(2, 32)}, pickled)
    with pytest.raises(ValueError, match="safetensors only"):
        load_lora(pickled, pipe.transformer)


def test_the_pipeline_mixin_loads_fuses_and_unfuses_and_drops_stale_prompt_kv(tmp_path):
    pipe = StreamingVideoPipeline.from_pretrained(pipeline_path("tiny-random"))
    pipe.set_progress_bar_config(disable=True)

    def video():
        return pipe("a red circle", num_frames=CHUNK, height=8, width=8, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames

    before = video()
    weights, _ = trained_lora(pipe.transformer, seed=9, masked=True)
    save_lora(weights, tmp_path)
    assert pipe.load_lora_weights(tmp_path, adapter_name="red") == "red"
    assert pipe.lora_adapters == {"red": True} and not pipe._prompt_kv  # K/V of the old weights are gone
    fused = video()
    assert not torch.allclose(fused, before)
    pipe.unfuse_lora()
    assert torch.allclose(video(), before, atol=1e-5)
    pipe.fuse_lora()
    assert torch.allclose(video(), fused, atol=1e-5)
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora_weights(tmp_path, adapter_name="red")
    pipe.unload_lora_weights()
    assert pipe.lora_adapters == {} and torch.allclose(video(), before, atol=1e-5)


# ---- a whole erase -------------------------------------------------------------------------------------------------
ERASE_STEPS, ERASE_LR = 20, 1e-2  # a tiny model: a large step size shows the effect within the 20 steps
STATE_SEEDS, HELD_OUT_SEED = range(4), 1000
ANCHOR_DRIFT_BOUND = 0.1  # relative L2 change of the anchor prompt's prediction allowed after the erase


def test_a_20_step_erase_on_tiny_random_reverses_the_concept_direction_and_keeps_the_anchor(pipe):
    """Concept score: cosine between the fine-tuned model's concept direction e(z, c) - e*(z, ∅) and the frozen
    model's e*(z, c) - e*(z, ∅) at late, held-out states (1 before the erase; reversal drives it negative). Anchor
    drift: ||e(z, a) - e*(z, a)|| / ||e*(z, a)||."""
    transformer = copy.deepcopy(pipe.transformer)
    frozen = ChunkCausalFlow(copy.deepcopy(transformer).requires_grad_(False), CHUNK)
    model = ChunkCausalFlow(transformer, CHUNK)
    prompts = ErasurePrompts(pipe.encode_prompt("a red circle"), pipe.encode_prompt(""),
                             pipe.encode_prompt(["a blue square over a green backdrop"]))
    sampler = pipe.make_sampler()

    def asking(concept: torch.Tensor) -> ErasurePrompts:
        return ErasurePrompts(concept, prompts.empty, prompts.anchors)

    def states(seed: int, asked: ErasurePrompts = prompts) -> ErasureStates:
        g = torch.Generator().manual_seed(seed)
        return trajectory_states(frozen, sampler, asked, torch.randn(2, 3, CHUNK, 16, 16, generator=g), g)

    def concept_score_and_anchor_drift(held_out: ErasureStates) -> tuple[float, float]:
        late = held_out.progress >= ObjectiveConfig().switch_progress
        with torch.no_grad():
            pick = ErasureStates(held_out.latents[late], held_out.timesteps[late], held_out.progress[late])
            c, u, a = (predictions(model, pick, p) for p in (prompts.concept, prompts.empty, prompts.anchors))
            fc, fu, fa = (predictions(frozen, pick, p) for p in (prompts.concept, prompts.empty, prompts.anchors))
        cosine = torch.nn.functional.cosine_similarity((c - fu).flatten(1), (fc - fu).flatten(1)).mean()
        return float(cosine), float((a - fa).norm() / fa.norm())

    held_out = states(HELD_OUT_SEED)
    assert concept_score_and_anchor_drift(held_out) == (pytest.approx(1.0), 0.0)

    paraphrases = [prompts.concept, pipe.encode_prompt("a circle in red")]  # the saliency's augmentations
    masks = saliency_masks(target_weights(transformer), [
        lambda i, seed=seed, asked=asking(text): erasure_loss(model, frozen, states(seed, asked), asked)
        for seed, text in zip(STATE_SEEDS, paraphrases)], SaliencyConfig(iterations=1))
    adapters = add_lora(transformer, LoraConfig(), masks)
    pool = [states(seed) for seed in STATE_SEEDS]
    losses = erase(model, frozen, lambda step: pool[step % len(pool)], prompts,
                   EraseConfig(steps=ERASE_STEPS, lr=ERASE_LR), progress=False)

    score, drift = concept_score_and_anchor_drift(held_out)
    assert losses[-1] < losses[0]
    assert score < 0.0  # the concept's guidance direction now points the other way
    assert drift < ANCHOR_DRIFT_BOUND
    with torch.no_grad():  # only salient weights moved
        assert all(not a.delta()[~a.mask].any() and a.delta().any() for a in adapters.values())
