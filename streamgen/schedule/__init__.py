"""Prompt schedules: which prompt plays when, and how the stream moves between prompts (see :mod:`.model`)."""

from .model import (
    FORMATS, START_KEYS, UNITS, PlannedSegment, Schedule, ScheduleError, Segment, Transition, Unit, load_schedules,
    parse_schedule_text,
)

__all__ = ["ScheduleError", "Transition", "Unit", "UNITS", "START_KEYS", "Segment", "PlannedSegment", "Schedule",
           "FORMATS", "parse_schedule_text", "load_schedules"]
