"""Entry points: parse schedules from text in any of the formats, or load them from a file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from .echo import ECHO_DURATION, is_comment, parse_echo
from .errors import ScheduleError
from .longlive import parse_longlive
from .model import Schedule
from .native import schedule_from_tree
from .trees import JsonReader, tree_from_yaml

FORMATS = ("auto", "yaml", "json", "jsonl", "echo")
_FORMAT_OF_SUFFIX = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".jsonl": "jsonl", ".txt": "echo"}


def _sniff(text: str) -> str:
    """Guess the format of raw text from its first line that is not blank or a comment:
    '{' or '[' -> JSON ('jsonl' if that line mentions "prompts"); an Echo duration like [5s]
    -> 'echo'; anything else -> 'yaml'. Pass format=... when in doubt."""
    first = next((line.strip() for line in text.split("\n")
                  if line.strip() and not is_comment(line)), "")
    if first.startswith(("{", "[")):
        return "jsonl" if '"prompts"' in first else "json"
    if ECHO_DURATION.search(first):
        return "echo"
    return "yaml"


def parse_schedule_text(text: str, format: str = "auto", *,
                        switch_frame_indices: Sequence[int] | None = None,
                        source: str | None = None) -> list[Schedule]:
    """Parse schedules from text in one of FORMATS ("auto" sniffs, see `_sniff`).

    switch_frame_indices only applies to "jsonl". `source` names the text in errors and is
    stored in every Schedule. Raises ScheduleError, and nothing else, for malformed input.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        if format not in FORMATS:
            raise ScheduleError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        text = text.removeprefix("\ufeff")  # a byte-order mark is not content
        if format == "auto":
            format = _sniff(text)
        if switch_frame_indices is not None and format != "jsonl":
            raise ScheduleError(f"switch_frame_indices only applies to the jsonl format, "
                                f"not {format}")
        if format == "yaml":
            schedules = [schedule_from_tree(tree_from_yaml(text))]
        elif format == "json":
            schedules = [schedule_from_tree(JsonReader(text).document())]
        elif format == "jsonl":
            schedules = parse_longlive(text, switch_frame_indices)
        else:
            schedules = parse_echo(text)
    except ScheduleError as error:
        if error.source is None:
            error.source = source
        raise
    if source is not None:
        schedules = [dataclasses.replace(s, source=source) for s in schedules]
    return schedules


MAX_SCHEDULE_BYTES = 16 * 2**20


def load_schedules(path_or_text: str | os.PathLike | bytes, *, format: str = "auto",
                   switch_frame_indices: Sequence[int] | None = None) -> list[Schedule]:
    """Load schedules from a file, or from raw text (str) or file contents (bytes).

    A str is a path if it has no newline and names an existing file or ends in a known
    extension (.yaml .yml .json .jsonl .txt); otherwise it is the schedule text itself.
    With format="auto" a file's format comes from its extension (.txt = echo), else from
    sniffing the text. Files must be UTF-8. Unreadable files raise ScheduleError too.
    """
    source = None
    if isinstance(path_or_text, bytes):
        text = _decode(path_or_text, None)
    elif isinstance(path_or_text, os.PathLike) or _looks_like_path(path_or_text):
        source = os.fspath(path_or_text)
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_SCHEDULE_BYTES + 1)  # bounded: /dev/zero or a stray video never fills memory
        except OSError as e:
            raise ScheduleError(f"cannot read the file: {e.strerror or e}", source=source) from None
        if len(data) > MAX_SCHEDULE_BYTES:
            raise ScheduleError(f"the file holds more than {MAX_SCHEDULE_BYTES:,} bytes: not a prompt schedule",
                                source=source)
        text = _decode(data, source)
        if format == "auto":
            format = _FORMAT_OF_SUFFIX.get(Path(source).suffix.lower(), "auto")
    elif isinstance(path_or_text, str):
        text = path_or_text
    else:
        raise TypeError(f"expected a path, str or bytes, got {type(path_or_text).__name__}")
    return parse_schedule_text(text, format, switch_frame_indices=switch_frame_indices, source=source)


def _looks_like_path(value: Any) -> bool:
    if not isinstance(value, str) or "\n" in value:
        return False
    return os.path.isfile(value) or value.lower().endswith(tuple(_FORMAT_OF_SUFFIX))


def _decode(data: bytes, source: str | None) -> str:
    """UTF-8 (an optional byte-order mark is dropped); errors point at the first bad byte."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[line_start:e.start].decode("utf-8", errors="replace")) + 1
        raise ScheduleError(f"not valid UTF-8 (byte 0x{data[e.start]:02x})", source=source,
                            line=data.count(b"\n", 0, e.start) + 1, column=column) from None
