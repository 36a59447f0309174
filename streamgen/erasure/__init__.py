"""Concept erasure for streaming video models: ANT's trajectory-aware fine-tuning ("Set You Straight", see
``RESEARCH.md``) as hooks on any :class:`~streamgen.models.causal_wan.CausalWanTransformer3DModel`.

- :mod:`.objective`: the loss (kept guidance direction early, reversed late, preservation of the unconditional and
  anchor predictions);
- :mod:`.saliency`: the augmentation-enhanced weight saliency masks;
- :mod:`.lora`: LoRA adapters (optionally masked), diffusers-layout files, fusing, the pipeline's loader mixin;
- :mod:`.states`: states from the frozen model's guided sampling trajectory;
- :mod:`.finetune`: the fine-tune loop.

A run, in short::

    frozen = ChunkCausalFlow(copy.deepcopy(transformer).requires_grad_(False), chunk_frames)
    masks = saliency_masks(target_weights(transformer), [loss_fn_of(seed, paraphrase), ...])
    adapters = add_lora(transformer, LoraConfig(), masks)
    erase(ChunkCausalFlow(transformer, chunk_frames), frozen, states_sampler, prompts)
    save_lora(LoraWeights.from_adapters(adapters), out_dir)     # pipe.load_lora_weights(out_dir) fuses it
"""

from .finetune import EraseConfig, erase
from .lora import (LoraConfig, LoraLinear, LoraLoaderMixin, LoraWeights, add_lora, fuse_lora, load_lora, remove_lora,
                   save_lora, target_weights, unfuse_lora)
from .objective import ErasurePrompts, ErasureStates, ObjectiveConfig, ant_targets, erasure_loss
from .saliency import SaliencyConfig, saliency_masks, top_fraction_mask
from .states import trajectory_states

__all__ = [
    "EraseConfig", "erase", "LoraConfig", "LoraLinear", "LoraLoaderMixin", "LoraWeights", "add_lora", "fuse_lora",
    "load_lora", "remove_lora", "save_lora", "target_weights", "unfuse_lora", "ErasurePrompts", "ErasureStates",
    "ObjectiveConfig", "ant_targets", "erasure_loss", "SaliencyConfig", "saliency_masks", "top_fraction_mask",
    "trajectory_states",
]
