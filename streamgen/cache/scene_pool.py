"""Echo-Forcing's bounded pool of scene memories, and how a recall finds the scene it means.

Each ended scene leaves one memory frame per layer (:mod:`streamgen.cache.scene_memory`). The pool keeps the last
``capacity`` of them in tensors allocated once, on a device of their own (the CPU by default: a Wan memory frame is
30 layers x 1560 tokens x 1536 channels per K and V, and the pool only travels to the accelerator at a recall).

A recall names a scene by id, or else by prompt: the scene whose prompt is most similar to the new one after
dropping the words most scene prompts share (a stream about one character repeats its name and look in every
prompt; those words say nothing about which scene is meant).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch

WORD = re.compile(r"[a-z0-9']+")


def prompt_similarities(prompt: str, candidates: list[str], shared_fraction: float) -> list[float]:
    """Cosine similarity of word counts between ``prompt`` and each candidate, ignoring words that appear in at
    least ``shared_fraction`` of all these prompts (and in at least two of them). A prompt left with no words keeps
    all of its own."""
    texts = [WORD.findall(p.lower()) for p in [prompt, *candidates]]
    appears_in = Counter(word for words in texts for word in set(words))
    threshold = max(2, math.ceil(shared_fraction * len(texts)))
    shared = {word for word, count in appears_in.items() if count >= threshold}
    bags = [Counter(w for w in words if w not in shared) or Counter(words) for words in texts]

    def cosine(a: Counter, b: Counter) -> float:
        dot = sum(a[w] * b[w] for w in a)
        norm = math.sqrt(sum(c * c for c in a.values()) * sum(c * c for c in b.values()))
        return dot / norm if norm else 0.0

    return [cosine(bags[0], bag) for bag in bags[1:]]


@dataclass
class SceneEntry:
    scene: int  # scene id: 0 for the stream's first scene, +1 at every switch
    prompt: str | None
    first_frame: int  # the scene's first latent frame in the stream
    slot: int  # where its memory frame lives in the pool tensors


class ScenePool:
    """The memory frames of the last ``capacity`` scenes, [capacity, layers, B, tokens, H, D] per K and V."""

    def __init__(self, capacity: int, *, num_layers: int, batch_size: int, tokens_per_frame: int, num_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        shape = (capacity, num_layers, batch_size, tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.entries: list[SceneEntry] = []  # oldest first

    @property
    def capacity(self) -> int:
        return self.k.shape[0]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def add(self, scene: int, prompt: str | None, first_frame: int, k: torch.Tensor, v: torch.Tensor) -> SceneEntry:
        """Store a scene's memory frame [layers, B, tokens, H, D], replacing the oldest scene when full."""
        if len(self.entries) == self.capacity:
            slot = self.entries.pop(0).slot
        else:
            slot = len(self.entries)
        self.k[slot] = k.to(self.k)
        self.v[slot] = v.to(self.v)
        entry = SceneEntry(scene, prompt, first_frame, slot)
        self.entries.append(entry)
        return entry

    def find(self, scene: int) -> SceneEntry | None:
        return next((e for e in self.entries if e.scene == scene), None)

    def latest(self) -> SceneEntry | None:
        return self.entries[-1] if self.entries else None

    def memory(self, entry: SceneEntry) -> tuple[torch.Tensor, torch.Tensor]:
        """The entry's memory frame (K, V) [layers, B, tokens, H, D], still on the pool's device."""
        return self.k[entry.slot], self.v[entry.slot]

    def match(self, prompt: str, shared_fraction: float) -> tuple[SceneEntry, list[float]]:
        """The pooled scene whose prompt is most similar to ``prompt`` (the most recent among equals), and every
        pooled scene's similarity, oldest first."""
        if not self.entries:
            raise LookupError("the scene pool is empty: there is no earlier scene to recall")
        if any(e.prompt is None for e in self.entries):
            raise LookupError("scenes without prompt text cannot be matched by prompt: recall them by scene id")
        similarities = prompt_similarities(prompt, [e.prompt for e in self.entries], shared_fraction)
        best = max(range(len(similarities)), key=lambda i: (similarities[i], i))
        return self.entries[best], similarities
