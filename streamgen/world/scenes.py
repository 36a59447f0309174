"""ShapeWorld scenes: what a prompt says (attributes), what it leaves to chance (details), and its captions.

A :class:`Scene` is one moving object over a plain background plus a small static decoration:

    prompted    :class:`Attributes` — shape, object colour, background colour, motion direction, speed class
    unprompted  :class:`Details`    — start position, size, decoration position and colour (drawn from the seed)

Everything is deterministic by seed: ``sample_scene(seed)`` draws attributes, details and a caption from three
independent child streams of ``seed``, so ``sample_scene(seed, attributes=a)`` has the same details as
``sample_scene(seed)`` whenever that one happened to draw ``a``.

Train / held-out split: :func:`split_of` hashes the scene seed (splitmix64), 1 seed in :data:`HELDOUT_EVERY` is
held out. A scene's caption paraphrase is a function of its seed, so the split is over (caption, seed) pairs: the
training data never uses a held-out seed, the quality benchmark only uses held-out seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "RESOLUTION", "COLORS", "OBJECT_COLORS", "BACKGROUNDS", "SHAPES", "DIRECTIONS", "DIRECTION_VECTORS",
    "SPEEDS", "SPEED_PX", "SIZES", "DECORATION_PX", "DECORATION_MARGIN", "ATTRIBUTE_NAMES", "ATTRIBUTE_CLASSES",
    "HELDOUT_EVERY", "Draws", "Attributes", "Details", "Scene", "sample_attributes", "sample_details",
    "sample_scene", "all_attributes", "caption", "canonical_caption", "split_of", "seeds_of_split", "first_seeds",
    "decoration_positions", "decoration_colors", "distinct_attributes",
]

RESOLUTION = 32  # frames are RESOLUTION x RESOLUTION RGB (see streamgen.world for the measurements behind it)

# One colour table; object colours and backgrounds are two subsets that share blue and green (a scene never uses
# the same colour for both). Every object colour is >= 123 RGB units from every background colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 220),
    "magenta": (210, 50, 210),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
OBJECT_COLORS: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "magenta")
BACKGROUNDS: tuple[str, ...] = ("black", "white", "gray", "blue", "green")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS: tuple[str, ...] = ("slow", "fast")
SPEED_PX: dict[str, float] = {"slow": 0.5, "fast": 1.5}  # pixels per frame at RESOLUTION (16 fps: 8 and 24 px/s)
SIZES: tuple[int, ...] = (8, 10, 12)  # object extent (bounding box side) in pixels at RESOLUTION
DECORATION_PX = 2  # the decoration is a DECORATION_PX x DECORATION_PX dot, pixel aligned
DECORATION_MARGIN = 4  # pixel rows (columns) between the object's sweep band and the decoration

# Per-attribute class lists, in the order the oracle and the datasets use for label ids.
ATTRIBUTE_NAMES: tuple[str, ...] = ("background", "color", "shape", "direction", "speed")
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "background": BACKGROUNDS, "color": OBJECT_COLORS, "shape": SHAPES, "direction": DIRECTIONS, "speed": SPEEDS,
}

HELDOUT_EVERY = 8  # one scene seed in 8 is held out from training


# -----------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Attributes:
    """What a prompt says about a scene."""

    shape: str
    color: str
    background: str
    direction: str
    speed: str

    def __post_init__(self):
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value not in ATTRIBUTE_CLASSES[name]:
                raise ValueError(f"{name} must be one of {ATTRIBUTE_CLASSES[name]}, got {value!r}")
        if self.color == self.background:
            raise ValueError(f"object colour and background are both {self.color!r}: the object would be invisible")

    def ids(self) -> tuple[int, ...]:
        """Class index of each attribute, in ATTRIBUTE_NAMES order."""
        return tuple(ATTRIBUTE_CLASSES[name].index(getattr(self, name)) for name in ATTRIBUTE_NAMES)

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}

    @property
    def velocity(self) -> tuple[float, float]:
        """(vx, vy) in pixels per frame at RESOLUTION; y grows downwards."""
        ux, uy = DIRECTION_VECTORS[self.direction]
        return ux * SPEED_PX[self.speed], uy * SPEED_PX[self.speed]


@dataclass(frozen=True)
class Details:
    """What a prompt leaves to chance. Positions are in pixels at RESOLUTION, x to the right, y down.

    x, y        centre of the object's bounding box when the scene first appears (multiples of 0.5)
    size        side of the object's bounding box (one of SIZES)
    decoration  (x, y) of the decoration dot's top-left pixel
    decoration_color  one of OBJECT_COLORS, never the scene's object or background colour
    """

    x: float
    y: float
    size: int
    decoration: tuple[int, int]
    decoration_color: str


@dataclass(frozen=True)
class Scene:
    """A full ShapeWorld scene: attributes + details + the caption that prompts it."""

    attributes: Attributes
    details: Details
    caption: str
    seed: int | None = field(default=None, compare=False)

    @property
    def canonical_caption(self) -> str:
        return canonical_caption(self.attributes)


# -----------------------------------------------------------------------------
# Sampling


_MASK64 = 0xFFFFFFFFFFFFFFFF


class Draws:
    """A tiny counter-based random stream (splitmix64): the same numbers on every machine, Python and numpy
    version, and cheap to create (scenes are sampled by the thousand). ``Draws(seed, stream)``."""

    __slots__ = ("state",)

    def __init__(self, *key: int):
        state = 0x243F6A8885A308D3
        for k in key:
            state = _splitmix64(state ^ (int(k) & _MASK64))
        self.state = state

    def next64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        return _splitmix64(self.state)

    def integer(self, n: int) -> int:
        """Uniform in [0, n) (bias below 2**-50 for the small n used here)."""
        return self.next64() % n

    def uniform(self) -> float:
        """Uniform in [0, 1)."""
        return (self.next64() >> 11) / float(1 << 53)

    def choice(self, options):
        return options[self.integer(len(options))]

    def sample(self, options, count: int) -> list:
        """``count`` distinct elements of ``options`` (partial Fisher-Yates), in draw order."""
        pool = list(options)
        for i in range(count):
            j = i + self.integer(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:count]


def _draws(rng: "Draws | int", stream: int) -> Draws:
    return rng if isinstance(rng, Draws) else Draws(int(rng), stream)


@lru_cache(maxsize=None)
def all_attributes() -> tuple[Attributes, ...]:
    """Every valid attribute combination (object colour != background), in a fixed order."""
    return tuple(
        Attributes(shape, color, background, direction, speed)
        for shape in SHAPES for color in OBJECT_COLORS for background in BACKGROUNDS
        for direction in DIRECTIONS for speed in SPEEDS if color != background
    )


def sample_attributes(rng: Draws | int) -> Attributes:
    """Uniform over :func:`all_attributes` (``rng``: a Draws stream or a seed)."""
    return _draws(rng, 1).choice(all_attributes())


def _torus_distance(a: np.ndarray, b: float, period: int) -> np.ndarray:
    d = np.abs(a - b) % period
    return np.minimum(d, period - d)


@lru_cache(maxsize=4096)
def decoration_positions(direction: str, cross: float, size: int) -> np.ndarray:
    """Every allowed top-left (x, y) of the decoration, int [K, 2], for an object of ``size`` moving along
    ``direction`` whose cross-axis coordinate (y for left/right, x for up/down) is ``cross``: the dot stays more
    than DECORATION_MARGIN pixel lines away from the band the object sweeps, so the object never touches it."""
    n = RESOLUTION
    centres = np.arange(n) + 0.5
    # pixel lines (rows or columns) the anti-aliased object can touch: centre within size/2 + 0.5 of its axis
    lines = np.flatnonzero(_torus_distance(centres, cross, n) < size / 2 + 0.5)
    dist = np.min(_torus_distance(np.arange(n)[:, None], lines[None, :], n), axis=1)
    free = dist > DECORATION_MARGIN
    ok = free.copy()
    for k in range(1, DECORATION_PX):
        ok &= np.roll(free, -k)
    starts = np.flatnonzero(ok)
    along = np.arange(n)
    cross_ids, along_ids = np.repeat(starts, n), np.tile(along, len(starts))
    xy = np.stack([along_ids, cross_ids], 1) if direction in ("left", "right") else np.stack([cross_ids, along_ids], 1)
    xy.setflags(write=False)
    return xy


def decoration_colors(attributes: Attributes) -> tuple[str, ...]:
    """Decoration colours allowed in a scene: object colours other than its object and background colours."""
    return tuple(c for c in OBJECT_COLORS if c not in (attributes.color, attributes.background))


def sample_details(attributes: Attributes, rng: Draws | int) -> Details:
    """Unprompted details: size, start position (on a half-pixel grid) and a decoration clear of the object."""
    rng = _draws(rng, 2)
    size = rng.choice(SIZES)
    x, y = rng.integer(2 * RESOLUTION) / 2, rng.integer(2 * RESOLUTION) / 2
    cross = y if attributes.direction in ("left", "right") else x
    positions = decoration_positions(attributes.direction, cross, size)
    decoration = positions[rng.integer(len(positions))]
    color = rng.choice(decoration_colors(attributes))
    return Details(x, y, size, (int(decoration[0]), int(decoration[1])), color)


def sample_scene(seed: int, attributes: Attributes | None = None, *, canonical: bool = False) -> Scene:
    """The scene of ``seed``: attributes (unless given), details and caption, each from its own stream of the seed.
    ``canonical=True`` uses the canonical caption instead of a paraphrase."""
    if attributes is None:
        attributes = sample_attributes(Draws(seed, 1))
    details = sample_details(attributes, Draws(seed, 2))
    text = canonical_caption(attributes) if canonical else caption(attributes, Draws(seed, 3))
    return Scene(attributes, details, text, seed)


# -----------------------------------------------------------------------------
# Captions: a small grammar with paraphrases; the first choice of every slot gives the canonical caption.

_SHAPE_WORDS = {"circle": ("circle", "disc", "ball"), "square": ("square", "box", "block"),
                "triangle": ("triangle",), "cross": ("cross", "plus sign")}
_COLOR_WORDS = {name: (name,) for name in COLORS}
_COLOR_WORDS["gray"] = ("gray", "grey")
_MOTION_WORDS = {"slow": ("drifting", "moving slowly", "gliding slowly", "creeping"),
                 "fast": ("racing", "moving quickly", "darting", "speeding")}
_DIRECTION_WORDS = {"left": ("left", "to the left", "leftward"), "right": ("right", "to the right", "rightward"),
                    "up": ("up", "upward", "toward the top"), "down": ("down", "downward", "toward the bottom")}
_BACKGROUND_PHRASES = ("over a {b} backdrop", "on a {b} background", "against a {b} background",
                       "in front of a {b} wall")
_TEMPLATES = (
    "a {c} {s} {m} {d} {bp}",
    "{c} {s} {m} {d}, {b} background",
    "on a {b} background, a {c} {s} is {m} {d}",
    "a {b} backdrop with a {c} {s} {m} {d}",
)


def caption(attributes: Attributes, rng: Draws | int) -> str:
    """A paraphrase of ``attributes``, chosen by ``rng`` (a Draws stream or a seed)."""
    pick = _draws(rng, 3).choice

    a = attributes
    template = pick(_TEMPLATES)
    c, s, m, d = (pick(_COLOR_WORDS[a.color]), pick(_SHAPE_WORDS[a.shape]), pick(_MOTION_WORDS[a.speed]),
                  pick(_DIRECTION_WORDS[a.direction]))
    b = pick(_COLOR_WORDS[a.background])
    bp = pick(_BACKGROUND_PHRASES).format(b=b)
    return template.format(c=c, s=s, m=m, d=d, b=b, bp=bp)


def canonical_caption(attributes: Attributes) -> str:
    """The one canonical caption, e.g. "a red circle drifting left over a blue backdrop"."""
    a = attributes
    return _TEMPLATES[0].format(c=a.color, s=a.shape, m=_MOTION_WORDS[a.speed][0], d=a.direction,
                                bp=_BACKGROUND_PHRASES[0].format(b=a.background), b=a.background)


# -----------------------------------------------------------------------------
# Train / held-out split


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def split_of(seed: int) -> str:
    """"train" or "heldout" for a scene seed (a fixed hash: the same on every machine and version)."""
    return "heldout" if _splitmix64(int(seed)) % HELDOUT_EVERY == 0 else "train"


def seeds_of_split(split: str, start: int = 0) -> Iterator[int]:
    """The scene seeds of ``split`` ("train" or "heldout") from ``start`` upwards, in order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    seed = int(start)
    while True:
        if split_of(seed) == split:
            yield seed
        seed += 1


def first_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """The first ``count`` seeds of ``split`` at or after ``start``."""
    out: list[int] = []
    for seed in seeds_of_split(split, start):
        if len(out) == count:
            break
        out.append(seed)
    return out


def distinct_attributes(a: Attributes, rng: Draws | int, fields: Sequence[str] = ATTRIBUTE_NAMES) -> Attributes:
    """A random attribute set that differs from ``a`` in every one of ``fields`` (used for switches whose old and
    new scenes must be told apart)."""
    candidates = [b for b in all_attributes() if all(getattr(b, f) != getattr(a, f) for f in fields)]
    return _draws(rng, 4).choice(candidates)
