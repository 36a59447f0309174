"""Concept erasure for streaming video models: ANT's trajectory-aware fine-tuning ("Set You Straight", see
``RESEARCH.md``) as hooks on any :class:`~streamgen.models.causal_wan.CausalWanTransformer3DModel`.

- :mod:`.objective`: the loss (kept guidance direction early, reversed late, preservation of the unconditional and
  anchor predictions);
- :mod:`.saliency`: the augmentation-enhanced weight saliency masks;
- :mod:`.lora`: LoRA adapters (optionally masked), diffusers-layout files, fusing, the pipeline's loader mixin;
- :mod:`.states`: states from the frozen model's guided sampling trajectory (one clip, no cache);
- :mod:`.rollout`: states from streaming rollouts (the real engine and cache, switches into the concept, the clean
  frames before each chunk as context);
- :mod:`.finetune`: the fine-tune loop;
- :mod:`.concepts`: ShapeWorld concepts, disjoint training / held-out paraphrase templates, neutral captions;
- :mod:`.driver`: one concept's whole resumable erasure (rollouts, saliency, masked LoRA, state files);
- :mod:`.fusion`: several concepts' LoRAs made one, by their deltas' sum or MACE's closed-form refinement of the
  cross-attention K/V;
- :mod:`.report` (markdown), :mod:`.media` (the before/after GIF pair).

The command, ``streamgen erase``, is on the command side: :mod:`streamgen.bench.quality.erase_command` (it runs the
erasure bench suite for its report). This package imports nothing above the models (not the pipeline, which takes
its LoRA loader from here), so no import cycle passes through it. Importing it is cheap (no torch): everything loads
on first use.

A run, in short::

    frozen = ChunkCausalFlow(copy.deepcopy(transformer).requires_grad_(False), chunk_frames)
    masks = saliency_masks(target_weights(transformer), [loss_fn_of(seed, paraphrase), ...])
    adapters = add_lora(transformer, LoraConfig(), masks)
    erase(ChunkCausalFlow(transformer, chunk_frames), frozen, states_sampler, prompts)
    save_lora(LoraWeights.from_adapters(adapters), out_dir)     # pipe.load_lora_weights(out_dir) fuses it
"""

import importlib

_EXPORTS = {
    "EraseConfig": "finetune", "erase": "finetune",
    **{name: "lora" for name in ("LoraConfig", "LoraLinear", "LoraLoaderMixin", "LoraWeights", "add_lora",
                                 "check_lora", "fuse_lora", "load_lora", "remove_lora", "save_lora", "target_weights",
                                 "unfuse_lora")},
    **{name: "objective" for name in ("ErasurePrompts", "ErasureStates", "ObjectiveConfig", "ant_targets",
                                      "erasure_loss")},
    **{name: "saliency" for name in ("SaliencyConfig", "saliency_masks", "top_fraction_mask")},
    "trajectory_states": "states", "ChunkCausalPredictor": "objective",
    **{name: "rollout" for name in ("RecordingSampler", "record_stream", "play_rollout", "to_states", "Rollout")},
    **{name: "concepts" for name in ("Concept", "parse_concept", "Paraphrases", "load_paraphrases")},
    **{name: "driver" for name in ("EraseSettings", "erase_concept")},
    **{name: "fusion" for name in ("FusionConfig", "FusedLora", "closed_form_delta", "closed_form_weight",
                                   "fuse_closed_form", "fuse_folders", "fuse_sum", "read_concepts", "save_fused")},
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
