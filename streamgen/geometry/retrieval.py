"""Choosing which memory frames to show the next chunk.

``greedy_coverage`` is AnchorWeave's coverage-driven retrieval: over the target cameras' pixels, repeatedly take the
memory frame that adds the most not-yet-covered pixels (a frame's coverage is where its point cloud, z-buffered,
lands in each target view). Plain greedy can miss the best K-subset by up to 1 - 1/e; ``refine=True`` (streamgen's
addition, off for AnchorWeave's own behaviour) then swaps a chosen frame for an unchosen one while that grows the
union. ``best_coverage`` is the brute force over all K-subsets both are tested against. The
baselines of the revisit bench rank frames without marginal gains: ``fov_overlap`` (WorldMem-style: the share of a
frame's points inside each target frustum, occlusion ignored) and ``most_recent``.
"""

from __future__ import annotations

from itertools import combinations

import torch

__all__ = ["greedy_coverage", "best_coverage", "top_k", "most_recent", "union_size"]


def _flat(coverage: torch.Tensor) -> torch.Tensor:
    if coverage.dtype != torch.bool or coverage.dim() < 2:
        raise ValueError(f"coverage must be bool [N, ...], got {coverage.dtype} {tuple(coverage.shape)}")
    return coverage.reshape(coverage.shape[0], -1)


def union_size(coverage: torch.Tensor, chosen: list[int]) -> int:
    """Target pixels covered by the frames ``chosen``."""
    flat = _flat(coverage)
    return int(flat[chosen].any(0).sum()) if chosen else 0


def greedy_coverage(coverage: torch.Tensor, k: int, *, always: list[int] = (), refine: bool = False) -> list[int]:
    """Indices of up to ``k`` frames (bool coverage [N, ...] of the targets) picked greedily by uncovered pixels
    added; ``always`` (e.g. the first frame) are taken first. Stops early when no frame adds anything. ``refine``:
    then improve the pick by single swaps (never touching ``always``)."""
    flat = _flat(coverage)
    chosen = list(dict.fromkeys(always))[:k]
    covered = flat[chosen].any(0) if chosen else torch.zeros(flat.shape[1], dtype=torch.bool)
    while len(chosen) < min(k, flat.shape[0]):
        gain = (flat & ~covered).sum(1)
        if chosen:
            gain[chosen] = -1
        best = int(torch.argmax(gain))  # ties: the earliest frame
        if gain[best] <= 0:
            break
        chosen.append(best)
        covered |= flat[best]
    return _swap_refine(flat, chosen, len(set(always))) if refine else chosen


def _swap_refine(flat: torch.Tensor, chosen: list[int], fixed: int, max_rounds: int = 8) -> list[int]:
    """1-swap local search: replace a chosen frame (after the first ``fixed``) by an unchosen one while the union
    grows; at most ``max_rounds`` passes (each costs K x N unions of the target pixels)."""
    chosen = list(chosen)
    size = int(flat[chosen].any(0).sum()) if chosen else 0
    for _ in range(max_rounds):
        improved = False
        for slot in range(fixed, len(chosen)):
            others = flat[chosen[:slot] + chosen[slot + 1:]].any(0)
            gain = (flat & ~others).sum(1)
            gain[chosen] = -1
            best = int(torch.argmax(gain))
            if int(others.sum()) + int(gain[best]) > size:
                chosen[slot] = best
                size = int(others.sum()) + int(gain[best])
                improved = True
        if not improved:
            break
    return chosen


def best_coverage(coverage: torch.Tensor, k: int, *, always: list[int] = ()) -> list[int]:
    """The K-subset (containing ``always``) with the largest union: brute force, for tests and small pools."""
    flat = _flat(coverage)
    fixed = list(dict.fromkeys(always))[:k]
    rest = [i for i in range(flat.shape[0]) if i not in fixed]
    best, best_size = fixed, union_size(coverage, fixed)
    for extra in combinations(rest, max(0, min(k, flat.shape[0]) - len(fixed))):
        size = union_size(coverage, fixed + list(extra))
        if size > best_size:
            best, best_size = fixed + list(extra), size
    return best


def top_k(scores: torch.Tensor, k: int, *, always: list[int] = ()) -> list[int]:
    """``always``, then the highest-scoring others (scores [N]) with a positive score, up to ``k`` in all."""
    chosen = list(dict.fromkeys(always))[:k]
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if len(chosen) >= k or scores[i] <= 0:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def most_recent(count: int, k: int, *, always: list[int] = ()) -> list[int]:
    """``always``, then the newest of ``count`` frames (index count - 1 is the newest), up to ``k`` in all."""
    chosen = list(dict.fromkeys(always))[:k]
    for i in range(count - 1, -1, -1):
        if len(chosen) >= k:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen
