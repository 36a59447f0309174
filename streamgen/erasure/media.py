"""The before/after GIF pair: one prompt schedule streamed by the original pipeline and by the pipeline with erasure
LoRAs fused, on the same seed, each upscaled (nearest neighbour) as ``scripts/mp4_to_gif.py`` does for the README.

``streamgen erase ... --gif DIR`` writes it for the concepts it erased (all LoRAs fused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# A scene without the concepts, then a cut into a prompt that asks for them (white backdrop, red object).
DEFAULT_SCHEDULE = (("a yellow square drifting right over a black backdrop", 33), ("a red circle drifting left over a white backdrop", 63))


def stream_frames(pipe, schedule, seed: int = 0) -> np.ndarray:
    """uint8 [F, H, W, 3] of ``schedule`` ((prompt, video frames), ...; cuts between them) on ``pipe``."""
    import torch

    from ..schedule import Schedule, Segment

    segments = tuple(Segment(prompt, frames, "frames", transition="cut") for prompt, frames in schedule)
    total = sum(frames for _, frames in schedule)
    stream = pipe.stream(schedule=Schedule(segments), num_frames=total, generator=torch.Generator().manual_seed(seed))
    return np.concatenate([chunk.frames[0] for chunk in stream])[:total]


def write_gif(frames: np.ndarray, path: Path, scale: int = 4, fps: float = 16.0) -> Path:
    import imageio.v3 as iio

    frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    return path


def before_after(pipe, loras: list[str | Path], out: Path, schedule=DEFAULT_SCHEDULE, seed: int = 0,
                 scale: int = 4) -> dict:
    """Write ``before.gif`` (original) and ``after.gif`` (LoRAs fused) into ``out``; returns the oracle's per-frame
    background and colour labels of both, for the caption."""
    from ..world.oracle import read_frames
    from ..world.scenes import BACKGROUNDS, OBJECT_COLORS, SHAPES

    before = stream_frames(pipe, schedule, seed)
    for k, lora in enumerate(loras):
        pipe.load_lora_weights(lora, adapter_name=f"gif-{k}")
    try:
        after = stream_frames(pipe, schedule, seed)
    finally:
        pipe.unload_lora_weights()
    write_gif(before, out / "before.gif", scale)
    write_gif(after, out / "after.gif", scale)

    def labels(frames):
        r = read_frames(frames)
        return {"background": [BACKGROUNDS[i] if i >= 0 else None for i in r.background],
                "color": [OBJECT_COLORS[i] if i >= 0 else None for i in r.color],
                "shape": [SHAPES[i] if i >= 0 else None for i in r.shape]}

    summary = {"schedule": [list(s) for s in schedule], "seed": seed, "loras": [str(p) for p in loras],
               "before": labels(before), "after": labels(after)}
    (out / "gif-oracle.json").write_text(json.dumps(summary) + "\n")
    return summary
