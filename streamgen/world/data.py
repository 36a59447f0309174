"""Training data: ShapeWorld clips with captions and labels, as torch datasets.

``ShapeWorldClips`` (map-style) and ``ShapeWorldStream`` (iterable, infinite unless ``length`` is given) yield the
same kind of sample, deterministic by (dataset seed, index):

    frames          uint8 tensor [F, H, W, 3]
    video           float32 tensor [3, F, H, W] in [-1, 1] (the pixel-space VAE's latent layout, batch dim aside)
    captions        list[str], one per segment (a paraphrase fixed by the scene seed)
    segment_starts  list[int], first frame of each segment (on multiples of ``switch_multiple``)
    transitions     list[str], how each segment is entered ("cut" for the first)
    frame_segment   int64 [F], which segment plays at each frame
    labels          int64 [F, 5], class ids (background, color, shape, direction, speed; ATTRIBUTE_NAMES order)
    in_transition   bool [F], frame blends two scenes (smooth switch)
    scene_seeds     list[int]

Clips come with 0, 1 or 2 switches (``switch_probs``), each entered by cut, smooth or recall (``modes``; a recall
brings back the scene before last: A -> B -> A). Scene seeds come only from the requested split
(``streamgen.world.scenes.split_of``), so training never sees a held-out (caption, seed) pair. Use
``collate_clips`` as the DataLoader's ``collate_fn`` (lists stay lists).

Speed: ``measure_throughput()`` renders 48-frame clips with the default switch mix at 150-200 clips/s
(7,000-10,000 frames/s) in one process on this project's 2-core machine while three other jobs share it, i.e. a
batch of 16 clips in ~0.1 s: far more than a CPU training step of the 32x32 model consumes. Use DataLoader
workers (``ShapeWorldStream`` shards by worker) if a GPU trainer ever needs more.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .render import TRANSITIONS, Clip, ClipSegment, render_clip
from .scenes import RESOLUTION, Draws, _splitmix64, sample_scene, split_of

__all__ = ["sample_segments", "clip_for_seed", "clip_sample", "ShapeWorldClips", "ShapeWorldStream",
           "collate_clips", "measure_throughput"]

DEFAULT_SWITCH_PROBS = (0.4, 0.4, 0.2)  # P(0 switches), P(1), P(2)


def _scene_seed(clip_seed: int, index: int, split: str) -> int:
    """A scene seed of ``split`` derived from the clip seed (the next seed of the split at or after a hash)."""
    seed = _splitmix64(_splitmix64(int(clip_seed)) ^ (index + 1)) >> 2
    while split_of(seed) != split:
        seed += 1
    return seed


def sample_segments(clip_seed: int, num_frames: int, *, split: str = "train",
                    switch_probs: Sequence[float] = DEFAULT_SWITCH_PROBS, modes: Sequence[str] = TRANSITIONS,
                    switch_multiple: int = 1, min_segment: int = 6) -> list[ClipSegment]:
    """A random clip layout: 1-3 segments, switch frames on multiples of ``switch_multiple``, each segment at least
    ``min_segment`` frames. A recall needs two earlier segments; where none is possible the mode is redrawn."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    for mode in modes:
        if mode not in TRANSITIONS:
            raise ValueError(f"unknown transition {mode!r}")
    rng = Draws(clip_seed, 17)
    u, switches = rng.uniform() * sum(switch_probs), 0
    while switches < len(switch_probs) - 1 and u >= switch_probs[switches]:
        u -= switch_probs[switches]
        switches += 1
    # Switch points on the grid, each segment >= min_segment frames; fewer switches if the clip is too short.
    grid = [f for f in range(switch_multiple, num_frames, switch_multiple)]
    while switches > 0:
        cuts = _place_switches(rng, grid, switches, num_frames, min_segment)
        if cuts is not None:
            break
        switches -= 1
    else:
        cuts = []
    bounds = [0, *cuts, num_frames]
    scenes = []
    segments = []
    for j in range(len(bounds) - 1):
        length = bounds[j + 1] - bounds[j]
        if j == 0:
            mode = "cut"
        else:
            allowed = [m for m in modes if m != "recall" or j >= 2] or ["cut"]
            mode = rng.choice(allowed)
        if mode == "recall":
            scene = scenes[j - 2]
        else:
            scene, retry = sample_scene(_scene_seed(clip_seed, j, split)), 0
            while scenes and scene.attributes == scenes[-1].attributes:  # a switch must change something
                retry += 1
                scene = sample_scene(_scene_seed(clip_seed, j + 1000 * retry, split))
        scenes.append(scene)
        segments.append(ClipSegment(scene, length, mode))
    return segments


def _place_switches(rng, grid, count, num_frames, min_segment):
    valid = [f for f in grid if min_segment <= f <= num_frames - min_segment]
    for _ in range(20):
        if len(valid) < count:
            return None
        cuts = sorted(rng.sample(valid, count))
        if all(b - a >= min_segment for a, b in zip([0, *cuts], [*cuts, num_frames])):
            return cuts
    return None


def clip_for_seed(clip_seed: int, num_frames: int, *, split: str = "train", resolution: int = RESOLUTION,
                  **layout: Any) -> Clip:
    """Render the clip of ``clip_seed`` (layout from :func:`sample_segments`)."""
    segments = sample_segments(clip_seed, num_frames, split=split, **layout)
    return render_clip(segments, num_frames, seed=clip_seed, resolution=resolution)


def clip_sample(clip: Clip) -> dict[str, Any]:
    """A rendered clip as a training sample (see the module docstring for the keys)."""
    video = np.ascontiguousarray(clip.frames.transpose(3, 0, 1, 2), dtype=np.float32)  # numpy: no torch threads
    video *= 1 / 127.5
    video -= 1.0
    return {
        "frames": torch.from_numpy(clip.frames),
        "video": torch.from_numpy(video),
        "captions": [s.scene.caption for s in clip.segments],
        "segment_starts": [s.start for s in clip.segments],
        "transitions": [s.transition for s in clip.segments],
        "frame_segment": torch.from_numpy(clip.segment),
        "labels": torch.from_numpy(clip.labels()),
        "in_transition": torch.from_numpy(clip.in_transition),
        "scene_seeds": [s.scene.seed for s in clip.segments],
    }


class ShapeWorldClips(Dataset):
    """Map-style dataset of ``length`` clips; item ``i`` is the clip of seed ``hash(seed, i)``."""

    def __init__(self, length: int, num_frames: int = 48, *, split: str = "train", seed: int = 0,
                 switch_probs: Sequence[float] = DEFAULT_SWITCH_PROBS, modes: Sequence[str] = TRANSITIONS,
                 switch_multiple: int = 3, min_segment: int = 6, resolution: int = RESOLUTION):
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length, self.num_frames, self.split, self.seed = length, num_frames, split, seed
        self.resolution = resolution
        self.layout = dict(switch_probs=tuple(switch_probs), modes=tuple(modes), switch_multiple=switch_multiple,
                           min_segment=min_segment)

    def __len__(self) -> int:
        return self.length

    def clip_seed(self, index: int) -> int:
        return _splitmix64((int(self.seed) << 32) ^ int(index)) >> 1

    def clip(self, index: int) -> Clip:
        """The rendered clip of ``index`` (any index >= 0; the dataset's length only bounds ``__getitem__``)."""
        if index < 0:
            raise IndexError(index)
        return clip_for_seed(self.clip_seed(index), self.num_frames, split=self.split, resolution=self.resolution,
                             **self.layout)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return clip_sample(self.clip(index))


class ShapeWorldStream(IterableDataset):
    """Iterable dataset: the clips of ShapeWorldClips(seed=seed) in index order, split across DataLoader workers
    (worker w of n takes indices w, w + n, ...), infinite when ``length`` is None."""

    def __init__(self, num_frames: int = 48, *, length: int | None = None, **kwargs: Any):
        self.clips = ShapeWorldClips(0, num_frames, **kwargs)
        self.length = length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = worker
        while self.length is None or index < self.length:
            yield clip_sample(self.clips.clip(index))
            index += workers


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep per-clip lists (captions, segment starts, ...) as lists of lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def measure_throughput(seconds: float = 2.0, num_frames: int = 48, **kwargs: Any) -> dict[str, float]:
    """Clips (and frames) per second of ShapeWorldClips on this machine, one process."""
    data = ShapeWorldClips(10**9, num_frames, **kwargs)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data[count]
        count += 1
    elapsed = time.perf_counter() - start
    return {"clips_per_s": count / elapsed, "frames_per_s": count * num_frames / elapsed, "clips": count}
