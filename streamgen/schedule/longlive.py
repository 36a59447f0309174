"""LongLive / Anchor Forcing JSONL: one video per non-empty line::

  {"prompts": ["p1", "p2", "p3"], "seed": 7, "switch_frame_indices": [40, 80]}

"seed", "num" and "switch_frame_indices" are optional; the switch indices (latent frames, one
fewer than prompts, strictly increasing, > 0) may instead be passed to the parser for every line
(a line's own key wins). Prompt i starts at the first chunk at or after switch_frame_indices[i - 1]
and plays at least one chunk (LongLive's loop switches at most once per chunk); the last one runs
to the end; all transitions are smooth. "seed" seeds the line's video once, at its start (the
releases call set_seed once per line and draw noise on). "num" is Anchor Forcing's sample counter
(its release skips num // 8 samples drawn from the seed first); it is accepted and checked, not
replayed: that skip depends on the release's own noise draws.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ScheduleError, show
from .model import Schedule, Segment, is_int
from .trees import JsonReader, Node, error_at, mapping_fields, moved_to, scalar_field

_LONGLIVE_KEYS = ("prompts", "seed", "num", "switch_frame_indices")


def _check_switch_indices(items: Sequence[tuple[Any, Node | None]], what: str) -> list[int]:
    previous = 0
    for k, (value, node) in enumerate(items):
        if not is_int(value) or value <= previous:
            # A switch at 0 would mean the first prompt never plays, so indices start at 1.
            raise error_at(f"{what}[{k}] must be an integer greater than {previous} "
                         f"(switch points are latent frames in increasing order), "
                         f"got {show(value)}", node)
        previous = value
    return [value for value, _ in items]


def parse_longlive(text: str, switch_frame_indices: Sequence[int] | None) -> list[Schedule]:
    default = None
    if switch_frame_indices is not None:
        if isinstance(switch_frame_indices, (str, bytes)) or not isinstance(switch_frame_indices, Sequence):
            raise ScheduleError("the switch_frame_indices argument must be a list of integers, "
                                f"got {show(switch_frame_indices)}")
        default = _check_switch_indices([(v, None) for v in switch_frame_indices],
                                        "switch_frame_indices argument")
    schedules = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            root = JsonReader(line, first_line=number).document()
            schedules.append(_schedule_from_longlive(root, default))
    if not schedules:
        raise ScheduleError("the file is empty", line=1, column=1)
    return schedules


def _schedule_from_longlive(root: Node, default_indices: list[int] | None) -> Schedule:
    fields = mapping_fields(root, "the line", _LONGLIVE_KEYS)
    if "prompts" not in fields:
        raise error_at("the line needs a 'prompts' list", root)
    prompts = fields["prompts"]
    if not isinstance(prompts.value, list) or not prompts.value:
        raise error_at(f"'prompts' must be a non-empty list of strings, got {show(prompts.value)}", prompts)
    for k, node in enumerate(prompts.value):
        if isinstance(node.value, (dict, list)):
            raise error_at(f"prompts[{k}] must be a string, got {show(node.value)}", node)

    count = len(prompts.value) - 1
    if "switch_frame_indices" in fields:
        where = fields["switch_frame_indices"]
        if not isinstance(where.value, list):
            raise error_at(f"'switch_frame_indices' must be a list of integers, "
                         f"got {show(where.value)}", where)
        indices = _check_switch_indices([(n.value, n) for n in where.value], "switch_frame_indices")
    else:
        where, indices = prompts, default_indices
        if indices is None and count:
            raise error_at(f"{count + 1} prompts need {count} switch_frame_indices; add a "
                         f"'switch_frame_indices' key or pass switch_frame_indices=...", prompts)
        indices = indices or []
    if len(indices) != count:
        raise error_at(f"{count + 1} prompts need {count} switch_frame_indices, got {len(indices)}", where)

    starts = [0, *indices]
    segments = [
        Segment(node.value, starts[i + 1] - starts[i] if i < count else None, "latent_frames",
                start=starts[i])
        for i, node in enumerate(prompts.value)
    ]
    seed = scalar_field(fields, "seed")
    num = scalar_field(fields, "num")
    if num is not None and (not is_int(num) or num < 0):
        raise error_at(f"'num' must be a non-negative integer, got {show(num)}", fields["num"])
    try:
        return Schedule(tuple(segments), seed=seed, timing="longlive")
    except ScheduleError as e:
        if e.field == "prompt":
            node = prompts.value[e.segment]
        else:
            node = fields.get(e.field or "", root)
        raise moved_to(e, node) from None
