"""Prompt schedules: which prompt plays when, and how the stream moves between prompts.

One data model, three input formats, one kind of error.

Data model
    Schedule    an ordered tuple of Segments (+ optional seed and fps); validated on construction.
    Segment     one prompt, how long it lasts and/or where it starts, and how it is entered.
    Transition  smooth (the new scene grows out of the old one), cut, or recall (an earlier
                scene comes back).
    Schedule.plan(...) resolves a schedule to the generator's grid: a list of PlannedSegments
    in latent frames whose switches sit on chunk boundaries.

Formats (all parsers return list[Schedule]; JSONL and Echo files hold one video per line)
    yaml / json   the native format, one schedule per file (see `_schedule_from_tree`)
    jsonl         LongLive / Anchor Forcing: {"prompts": [...], "seed": N} per line
    echo          Echo-Forcing: "scene A [10s#] | scene B [5s@] | scene A [10s]" per line

Errors
    Every malformed input raises ScheduleError (a ValueError) naming file, line and column,
    e.g. ``prompts.yaml:3:7: segment 2: 'frames' must be a positive integer, got -3``.
    Nothing else escapes `parse_schedule_text` and `load_schedules`.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from ..transitions import Transition

__all__ = [
    "ScheduleError",
    "Transition",
    "Unit",
    "UNITS",
    "START_KEYS",
    "Segment",
    "PlannedSegment",
    "Schedule",
    "FORMATS",
    "parse_schedule_text",
    "load_schedules",
]


# -----------------------------------------------------------------------------
# Errors


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


# -----------------------------------------------------------------------------
# Data model


Unit = Literal["frames", "seconds", "latent_frames"]
UNITS: tuple[str, ...] = ("frames", "seconds", "latent_frames")
# The native format names a segment's length after its unit ("seconds: 3") and its start
# after the singular ("start_second: 3"). Error messages use the same names.
START_KEYS: dict[str, str] = {"frames": "start_frame", "seconds": "start_second",
                              "latent_frames": "start_latent_frame"}


@dataclass(frozen=True)
class Segment:
    """One prompt of a schedule.

    length      how long the prompt plays, in `unit`; None = until the end of the video
                (only the last segment may do that).
    unit        "frames" (video frames), "seconds" or "latent_frames".
    start       where the segment starts, in `start_unit` (default: `unit`); None = right after
                the previous segment. The first segment always starts at 0.
    transition  how this segment is entered (ignored for the first segment).
    seed        optional per-segment seed (overrides the schedule's seed).

    A segment plays from its start until the next segment starts, so an explicit start that
    lies inside the previous segment cuts that one short, and one that lies after its end
    holds the previous prompt until then. Lengths only serve to place segments without a start.

    Segments are stored in a canonical form so that two segments meaning the same thing compare
    equal: `start_unit` is None when it equals `unit` or there is no start, and an open-ended
    segment is measured in the unit of its start ("latent_frames" if it has none either).
    Values are checked by Schedule, in one place.
    """

    prompt: str
    length: float | None
    unit: Unit
    start: float | None = None
    transition: Transition = Transition.SMOOTH
    seed: int | None = None
    start_unit: Unit | None = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        try:
            put("transition", Transition(self.transition))
        except (ValueError, TypeError):
            pass  # Schedule reports it, with the segment number
        if self.start is None or self.start_unit == self.unit:
            put("start_unit", None)
        if self.length is None:
            if self.start_unit is not None:
                put("unit", self.start_unit)
                put("start_unit", None)
            elif self.start is None and self.unit in UNITS:
                put("unit", "latent_frames")

    def to_dict(self) -> dict[str, Any]:
        """This segment as a native-format mapping (default values left out)."""
        out: dict[str, Any] = {"prompt": self.prompt}
        if self.length is not None:
            out[self.unit] = self.length
        if self.start is not None:
            out[START_KEYS[self.start_unit or self.unit]] = self.start
        if self.transition != Transition.SMOOTH:
            out["transition"] = self.transition.value
        if self.seed is not None:
            out["seed"] = self.seed
        return out


@dataclass(frozen=True)
class PlannedSegment:
    """A segment resolved to the generator's grid: latent frames [start, start + length)."""

    prompt: str
    start: int
    length: int
    transition: Transition
    seed: int | None

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Schedule:
    """A validated prompt schedule for one video.

    segments  the prompts in playing order (any sequence is stored as a tuple)
    seed      default seed for every segment
    fps       video frame rate used to turn seconds into frames; overrides plan()'s argument
    source    the file it came from (not part of equality)
    """

    segments: tuple[Segment, ...]
    seed: int | None = None
    fps: float | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.segments, tuple):
            try:
                object.__setattr__(self, "segments", tuple(self.segments))
            except TypeError:
                raise ScheduleError("'segments' must be a sequence of Segment objects",
                                    field="segments") from None
        _validate(self)

    @classmethod
    def single(cls, prompt: str, *, seed: int | None = None) -> Schedule:
        """One prompt for the whole video."""
        return cls((Segment(prompt, None, "latent_frames"),), seed=seed)

    def plan(self, num_latent_frames: int, *, temporal_compression: int, fps: float,
             chunk_frames: int) -> list[PlannedSegment]:
        """Resolve the schedule to latent frames, switching prompts only between chunks.

        The rule, step by step:
          1. Every segment start becomes a whole video frame f: frames as given,
             seconds -> round(seconds * fps) (Python's round, half to even; the schedule's own
             fps wins over the argument), latent frame k -> video frame t*k (inverse of step 2).
             A segment without a start begins where the previous one ends (its start plus its
             length, each converted the same way).
          2. Video frame f -> latent frame ceil(f / t), t = temporal_compression. A causal video
             VAE keeps video frame 0 in latent 0 and frames t(k-1)+1 .. tk in latent k, so
             ceil(f / t) is the latent frame that holds video frame f. (Whole seconds at 16 fps
             with t = 4 land exactly: 3 s = frame 48 = latent 12. Otherwise the up to t - 1
             earlier frames sharing that latent are rendered with the new prompt.)
          3. The switch moves to the first chunk boundary (multiple of chunk_frames) at or after
             that latent frame: the generator can only change prompts between chunks.
          4. Each segment runs until the next one starts; the last one runs to the end of the
             video whatever its length. Segments left empty (two switches on the same boundary,
             or a start at or beyond num_latent_frames) are dropped.

        The result covers [0, num_latent_frames) exactly, in order. Each planned seed is the
        segment's seed, else the schedule's.
        """
        for name, value in (("num_latent_frames", num_latent_frames),
                            ("temporal_compression", temporal_compression),
                            ("chunk_frames", chunk_frames)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        fps = self.fps if self.fps is not None else fps
        if not _is_number(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        t = temporal_compression

        def video_frames(amount: float, unit: str, segment: int) -> int:
            if unit == "frames":
                return int(amount)
            if unit == "latent_frames":
                return int(amount) * t
            frames = amount * fps
            if not math.isfinite(frames):
                raise ScheduleError(f"segment {segment + 1}: {amount} seconds is too long",
                                    source=self.source, segment=segment)
            return round(frames)

        # 1. Where does each segment start, in video frames?
        starts: list[int] = []
        for i, seg in enumerate(self.segments):
            if seg.start is not None:
                frame = video_frames(seg.start, seg.start_unit or seg.unit, i)
            elif i == 0:
                frame = 0
            else:
                previous = self.segments[i - 1]
                frame = starts[-1] + video_frames(previous.length, previous.unit, i - 1)
            # Starts given in different units can only be compared now (see _check_starts).
            if starts and frame < starts[-1]:
                raise ScheduleError(
                    f"segment {i + 1} starts at video frame {frame}, before segment {i} "
                    f"(video frame {starts[-1]})", source=self.source, segment=i)
            starts.append(frame)

        # 2 + 3. Video frame -> latent frame -> next chunk boundary.
        switches = [_round_up(_ceil_div(frame, t), chunk_frames) for frame in starts]

        # 4. Each segment runs until the next switch; the last one to the end.
        ends = switches[1:] + [num_latent_frames]
        planned = []
        for seg, start, end in zip(self.segments, switches, ends):
            end = min(end, num_latent_frames)
            if end > start:
                seed = seg.seed if seg.seed is not None else self.seed
                planned.append(PlannedSegment(seg.prompt, start, end - start, seg.transition, seed))
        return planned

    def to_dict(self) -> dict[str, Any]:
        """This schedule as a native-format mapping; `from_dict` reads it back."""
        out: dict[str, Any] = {}
        if self.fps is not None:
            out["fps"] = self.fps
        if self.seed is not None:
            out["seed"] = self.seed
        out["segments"] = [seg.to_dict() for seg in self.segments]
        return out

    def dump_yaml(self) -> str:
        """This schedule as native YAML; `parse_schedule_text(text, "yaml")` reads it back."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Schedule:
        """Read a native-format mapping (as produced by yaml/json loaders or `to_dict`)."""
        schedule = _schedule_from_tree(_tree_from_python(data))
        return dataclasses.replace(schedule, source=source) if source is not None else schedule


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_amount(value: Any, unit: str, *, positive: bool) -> bool:
    """Frames are whole numbers, seconds may be fractional."""
    if not (_is_number(value) if unit == "seconds" else _is_int(value)):
        return False
    return value > 0 if positive else value >= 0


def _is_seed(value: Any) -> bool:
    return _is_int(value) and 0 <= value < 2**64  # what torch.Generator.manual_seed accepts


def _amount_kind(unit: str) -> str:
    return "number" if unit == "seconds" else "integer"


def _show(value: Any) -> str:
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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(value: int, multiple: int) -> int:
    return _ceil_div(value, multiple) * multiple


def _validate(schedule: Schedule) -> None:
    """Every rule a schedule must satisfy, in one place. Raises ScheduleError with
    `segment`/`field` set, which parsers turn into a line and column."""
    segments = schedule.segments
    if not segments:
        raise ScheduleError("a schedule needs at least one segment", field="segments")
    for i, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise ScheduleError(f"segment {i + 1}: expected a Segment, got {type(seg).__name__}",
                                segment=i)
        _validate_segment(seg, i, is_last=i == len(segments) - 1)
    _check_starts(segments)
    if schedule.seed is not None and not _is_seed(schedule.seed):
        raise ScheduleError(f"'seed' must be an integer in [0, 2**64), got {_show(schedule.seed)}",
                            field="seed")
    if schedule.fps is not None and not (_is_number(schedule.fps) and schedule.fps > 0):
        raise ScheduleError(f"'fps' must be a positive number, got {_show(schedule.fps)}",
                            field="fps")
    if schedule.source is not None and not isinstance(schedule.source, str):
        raise ScheduleError(f"'source' must be a string, got {_show(schedule.source)}")


def _validate_segment(seg: Segment, i: int, *, is_last: bool) -> None:
    def fail(field: str | None, message: str):
        raise ScheduleError(f"segment {i + 1}: {message}", segment=i, field=field)

    if not isinstance(seg.prompt, str) or not seg.prompt.strip():
        fail("prompt", f"'prompt' must be a non-empty string, got {_show(seg.prompt)}")
    try:
        seg.prompt.encode("utf-8")  # text encoders choke on lone surrogates ("\ud800" escapes)
    except UnicodeEncodeError:
        fail("prompt", "'prompt' contains an unpaired surrogate character")
    for name in ("unit", "start_unit"):
        value = getattr(seg, name)
        if value not in UNITS and not (name == "start_unit" and value is None):
            fail(name, f"'{name}' must be one of {', '.join(UNITS)}, got {_show(value)}")

    if seg.length is None:
        if not is_last:
            fail(None, "only the last segment may leave out its length "
                       "('frames', 'seconds' or 'latent_frames')")
    elif not _is_amount(seg.length, seg.unit, positive=True):
        fail(seg.unit, f"'{seg.unit}' must be a positive {_amount_kind(seg.unit)}, "
                       f"got {_show(seg.length)}")

    if seg.start is not None:
        start_unit = seg.start_unit or seg.unit
        key = START_KEYS[start_unit]
        if not _is_amount(seg.start, start_unit, positive=False):
            fail(key, f"'{key}' must be a non-negative {_amount_kind(start_unit)}, "
                      f"got {_show(seg.start)}")
        if i == 0 and seg.start != 0:
            fail(key, f"the first segment must start at 0 (nothing plays before it), "
                      f"got {_show(seg.start)}")

    if not isinstance(seg.transition, Transition):
        fail("transition", f"'transition' must be one of smooth, cut, recall, "
                           f"got {_show(seg.transition)}")
    if seg.seed is not None and not _is_seed(seg.seed):
        fail("seed", f"'seed' must be an integer in [0, 2**64), got {_show(seg.seed)}")


def _check_starts(segments: Sequence[Segment]) -> None:
    """Explicit starts must move forward: each one later than where the previous segment starts.

    Only positions in the same unit can be compared without knowing fps and the VAE, so we track
    where the current segment starts in every unit we can tell; plan() checks the rest.
    """
    known = dict.fromkeys(UNITS, 0)  # the first segment starts at 0 in every unit
    for i in range(1, len(segments)):
        seg, previous = segments[i], segments[i - 1]
        if seg.start is None:
            unit = previous.unit
            known = {unit: known[unit] + previous.length} if unit in known else {}
            continue
        unit = seg.start_unit or seg.unit
        if unit in known and seg.start <= known[unit]:
            key = START_KEYS[unit]
            raise ScheduleError(
                f"segment {i + 1}: '{key}' must be later than the start of segment {i} "
                f"({_show(known[unit])} {unit}), got {_show(seg.start)}", segment=i, field=key)
        known = {unit: seg.start}


# -----------------------------------------------------------------------------
# Positioned trees: YAML and JSON are both read into _Nodes, so one reader handles both and
# every error can name the line and column of the value it is about.

_MAX_DEPTH = 32  # the formats need 3 levels; deeper input is an error, not a RecursionError


@dataclass(eq=False)
class _Node:
    """A parsed value and where it starts (1-based; None for Python data).

    value is a dict (key -> (key node, value node)), a list of nodes, or a plain scalar.
    """

    value: Any
    line: int | None
    column: int | None


def _error(message: str, node: _Node | None = None) -> ScheduleError:
    return ScheduleError(message, line=node and node.line, column=node and node.column)


def _moved(error: ScheduleError, node: _Node) -> ScheduleError:
    """A validation error from Schedule, pointed at the spot in the file it is about."""
    return ScheduleError(error.message, line=node.line, column=node.column,
                         segment=error.segment, field=error.field)


# --- YAML

_YAML_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e3 as a number (YAML 1.1 wants 1.0e+3; YAML 1.2 and JSON don't)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings _Loader would read as numbers, so dumps round-trip."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT_WITH_EXPONENT,
                               list("-+0123456789."))


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # PyYAML writes the line breaks NEL, LS and PS raw inside single quotes, where a reader folds
    # them into spaces; double quotes escape them.
    style = '"' if any(char in text for char in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)

_YAML_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str")}


def _tree_from_yaml(text: str) -> _Node:
    try:
        _check_yaml_depth(text)  # yaml.compose recurses; yaml.parse doesn't
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = ", ".join(part for part in (e.context, e.problem) if part)
        raise ScheduleError(f"invalid YAML: {message}",
                            line=mark and mark.line + 1, column=mark and mark.column + 1) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line, column = _line_column(text, e.position)
        char = chr(e.character) if isinstance(e.character, int) else e.character
        raise ScheduleError(f"invalid YAML: unacceptable character {char!r}",
                            line=line, column=column) from None
    except yaml.YAMLError as e:
        raise ScheduleError(f"invalid YAML: {e}") from None
    if root is None:
        raise ScheduleError("the file is empty", line=1, column=1)
    return _YamlToTree().convert(root)


def _check_yaml_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > _MAX_DEPTH:
                mark = event.start_mark
                raise ScheduleError("nesting is too deep", line=mark.line + 1, column=mark.column + 1)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _YamlToTree:
    """yaml nodes -> _Nodes. Aliases are converted once (no 'billion laughs' blow-up) and may
    not point into themselves."""

    def __init__(self):
        self.constructor = _Loader("")  # only used to turn scalar nodes into values
        self.done: dict[int, _Node] = {}
        self.busy: set[int] = set()

    def convert(self, node: yaml.Node) -> _Node:
        key = id(node)
        if key in self.done:
            return self.done[key]
        out = _Node(None, node.start_mark.line + 1, node.start_mark.column + 1)
        if key in self.busy:
            raise _error("an alias refers to a node that contains it", out)
        self.busy.add(key)
        if isinstance(node, yaml.ScalarNode):
            out.value = self.scalar(node, out)
        elif isinstance(node, yaml.SequenceNode):
            out.value = [self.convert(child) for child in node.value]
        else:
            out.value = {}
            for key_node, value_node in node.value:
                name = self.convert(key_node)
                if not isinstance(name.value, str):
                    raise _error(f"keys must be strings, got {_show(name.value)}", name)
                if name.value in out.value:
                    raise _error(f"duplicate key {name.value!r}", name)
                out.value[name.value] = (name, self.convert(value_node))
        self.busy.discard(key)
        self.done[key] = out
        return out

    def scalar(self, node: yaml.ScalarNode, where: _Node) -> Any:
        if node.tag not in _YAML_SCALAR_TAGS:  # dates, !!binary, custom tags, merge keys ...
            raise _error(f"unsupported YAML value {_show(node.value)} ({node.tag}); "
                         f"put it in quotes to make it a string", where)
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):  # e.g. an int with 5000 digits
            raise _error(f"invalid value {_show(node.value)}", where) from None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


# --- JSON

_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class _JsonReader:
    """Strict JSON (RFC 8259) -> _Nodes. json.decoder decodes the strings; this class only
    tracks where every value starts, which the json module cannot tell us."""

    def __init__(self, text: str, first_line: int = 1):
        self.text = text
        self.pos = 0
        self.first_line = first_line
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, pos: int) -> tuple[int, int]:
        row = bisect.bisect_right(self.line_starts, pos) - 1
        return self.first_line + row, pos - self.line_starts[row] + 1

    def fail(self, message: str, pos: int | None = None) -> ScheduleError:
        line, column = self.where(self.pos if pos is None else pos)
        return ScheduleError(f"invalid JSON: {message}", line=line, column=column)

    def document(self) -> _Node:
        self.skip_space()
        if self.pos == len(self.text):
            raise self.fail("the file is empty")
        node = self.value(depth=0)
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the JSON value")
        return node

    def skip_space(self):
        self.pos = _JSON_SPACE.match(self.text, self.pos).end()

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def expect(self, char: str):
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def value(self, depth: int) -> _Node:
        if depth > _MAX_DEPTH:
            raise self.fail("nesting is too deep")
        node = _Node(None, *self.where(self.pos))
        char = self.peek()
        if char == "{":
            node.value = self.object(depth)
        elif char == "[":
            node.value = self.array(depth)
        elif char == '"':
            try:
                node.value, self.pos = json.decoder.scanstring(self.text, self.pos + 1, True)
            except json.JSONDecodeError as e:
                raise self.fail(e.msg, e.pos) from None
        else:
            node.value = self.literal()
        return node

    def literal(self) -> Any:
        start = self.pos
        number = _JSON_NUMBER.match(self.text, start)
        if number:
            self.pos = number.end()
            if number.group(2) or number.group(3):
                return float(number.group())  # may be inf; Schedule rejects that with a position
            try:
                return int(number.group())
            except ValueError:  # more digits than Python converts
                raise self.fail("number has too many digits", start) from None
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, start):
                self.pos += len(word)
                return value
        raise self.fail("expected a value")

    def object(self, depth: int) -> dict[str, tuple[_Node, _Node]]:
        members: dict[str, tuple[_Node, _Node]] = {}
        self.pos += 1
        self.skip_space()
        if self.peek() == "}":
            self.pos += 1
            return members
        while True:
            if self.peek() != '"':
                raise self.fail("expected a key in double quotes")
            key = self.value(depth + 1)
            if key.value in members:  # legal JSON, but almost always a mistake
                raise _error(f"duplicate key {key.value!r}", key)
            self.skip_space()
            self.expect(":")
            self.skip_space()
            members[key.value] = (key, self.value(depth + 1))
            self.skip_space()
            if self.peek() != ",":
                self.expect("}")
                return members
            self.pos += 1
            self.skip_space()

    def array(self, depth: int) -> list[_Node]:
        items: list[_Node] = []
        self.pos += 1
        self.skip_space()
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            items.append(self.value(depth + 1))
            self.skip_space()
            if self.peek() != ",":
                self.expect("]")
                return items
            self.pos += 1
            self.skip_space()


# --- Python data (Schedule.from_dict)


def _tree_from_python(data: Any, depth: int = 0) -> _Node:
    if depth > _MAX_DEPTH:
        raise ScheduleError("nesting is too deep")
    if isinstance(data, Mapping):
        members = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ScheduleError(f"keys must be strings, got {_show(key)}")
            members[key] = (_Node(key, None, None), _tree_from_python(value, depth + 1))
        return _Node(members, None, None)
    if isinstance(data, (list, tuple)):
        return _Node([_tree_from_python(item, depth + 1) for item in data], None, None)
    return _Node(data, None, None)


# -----------------------------------------------------------------------------
# Native format (YAML or JSON), one schedule per file:
#
#   fps: 16                  # optional: frame rate for seconds (else plan()'s fps)
#   seed: 0                  # optional: default seed
#   segments:
#     - prompt: "a red circle drifting left over a blue backdrop"
#       seconds: 3           # at most one of frames | seconds | latent_frames;
#                            # none = until the end (last segment only)
#       start_frame: 0       # optional; or start_second | start_latent_frame
#       transition: smooth   # optional: smooth | cut | recall
#       seed: 1              # optional
#
# Unknown keys are errors, so typos are never silently ignored.

_TOP_KEYS = ("fps", "seed", "segments")
_SEGMENT_KEYS = ("prompt", *UNITS, *START_KEYS.values(), "transition", "seed")
_UNIT_OF_START_KEY = {key: unit for unit, key in START_KEYS.items()}


def _members(node: _Node, what: str, allowed: Sequence[str]) -> dict[str, _Node]:
    """The key -> value-node mapping of `node`, which must be a mapping with known keys only."""
    if not isinstance(node.value, dict):
        raise _error(f"{what} must be a mapping (key: value), got {_show(node.value)}", node)
    for name, (key_node, _) in node.value.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            raise _error(f"{what}: unknown key {name!r} ({hint})", key_node)
    return {name: value for name, (_, value) in node.value.items()}


def _scalar(fields: dict[str, _Node], name: str, what: str | None = None) -> Any:
    """The plain value of `fields[name]` (None if absent); lists and mappings are errors."""
    node = fields.get(name)
    if node is None:
        return None
    if isinstance(node.value, (dict, list)):
        prefix = f"{what}: " if what else ""
        raise _error(f"{prefix}'{name}' must be a single value, got {_show(node.value)}", node)
    return node.value


def _only_one(fields: dict[str, _Node], keys: Sequence[str], what: str) -> str | None:
    present = [name for name in fields if name in keys]
    if len(present) > 1:
        raise _error(f"{what}: give only one of {', '.join(map(repr, keys))}, "
                     f"got both {present[0]!r} and {present[1]!r}", fields[present[1]])
    return present[0] if present else None


def _schedule_from_tree(root: _Node) -> Schedule:
    """Native format: a positioned tree (from YAML, JSON or Python data) -> Schedule."""
    top = _members(root, "the schedule", _TOP_KEYS)
    if "segments" not in top:
        raise _error("the schedule needs a 'segments' list", root)
    if not isinstance(top["segments"].value, list):
        raise _error(f"'segments' must be a list, got {_show(top['segments'].value)}", top["segments"])

    # Where each (segment, field) sits in the file, to place Schedule's validation errors.
    places: dict[tuple[int | None, str | None], _Node] = {(None, None): root}
    places.update(((None, name), node) for name, node in top.items())

    segments = []
    for i, node in enumerate(top["segments"].value):
        what = f"segment {i + 1}"
        fields = _members(node, what, _SEGMENT_KEYS)
        places[(i, None)] = node
        places.update(((i, name), value) for name, value in fields.items())
        if "prompt" not in fields:
            raise _error(f"{what}: missing 'prompt'", node)
        length_key = _only_one(fields, UNITS, what)
        start_key = _only_one(fields, list(START_KEYS.values()), what)
        segments.append(Segment(
            prompt=_scalar(fields, "prompt", what),
            length=_scalar(fields, length_key, what) if length_key else None,
            unit=length_key or _UNIT_OF_START_KEY.get(start_key, "latent_frames"),
            start=_scalar(fields, start_key, what) if start_key else None,
            start_unit=_UNIT_OF_START_KEY.get(start_key),
            transition=_scalar(fields, "transition", what) if "transition" in fields
            else Transition.SMOOTH,
            seed=_scalar(fields, "seed", what),
        ))
    seed, fps = _scalar(top, "seed"), _scalar(top, "fps")
    try:
        return Schedule(tuple(segments), seed=seed, fps=fps)
    except ScheduleError as e:
        node = places.get((e.segment, e.field)) or places.get((e.segment, None)) or root
        raise _moved(e, node) from None


# -----------------------------------------------------------------------------
# LongLive / Anchor Forcing JSONL: one video per non-empty line,
#
#   {"prompts": ["p1", "p2", "p3"], "seed": 7, "switch_frame_indices": [40, 80]}
#
# "seed" and "switch_frame_indices" are optional; the switch indices (latent frames, one fewer
# than prompts, strictly increasing, > 0) may instead be passed to the parser for every line
# (a line's own key wins). Prompt i starts at switch_frame_indices[i - 1]; the last one runs to
# the end; all transitions are smooth.

_LONGLIVE_KEYS = ("prompts", "seed", "switch_frame_indices")


def _check_switch_indices(items: Sequence[tuple[Any, _Node | None]], what: str) -> list[int]:
    previous = 0
    for k, (value, node) in enumerate(items):
        if not _is_int(value) or value <= previous:
            # A switch at 0 would mean the first prompt never plays, so indices start at 1.
            raise _error(f"{what}[{k}] must be an integer greater than {previous} "
                         f"(switch points are latent frames in increasing order), "
                         f"got {_show(value)}", node)
        previous = value
    return [value for value, _ in items]


def _parse_longlive(text: str, switch_frame_indices: Sequence[int] | None) -> list[Schedule]:
    default = None
    if switch_frame_indices is not None:
        if isinstance(switch_frame_indices, (str, bytes)) or not isinstance(switch_frame_indices, Sequence):
            raise ScheduleError("the switch_frame_indices argument must be a list of integers, "
                                f"got {_show(switch_frame_indices)}")
        default = _check_switch_indices([(v, None) for v in switch_frame_indices],
                                        "switch_frame_indices argument")
    schedules = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            root = _JsonReader(line, first_line=number).document()
            schedules.append(_schedule_from_longlive(root, default))
    if not schedules:
        raise ScheduleError("the file is empty", line=1, column=1)
    return schedules


def _schedule_from_longlive(root: _Node, default_indices: list[int] | None) -> Schedule:
    fields = _members(root, "the line", _LONGLIVE_KEYS)
    if "prompts" not in fields:
        raise _error("the line needs a 'prompts' list", root)
    prompts = fields["prompts"]
    if not isinstance(prompts.value, list) or not prompts.value:
        raise _error(f"'prompts' must be a non-empty list of strings, got {_show(prompts.value)}", prompts)
    for k, node in enumerate(prompts.value):
        if isinstance(node.value, (dict, list)):
            raise _error(f"prompts[{k}] must be a string, got {_show(node.value)}", node)

    count = len(prompts.value) - 1
    if "switch_frame_indices" in fields:
        where = fields["switch_frame_indices"]
        if not isinstance(where.value, list):
            raise _error(f"'switch_frame_indices' must be a list of integers, "
                         f"got {_show(where.value)}", where)
        indices = _check_switch_indices([(n.value, n) for n in where.value], "switch_frame_indices")
    else:
        where, indices = prompts, default_indices
        if indices is None and count:
            raise _error(f"{count + 1} prompts need {count} switch_frame_indices; add a "
                         f"'switch_frame_indices' key or pass switch_frame_indices=...", prompts)
        indices = indices or []
    if len(indices) != count:
        raise _error(f"{count + 1} prompts need {count} switch_frame_indices, got {len(indices)}", where)

    starts = [0, *indices]
    segments = [
        Segment(node.value, starts[i + 1] - starts[i] if i < count else None, "latent_frames",
                start=starts[i])
        for i, node in enumerate(prompts.value)
    ]
    seed = _scalar(fields, "seed")
    try:
        return Schedule(tuple(segments), seed=seed)
    except ScheduleError as e:
        if e.field == "prompt":
            node = prompts.value[e.segment]
        else:
            node = fields.get(e.field or "", root)
        raise _moved(e, node) from None


# -----------------------------------------------------------------------------
# Echo-Forcing: one video per non-empty line,
#
#   scene A [10s#] | scene B [5s@] | scene A [10s] ; optional subtitles
#
# Scenes are separated by "|" (so prompts cannot contain it) and each ends with its duration
# in seconds in brackets. As in the Echo-Forcing release, a scene's suffix says how the NEXT
# scene is entered: none = smooth, "#" = cut, "@" = recall (the last scene's suffix has no
# next scene and is ignored; the first scene is entered plainly). Text after the first ";"
# is the release's subtitles and is ignored. A line whose first non-blank character is "#"
# followed by a blank (or nothing) is a comment; "#hashtag [5s]" is a scene.

_ECHO_DURATION = re.compile(r"\[([0-9]+\.?[0-9]*)\s*s([#@])?\]")
_ECHO_TRANSITIONS = {None: Transition.SMOOTH, "#": Transition.CUT, "@": Transition.RECALL}


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("#") and (len(stripped) == 1 or stripped[1].isspace())


def _parse_echo(text: str) -> list[Schedule]:
    schedules = [
        _schedule_from_echo(line, number)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip() and not _is_comment(line)
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
        scene = _Node(None, number, offset + len(part) - len(part.lstrip()) + 1)
        bracket_at = part.rstrip().rfind("[")
        bracket = _Node(None, number, offset + bracket_at + 1)
        offset += len(part) + 1
        if not body:
            raise _error(f"scene {i + 1} is empty", scene)
        if not body.endswith("]") or bracket_at < 0:
            raise _error(f"scene {i + 1} must end with its duration in seconds, "
                         f"like [5s], [5s#] (a cut into the next scene) or [5s@] (a recall)", scene)
        duration = _ECHO_DURATION.fullmatch(part.rstrip(), bracket_at)
        if duration is None:
            raise _error(f"scene {i + 1}: bad duration {part.rstrip()[bracket_at:]!r}, "
                         f"expected e.g. [5s], [2.5s#] or [10s@]", bracket)
        places[(i, "prompt")], places[(i, "seconds")] = scene, bracket
        segments.append(Segment(part[:bracket_at].strip(), float(duration.group(1)), "seconds", transition=entry))
        entry = _ECHO_TRANSITIONS[duration.group(2)]
    try:
        return Schedule(tuple(segments))
    except ScheduleError as e:
        raise _moved(e, places.get((e.segment, e.field)) or places[(e.segment, "prompt")]) from None


# -----------------------------------------------------------------------------
# Entry points

FORMATS = ("auto", "yaml", "json", "jsonl", "echo")
_FORMAT_OF_SUFFIX = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".jsonl": "jsonl", ".txt": "echo"}


def _sniff(text: str) -> str:
    """Guess the format of raw text from its first line that is not blank or a comment:
    '{' or '[' -> JSON ('jsonl' if that line mentions "prompts"); an Echo duration like [5s]
    -> 'echo'; anything else -> 'yaml'. Pass format=... when in doubt."""
    first = next((line.strip() for line in text.split("\n")
                  if line.strip() and not _is_comment(line)), "")
    if first.startswith(("{", "[")):
        return "jsonl" if '"prompts"' in first else "json"
    if _ECHO_DURATION.search(first):
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
            schedules = [_schedule_from_tree(_tree_from_yaml(text))]
        elif format == "json":
            schedules = [_schedule_from_tree(_JsonReader(text).document())]
        elif format == "jsonl":
            schedules = _parse_longlive(text, switch_frame_indices)
        else:
            schedules = _parse_echo(text)
    except ScheduleError as error:
        if error.source is None:
            error.source = source
        raise
    if source is not None:
        schedules = [dataclasses.replace(s, source=source) for s in schedules]
    return schedules


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
            data = Path(source).read_bytes()
        except OSError as e:
            raise ScheduleError(f"cannot read the file: {e.strerror or e}", source=source) from None
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
