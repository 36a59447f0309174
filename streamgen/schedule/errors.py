"""The one error type of schedules, and how values appear in its messages."""

from __future__ import annotations

from typing import Any


class ScheduleError(ValueError):
    """A schedule is malformed. `line` and `column` are 1-based (None only when unknown).

    `segment` (0-based) and `field` say which part of the schedule was wrong; parsers use
    them to point at the offending spot in the file.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None,
                 source: str | None = None, segment: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        self.segment = segment
        self.field = field

    def __str__(self) -> str:
        where = ":".join(str(part) for part in (self.source, self.line, self.column) if part is not None)
        return f"{where}: {self.message}" if where else self.message


def show(value: Any) -> str:
    """A value as it would appear in a file, shortened for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
