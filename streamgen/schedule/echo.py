"""Echo-Forcing text, and plain prompt lists: one video per non-empty line::

  scene A [10s#] | scene B [5s@] | scene A [10s] ; optional subtitles
  a plain prompt, the whole line, for the whole video

A line with a scene duration marker ([Ns], [Ns#], [Ns@]) anywhere is an Echo-Forcing line; any other line is one
prompt (the plain lists of LongLive's ``long_example.txt``, Self-Forcing's MovieGenBench / VBench files and
Echo-Forcing's own ``moviegenbench_128_refined.txt``), taken whole.

An Echo line is read as the release reads it: scenes are separated by "|" (so prompts cannot contain it); empty
scenes are skipped; a scene's duration marker may sit anywhere in it (the first one counts, every marker is removed
from the prompt); a scene without one lasts the release's default (``ECHO_DEFAULT_SCENE_CHUNKS`` chunks). A scene's
suffix says how the NEXT scene is entered: none = smooth, "#" = cut, "@" = recall (the last scene's suffix has no
next scene and is ignored; the first scene is entered plainly). Text after the first ";" is the release's subtitles
and is ignored. The schedule keeps the release's timing (whole chunks, rounded down: :meth:`Schedule.plan`). A line
whose first non-blank character is "#" followed by a blank (or nothing) is a comment; "#hashtag [5s]" is a scene.
"""

from __future__ import annotations

import re

from ..transitions import Transition
from .errors import ScheduleError
from .model import Schedule, Segment
from .trees import Node, moved_to

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
    scenes = line.split(";", 1)[0]
    if ECHO_DURATION.search(scenes) is None:
        try:
            return Schedule.single(line.strip())
        except ScheduleError as e:
            raise moved_to(e, Node(None, number, len(line) - len(line.lstrip()) + 1)) from None
    segments, places = [], {}
    offset = 0  # where the current scene's text starts in the line
    entry = Transition.SMOOTH  # how the next scene is entered: the previous scene's suffix
    for part in scenes.split("|"):
        begin, offset = offset, offset + len(part) + 1
        if not part.strip():
            continue  # as in the release: an empty scene is no scene
        duration = ECHO_DURATION.search(part)
        i = len(segments)
        places[(i, "prompt")] = Node(None, number, begin + len(part) - len(part.lstrip()) + 1)
        if duration is not None:
            places[(i, "seconds")] = Node(None, number, begin + duration.start() + 1)
        seconds = float(duration.group(1)) if duration else None
        segments.append(Segment(ECHO_DURATION.sub("", part).strip(), seconds, "seconds", transition=entry))
        entry = _ECHO_TRANSITIONS[duration.group(2) if duration else None]
    try:
        return Schedule(tuple(segments), timing="echo-forcing")
    except ScheduleError as e:
        raise moved_to(e, places.get((e.segment, e.field)) or places[(e.segment, "prompt")]) from None
