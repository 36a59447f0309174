"""ShapeWorld: a procedural world whose every frame an oracle can check.

```py
>>> from streamgen.world import sample_scene, render_clip, ClipSegment, read_frames, read_segment
>>> a, b = sample_scene(1), sample_scene(2)
>>> a.caption                                # a paraphrase, fixed by the seed; a.canonical_caption too
>>> clip = render_clip([ClipSegment(a, 24), ClipSegment(b, 24, "smooth"), ClipSegment(a, 24, "recall")])
>>> clip.frames.shape                        # uint8 (72, 32, 32, 3)
>>> read_segment(read_frames(clip.frames), 48, 72).names()   # {'background': ..., 'shape': ..., ...}
```

Modules: ``scenes`` (attributes, details, captions, train/held-out split), ``render`` (clips, transitions),
``oracle`` (pixels -> attributes), ``data`` (torch datasets for training), ``validate`` (oracle vs ground truth;
``python -m streamgen.world.validate`` prints the numbers below).

Design, with the numbers behind it (measured on this project's 2-core CPU machine, shared; 1,000-3,000 clips of
16 frames with cuts, smooth switches and recalls; accuracy = oracle reading == ground truth):

* Resolution 32x32 RGB. Patch 2x2 gives 256 tokens per frame; the random tiny pipeline at that size runs at
  24.8 FPS on 2 cores (README), just the >= 24 FPS budget, so 64x64 (1,024 tokens, >= 4x the work) cannot be
  real time. 16x16 is too small for the shapes: objects are 4-6 px, 14% of them vanish under the oracle's speck
  filter (objects found 86%, every object attribute <= 86%) and a 4 px triangle is a 4 px blob. At 32x32 the
  oracle reads every attribute of clean frames 100% right (3,000 clips, 48,000 frames; centroid error mean
  0.01 px, p99 0.10 px), and stays >= 99.4% under Gaussian blur sigma 1 px, 100% under blur 0.7 + noise 12.
  Rendering: ~11,000 frames/s; oracle: ~6,500 frames per CPU second.
* Shapes: circle, square, triangle (apex up), cross (arms 0.4 of the box, >= 3 px at size 8 so it survives the
  3x3 opening). A fifth shape, diamond, is also 100% on clean frames but drops shape accuracy from 99.9% to 95%
  under blur sigma 1 (diamond / circle / square confusions), so it is left out.
* Sizes (bounding box side) 8, 10, 12 px: areas differ by >= 44%, the oracle's size class is 100% right.
* Colours: 6 object colours (red, yellow, green, cyan, blue, magenta) and 5 backgrounds (black, white, gray, blue,
  green; a scene never uses one colour for both). Every object colour is >= 123 RGB units from every background
  (closest: green on gray), object colours >= 130 apart; the foreground threshold is 50. 896 attribute sets.
* Motion: left / right / up / down at slow 0.5 or fast 1.5 px/frame (8 and 24 px/s at 16 fps). 3x apart, so the
  speed threshold (the geometric mean, 0.87 px/frame) is 1.7x from either class; direction and speed are 100%
  right on clean and on blurred + noisy frames. The world is a torus (wrap-around): the direction always matches
  the caption and the object never stops at a wall.
* Unprompted details, from the scene seed: start position (half-pixel grid), size, and a 2x2 decoration dot whose
  colour is another object colour and whose position leaves >= 4 background lines between it and the band the
  object sweeps (~400 allowed positions on average), so it is never touched or occluded.
* Transitions: smooth = 4-frame cross-fade with the object gliding onto the new trajectory, cut = instant, recall
  = an earlier scene returns instantly with the same details, its object where it would be had it kept moving.
* Split: a fixed hash of the scene seed holds out one seed in 8 (``split_of``); the training data uses only train
  seeds, the quality benchmark only held-out ones.
"""

import importlib

from .oracle import FrameReadout, Motion, SegmentReadout, estimate_motion, read_clip, read_frames, read_segment
from .render import SMOOTH_FRAMES, TRANSITIONS, Clip, ClipSegment, PlacedSegment, render_clip, render_scene
from .scenes import (
    ATTRIBUTE_CLASSES, ATTRIBUTE_NAMES, BACKGROUNDS, COLORS, DIRECTIONS, OBJECT_COLORS, RESOLUTION, SHAPES, SIZES,
    SPEED_PX, SPEEDS, Attributes, Details, Draws, Scene, all_attributes, canonical_caption, caption,
    distinct_attributes, first_seeds, sample_attributes, sample_details, sample_scene, seeds_of_split, split_of,
)

__all__ = [
    "RESOLUTION", "COLORS", "OBJECT_COLORS", "BACKGROUNDS", "SHAPES", "DIRECTIONS", "SPEEDS", "SPEED_PX", "SIZES",
    "ATTRIBUTE_NAMES", "ATTRIBUTE_CLASSES", "Attributes", "Details", "Scene", "Draws", "all_attributes",
    "sample_attributes", "sample_details", "sample_scene", "caption", "canonical_caption", "distinct_attributes",
    "split_of", "seeds_of_split", "first_seeds",
    "TRANSITIONS", "SMOOTH_FRAMES", "ClipSegment", "PlacedSegment", "Clip", "render_clip", "render_scene",
    "FrameReadout", "Motion", "SegmentReadout", "read_frames", "read_segment", "read_clip", "estimate_motion",
    "ShapeWorldClips", "ShapeWorldStream", "sample_segments", "clip_for_seed", "clip_sample", "collate_clips",
]

# The datasets need torch; load them on first use so that the oracle and renderer stay numpy-only imports.
_LAZY = {name: "streamgen.world.data" for name in ("ShapeWorldClips", "ShapeWorldStream", "sample_segments",
                                                   "clip_for_seed", "clip_sample", "collate_clips")}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamgen.world' has no attribute {name!r}")
