"""README media for ShapeWorld: ``python -m streamgen.world.media assets/world`` writes

  shapeworld-switch.gif   A (3 s) -> B by a smooth switch (3 s) -> A recalled (3 s), 16 fps, upscaled 4x
  shapeworld-sheet.png    one frame of every shape in every object colour, on each background, upscaled 2x

Deterministic: the same files every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from .render import ClipSegment, render_clip, render_scene
from .scenes import BACKGROUNDS, OBJECT_COLORS, SHAPES, Attributes, sample_scene


def switch_clip() -> np.ndarray:
    a = sample_scene(6, Attributes("circle", "red", "blue", "left", "slow"))
    b = sample_scene(29, Attributes("square", "yellow", "green", "right", "fast"))
    return render_clip([ClipSegment(a, 48), ClipSegment(b, 48, "smooth"), ClipSegment(a, 48, "recall")]).frames


def sheet() -> np.ndarray:
    rows = []
    for background in BACKGROUNDS:
        tiles = []
        for shape in SHAPES:
            for color in OBJECT_COLORS:
                if color == background:
                    tiles.append(np.full((32, 32, 3), 255, np.uint8))
                    continue
                scene = sample_scene(2, Attributes(shape, color, background, "right", "slow"))  # size 12, central
                tiles.append(render_scene(scene, 1)[0])
        rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], 1))
    return np.concatenate(rows, 0)


def write_readme_media(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = np.repeat(np.repeat(switch_clip(), 4, axis=1), 4, axis=2)
    gif = out / "shapeworld-switch.gif"
    imageio.mimsave(gif, list(frames), duration=1000 / 16, loop=0)
    png = out / "shapeworld-sheet.png"
    big = np.repeat(np.repeat(sheet(), 2, axis=0), 2, axis=1)
    cv2.imwrite(str(png), big[..., ::-1])
    return [gif, png]


if __name__ == "__main__":  # pragma: no cover
    for path in write_readme_media(sys.argv[1] if len(sys.argv) > 1 else "assets/world"):
        print(path, path.stat().st_size, "bytes")
