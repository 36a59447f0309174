"""A camera world's map: a large flat ground in one colour, scattered with ShapeWorld shapes that stay put, plus a
few movers, all fixed by a seed.

World frame (right-handed): X east, Y south, Z down into the ground; the ground is the plane Z = 0 and one world
unit is one ShapeWorld pixel (at the default camera height a frame shows 1 unit per pixel). Static objects keep at
least ``spacing`` units between centres, so at any zoom each is its own connected blob. Movers glide along an axis
at ShapeWorld's speeds and wrap around the map's square (a torus for movers only); they are drawn over the statics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scenes import (
    BACKGROUNDS, DIRECTION_VECTORS, DIRECTIONS, OBJECT_COLORS, SHAPES, SIZES, SPEED_PX, Draws, seeds_of_split,
)

__all__ = ["MapObject", "WorldMap", "sample_map", "map_seed", "map_caption", "PALETTE_SIZE"]

PALETTE_SIZE = 3  # object colours per map: the caption names them all


@dataclass(frozen=True)
class MapObject:
    """One shape on the ground: centre (x, y) at time 0, bounding-box side ``size`` (world units), velocity in
    units per frame (0 for a static object)."""

    shape: str
    color: str
    size: float
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0

    @property
    def moving(self) -> bool:
        return self.vx != 0.0 or self.vy != 0.0


@dataclass(frozen=True)
class WorldMap:
    """A seeded map: ``extent`` x ``extent`` units of ``background`` ground (the ground goes on beyond, empty)."""

    seed: int
    extent: float
    background: str
    palette: tuple[str, ...]
    objects: tuple[MapObject, ...]

    @property
    def statics(self) -> tuple[MapObject, ...]:
        return tuple(o for o in self.objects if not o.moving)

    @property
    def caption(self) -> str:
        return map_caption(self.background, self.palette)

    def positions(self, time: float) -> np.ndarray:
        """Object centres [N, 2] at frame ``time`` (movers wrap around the map)."""
        base = np.array([(o.x, o.y) for o in self.objects], np.float64).reshape(-1, 2)
        velocity = np.array([(o.vx, o.vy) for o in self.objects], np.float64).reshape(-1, 2)
        moved = base + velocity * time
        moving = np.any(velocity != 0, axis=1)
        moved[moving] %= self.extent
        return moved


def map_seed(split: str, n: int) -> int:
    """The map seed of the ``n``-th clip or flight of ``split`` ("train" or "held-out" maps: ShapeWorld's seed split):
    the first such seed at or after n * 7919, so that consecutive n give unrelated maps."""
    return next(seeds_of_split(split, start=n * 7919))


def map_caption(background: str, palette) -> str:
    """The caption of a map with this ground colour and palette of object colours."""
    *first, last = palette
    colours = f"{', '.join(first)} and {last}" if first else last
    return f"a top-down flight over {colours} shapes scattered on a {background} ground"


def sample_map(seed: int, *, extent: float = 256.0, statics: int = 90, movers: int = 3, spacing: float = 20.0,
               attempts: int = 20_000) -> WorldMap:
    """The map of ``seed``: a background, a palette of PALETTE_SIZE object colours, up to ``statics`` static
    shapes at least ``spacing`` apart (dart throwing; fewer if the square is full) and ``movers`` moving ones."""
    if extent <= 2 * spacing:
        raise ValueError(f"extent {extent} is too small for objects {spacing} apart")
    draws = Draws(seed, 11)
    background = draws.choice(BACKGROUNDS)
    palette = tuple(draws.sample([c for c in OBJECT_COLORS if c != background], PALETTE_SIZE))
    margin = max(SIZES)
    placed: list[MapObject] = []
    centres = np.zeros((0, 2))
    for _ in range(attempts):
        if len(placed) == statics:
            break
        x = margin + draws.uniform() * (extent - 2 * margin)
        y = margin + draws.uniform() * (extent - 2 * margin)
        if len(centres) and np.min(np.hypot(centres[:, 0] - x, centres[:, 1] - y)) < spacing:
            continue
        placed.append(MapObject(draws.choice(SHAPES), draws.choice(palette), float(draws.choice(SIZES)), x, y))
        centres = np.vstack([centres, [x, y]])
    for _ in range(movers):
        ux, uy = DIRECTION_VECTORS[draws.choice(DIRECTIONS)]
        speed = SPEED_PX[draws.choice(tuple(SPEED_PX))]
        placed.append(MapObject(draws.choice(SHAPES), draws.choice(palette), float(draws.choice(SIZES)),
                                draws.uniform() * extent, draws.uniform() * extent, ux * speed, uy * speed))
    return WorldMap(int(seed), float(extent), background, palette, tuple(placed))
