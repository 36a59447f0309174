"""Prompt schedules: which prompt plays when, and how the stream moves between prompts.

One data model, three input formats, one kind of error.

Data model (:mod:`.model`)
    Schedule    an ordered tuple of Segments (+ optional seed and fps); validated on construction.
    Segment     one prompt, how long it lasts and/or where it starts, and how it is entered.
    Transition  smooth (the new scene grows out of the old one), cut, or recall (an earlier
                scene comes back); the one vocabulary of :mod:`streamgen.transitions`.
    Schedule.plan(...) resolves a schedule to the generator's grid: a list of PlannedSegments
    in latent frames whose switches sit on chunk boundaries.

Formats (all parsers return list[Schedule]; JSONL and Echo files hold one video per line)
    yaml / json   the native format, one schedule per file (:mod:`.native`)
    jsonl         LongLive / Anchor Forcing: {"prompts": [...], "seed": N} per line (:mod:`.longlive`)
    echo          Echo-Forcing: "scene A [10s#] | scene B [5s@] | scene A [10s]" per line, and plain prompt
                  lists (a .txt line without a duration marker is one prompt) (:mod:`.echo`)
    YAML and JSON are read into positioned trees first (:mod:`.trees`); :mod:`.load` picks the format.

Errors (:mod:`.errors`)
    Every malformed input raises ScheduleError (a ValueError) naming file, line and column,
    e.g. ``prompts.yaml:3:7: segment 2: 'frames' must be a positive integer, got -3``.
    Nothing else escapes `parse_schedule_text` and `load_schedules`.
"""

from ..transitions import Transition
from .errors import ScheduleError
from .load import FORMATS, load_schedules, parse_schedule_text
from .model import START_KEYS, UNITS, PlannedSegment, Schedule, Segment, Unit

__all__ = ["ScheduleError", "Transition", "Unit", "UNITS", "START_KEYS", "Segment", "PlannedSegment", "Schedule",
           "FORMATS", "parse_schedule_text", "load_schedules"]
