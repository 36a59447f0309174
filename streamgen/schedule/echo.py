"""Echo-Forcing text: one video per non-empty line::

  scene A [10s#] | scene B [5s@] | scene A [10s] ; optional subtitles

Scenes are separated by "|" (so prompts cannot contain it) and each ends with its duration
in seconds in brackets. As in the Echo-Forcing release, a scene's suffix says how the NEXT
scene is entered: none = smooth, "#" = cut, "@" = recall (the last scene's suffix has no
next scene and is ignored; the first scene is entered plainly). Text after the first ";"
is the release's subtitles and is ignored. A line whose first non-blank character is "#"
followed by a blank (or nothing) is a comment; "#hashtag [5s]" is a scene.
"""

from __future__ import annotations

import re

from ..transitions import Transition
from .errors import ScheduleError
from .model import Schedule, Segment
from .trees import Node, error_at, moved_to

ECHO_DURATION = re.compile(r"\[([0-9]+\.?[0-9]*)\s*s([#@])?\]")
_ECHO_TRANSITIONS = {None: Transition.SMOOTH, "#": Transition.CUT, "@": Transition.RECALL}


def is_comment(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("#") and (len(stripped) == 1 or stripped[1].isspace())


def parse_echo(text: str) -> list[Schedule]:
    schedules = [
        _schedule_from_echo(line, number)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip() and not is_comment(line)
    ]
    if not schedules:
        raise ScheduleError("the file is empty", line=1, column=1)
    return schedules


def _schedule_from_echo(line: str, number: int) -> Schedule:
    segments, places = [], {}
    offset = 0  # where the current scene's text starts in the line
    entry = Transition.SMOOTH  # how the next scene is entered: the previous scene's suffix
    for i, part in enumerate(line.split(";", 1)[0].split("|")):
        body = part.strip()
        scene = Node(None, number, offset + len(part) - len(part.lstrip()) + 1)
        bracket_at = part.rstrip().rfind("[")
        bracket = Node(None, number, offset + bracket_at + 1)
        offset += len(part) + 1
        if not body:
            raise error_at(f"scene {i + 1} is empty", scene)
        if not body.endswith("]") or bracket_at < 0:
            raise error_at(f"scene {i + 1} must end with its duration in seconds, "
                         f"like [5s], [5s#] (a cut into the next scene) or [5s@] (a recall)", scene)
        duration = ECHO_DURATION.fullmatch(part.rstrip(), bracket_at)
        if duration is None:
            raise error_at(f"scene {i + 1}: bad duration {part.rstrip()[bracket_at:]!r}, "
                         f"expected e.g. [5s], [2.5s#] or [10s@]", bracket)
        places[(i, "prompt")], places[(i, "seconds")] = scene, bracket
        segments.append(Segment(part[:bracket_at].strip(), float(duration.group(1)), "seconds", transition=entry))
        entry = _ECHO_TRANSITIONS[duration.group(2)]
    try:
        return Schedule(tuple(segments))
    except ScheduleError as e:
        raise moved_to(e, places.get((e.segment, e.field)) or places[(e.segment, "prompt")]) from None
