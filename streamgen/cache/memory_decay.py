"""Echo-Forcing's difference-aware memory decay: how the frames a switch kept fade out of the new scene.

After the new scene's first chunk, each spatial token i of the kept memory gets a rate from how much the new scene
differs from it there: d_i = 1 - cos(k_new_i, k_memory_i) (per layer, averaged over the batch), normalised to [0, 1]
over the frame's tokens, and r_i = r_max - (r_max - r_min) d_i. Where the scene changed most the memory fades
fastest. Every chunk multiplies the kept K and V by r_i again, so chunk n sees them scaled by r_i^n (times the first
chunk's weight); after ``evict_after`` chunks they are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import KVCache


def difference_rates(new_k: torch.Tensor, memory_k: torch.Tensor, min_rate: float, max_rate: float) -> torch.Tensor:
    """Per-layer, per-token decay rates [layers, tokens] from one new frame's and the memory frame's keys
    [layers, B, tokens, H, D]. Tokens that all differ equally (or a frame of one token) decay at ``max_rate``."""
    cos = F.cosine_similarity(new_k.flatten(3).float(), memory_k.flatten(3).float(), dim=-1)  # [layers, B, tokens]
    difference = (1 - cos).mean(dim=1)
    low, high = difference.amin(dim=-1, keepdim=True), difference.amax(dim=-1, keepdim=True)
    span = high - low
    normalised = torch.where(span > 0, (difference - low) / torch.where(span > 0, span, 1), 0)
    return max_rate - (max_rate - min_rate) * normalised


@dataclass
class MemoryDecay:
    """The fading of one switch's kept frames (``regions``: the memory frame and any carried frames).

    ``rate`` is a fixed rate, or (min_rate, max_rate) for difference-aware rates measured against the first kept
    frame (the memory frame when there is one).
    """

    regions: tuple[str, ...]
    rate: float | tuple[float, float]
    evict_after: int
    chunks: int = 0  # chunks of the new scene generated so far
    rates: torch.Tensor | None = None  # [layers, tokens], fixed after the first chunk

    def after_chunk(self, cache: KVCache, new_frame_k: torch.Tensor) -> bool:
        """Decay (and, when due, drop) the kept frames after a chunk whose first frame has keys ``new_frame_k``
        [layers, B, tokens, H, D]. Returns True once they are dropped."""
        if self.rates is None:
            self.rates = self._rates(cache, new_frame_k)
        for region in self.regions:
            cache.scale_region(region, self.rates)
        self.chunks += 1
        if self.chunks < self.evict_after:
            return False
        for region in self.regions:
            cache.clear(region)
        return True

    def _rates(self, cache: KVCache, new_frame_k: torch.Tensor) -> torch.Tensor:
        layers, _, tokens = new_frame_k.shape[:3]
        if isinstance(self.rate, float):
            return torch.full((layers, tokens), self.rate, device=new_frame_k.device)
        kept = [cache.region_kv(r)[0] for r in self.regions if cache.frames_in(r)]
        if not kept:  # nothing was kept (no earlier scene to remember): nothing to decay
            return torch.ones(layers, tokens, device=new_frame_k.device)
        return difference_rates(new_frame_k, kept[0][:, :, :tokens], *self.rate)
