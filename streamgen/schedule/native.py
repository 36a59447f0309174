"""The native format (YAML or JSON), one schedule per file::

  fps: 16                  # optional: frame rate for seconds (else plan()'s fps)
  seed: 0                  # optional: seeds the stream once, at its start
  timing: streamgen        # optional: streamgen | echo-forcing | longlive (whose switch timing)
  segments:
    - prompt: "a red circle drifting left over a blue backdrop"
      seconds: 3           # at most one of frames | seconds | latent_frames;
                           # none = until the end (last segment only)
      start_frame: 0       # optional; or start_second | start_latent_frame
      transition: smooth   # optional: smooth | cut | recall
      seed: 1              # optional

Unknown keys are errors, so typos are never silently ignored.
"""

from __future__ import annotations

from typing import Sequence

from ..transitions import Transition
from .errors import ScheduleError, show
from .model import START_KEYS, UNITS, Schedule, Segment
from .trees import Node, error_at, mapping_fields, moved_to, scalar_field

_TOP_KEYS = ("fps", "seed", "timing", "segments")
_SEGMENT_KEYS = ("prompt", *UNITS, *START_KEYS.values(), "transition", "seed")
_UNIT_OF_START_KEY = {key: unit for unit, key in START_KEYS.items()}


def _only_one(fields: dict[str, Node], keys: Sequence[str], what: str) -> str | None:
    present = [name for name in fields if name in keys]
    if len(present) > 1:
        raise error_at(f"{what}: give only one of {', '.join(map(repr, keys))}, "
                     f"got both {present[0]!r} and {present[1]!r}", fields[present[1]])
    return present[0] if present else None


def schedule_from_tree(root: Node) -> Schedule:
    """Native format: a positioned tree (from YAML, JSON or Python data) -> Schedule."""
    top = mapping_fields(root, "the schedule", _TOP_KEYS)
    if "segments" not in top:
        raise error_at("the schedule needs a 'segments' list", root)
    if not isinstance(top["segments"].value, list):
        raise error_at(f"'segments' must be a list, got {show(top['segments'].value)}", top["segments"])

    # Where each (segment, field) sits in the file, to place Schedule's validation errors.
    places: dict[tuple[int | None, str | None], Node] = {(None, None): root}
    places.update(((None, name), node) for name, node in top.items())

    segments = []
    for i, node in enumerate(top["segments"].value):
        what = f"segment {i + 1}"
        fields = mapping_fields(node, what, _SEGMENT_KEYS)
        places[(i, None)] = node
        places.update(((i, name), value) for name, value in fields.items())
        if "prompt" not in fields:
            raise error_at(f"{what}: missing 'prompt'", node)
        length_key = _only_one(fields, UNITS, what)
        start_key = _only_one(fields, list(START_KEYS.values()), what)
        segments.append(Segment(
            prompt=scalar_field(fields, "prompt", what),
            length=scalar_field(fields, length_key, what) if length_key else None,
            unit=length_key or _UNIT_OF_START_KEY.get(start_key, "latent_frames"),
            start=scalar_field(fields, start_key, what) if start_key else None,
            start_unit=_UNIT_OF_START_KEY.get(start_key),
            transition=scalar_field(fields, "transition", what) if "transition" in fields
            else Transition.SMOOTH,
            seed=scalar_field(fields, "seed", what),
        ))
    seed, fps = scalar_field(top, "seed"), scalar_field(top, "fps")
    timing = scalar_field(top, "timing") if "timing" in top else "streamgen"
    try:
        return Schedule(tuple(segments), seed=seed, fps=fps, timing=timing)
    except ScheduleError as e:
        node = places.get((e.segment, e.field)) or places.get((e.segment, None)) or root
        raise moved_to(e, node) from None
