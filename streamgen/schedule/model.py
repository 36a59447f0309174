"""The data model: Segment, Schedule (validated on construction) and PlannedSegment, the result of
:meth:`Schedule.plan` on the generator's grid."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import yaml

from ..transitions import Transition
from .errors import ScheduleError, show
from .trees import Dumper, tree_from_python


Unit = Literal["frames", "seconds", "latent_frames"]
UNITS: tuple[str, ...] = ("frames", "seconds", "latent_frames")
# The native format names a segment's length after its unit ("seconds: 3") and its start
# after the singular ("start_second: 3"). Error messages use the same names.
START_KEYS: dict[str, str] = {"frames": "start_frame", "seconds": "start_second",
                              "latent_frames": "start_latent_frame"}
# Whose switch timing plan() follows: ours (each start rounded up to the next chunk boundary), Echo-Forcing's (each
# scene lasts its seconds in whole chunks, rounded down, at least one) or LongLive's (ours, but at most one switch
# per chunk, so every prompt plays at least one chunk).
TIMINGS: tuple[str, ...] = ("streamgen", "echo-forcing", "longlive")
# Echo-Forcing's configs/interactive.yaml, scene_prompt.default_blocks_per_scene: a scene without a duration.
ECHO_DEFAULT_SCENE_CHUNKS = 21


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
    # The latent frame the schedule asked the switch for, before it moved to the chunk boundary `start` (a detail of
    # where the switch came from, not of the plan: left out of equality).
    asked: int | None = field(default=None, compare=False)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Schedule:
    """A validated prompt schedule for one video.

    segments  the prompts in playing order (any sequence is stored as a tuple)
    seed      default seed for every segment
    fps       video frame rate used to turn seconds into frames; overrides plan()'s argument
    timing    whose switch timing plan() follows, one of TIMINGS (a release's files keep their release's)
    source    the file it came from (not part of equality)

    The seed seeds the stream once, at its start, and its noise is drawn on from there (as the releases do); a
    segment's own seed reseeds the stream where that segment starts.
    """

    segments: tuple[Segment, ...]
    seed: int | None = None
    fps: float | None = None
    timing: str = "streamgen"
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
        segment's own (the schedule's seeds the stream once, at its start).

        ``timing="echo-forcing"`` replaces steps 1-3 as Echo-Forcing's release does: a segment lasts
        max(1, int(seconds * fps / (t * chunk_frames))) whole chunks (rounded down; a segment
        without a length ECHO_DEFAULT_SCENE_CHUNKS), and switches sit at the cumulative chunk
        counts. ``timing="longlive"`` keeps steps 1-3 but, as LongLive's loop advances at most one
        prompt per chunk, a start that lands on the previous segment's chunk moves one chunk later.
        """
        for name, value in (("num_latent_frames", num_latent_frames),
                            ("temporal_compression", temporal_compression),
                            ("chunk_frames", chunk_frames)):
            if not is_int(value) or value < 1:
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

        if self.timing == "echo-forcing":
            switches = self._echo_switches(fps, t, chunk_frames)
            return self._planned(switches, switches, num_latent_frames)

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
        asked = [_ceil_div(frame, t) for frame in starts]
        switches = [_round_up(latent, chunk_frames) for latent in asked]
        if self.timing == "longlive":
            for i in range(1, len(switches)):
                switches[i] = max(switches[i], switches[i - 1] + chunk_frames)

        return self._planned(switches, asked, num_latent_frames)

    def _planned(self, switches: list[int], asked: list[int], num_latent_frames: int) -> list[PlannedSegment]:
        """4. Each segment runs until the next switch; the last one to the end."""
        ends = switches[1:] + [num_latent_frames]
        planned = []
        for seg, start, end, index in zip(self.segments, switches, ends, asked):
            end = min(end, num_latent_frames)
            if end > start:
                planned.append(PlannedSegment(seg.prompt, start, end - start, seg.transition, seg.seed, index))
        return planned

    def _echo_switches(self, fps: float, t: int, chunk_frames: int) -> list[int]:
        """Latent frames where each segment starts, in Echo-Forcing's whole chunks."""
        switches = [0]
        for i, seg in enumerate(self.segments[:-1]):
            chunks = ECHO_DEFAULT_SCENE_CHUNKS
            if seg.length is not None:
                exact = seg.length * fps / (t * chunk_frames)
                if not math.isfinite(exact):
                    raise ScheduleError(f"segment {i + 1}: {seg.length} seconds is too long",
                                        source=self.source, segment=i)
                chunks = max(1, int(exact))
            switches.append(switches[-1] + chunks * chunk_frames)
        return switches

    def to_dict(self) -> dict[str, Any]:
        """This schedule as a native-format mapping; `from_dict` reads it back."""
        out: dict[str, Any] = {}
        if self.fps is not None:
            out["fps"] = self.fps
        if self.seed is not None:
            out["seed"] = self.seed
        if self.timing != "streamgen":
            out["timing"] = self.timing
        out["segments"] = [seg.to_dict() for seg in self.segments]
        return out

    def dump_yaml(self) -> str:
        """This schedule as native YAML; `parse_schedule_text(text, "yaml")` reads it back."""
        return yaml.dump(self.to_dict(), Dumper=Dumper, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Schedule:
        """Read a native-format mapping (as produced by yaml/json loaders or `to_dict`)."""
        from .native import schedule_from_tree  # the native reader builds Schedules: it imports this module

        schedule = schedule_from_tree(tree_from_python(data))
        return dataclasses.replace(schedule, source=source) if source is not None else schedule


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_amount(value: Any, unit: str, *, positive: bool) -> bool:
    """Frames are whole numbers, seconds may be fractional."""
    if not (_is_number(value) if unit == "seconds" else is_int(value)):
        return False
    return value > 0 if positive else value >= 0


def _is_seed(value: Any) -> bool:
    return is_int(value) and 0 <= value < 2**64  # what torch.Generator.manual_seed accepts


def _amount_kind(unit: str) -> str:
    return "number" if unit == "seconds" else "integer"


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
        # An Echo-Forcing scene without a duration lasts ECHO_DEFAULT_SCENE_CHUNKS.
        _validate_segment(seg, i, may_leave_out_length=i == len(segments) - 1 or schedule.timing == "echo-forcing")
    _check_starts(segments)
    if schedule.seed is not None and not _is_seed(schedule.seed):
        raise ScheduleError(f"'seed' must be an integer in [0, 2**64), got {show(schedule.seed)}",
                            field="seed")
    if schedule.timing not in TIMINGS:
        raise ScheduleError(f"'timing' must be one of {', '.join(TIMINGS)}, got {show(schedule.timing)}",
                            field="timing")
    if schedule.fps is not None and not (_is_number(schedule.fps) and schedule.fps > 0):
        raise ScheduleError(f"'fps' must be a positive number, got {show(schedule.fps)}",
                            field="fps")
    if schedule.source is not None and not isinstance(schedule.source, str):
        raise ScheduleError(f"'source' must be a string, got {show(schedule.source)}")


def _validate_segment(seg: Segment, i: int, *, may_leave_out_length: bool) -> None:
    def fail(field: str | None, message: str):
        raise ScheduleError(f"segment {i + 1}: {message}", segment=i, field=field)

    if not isinstance(seg.prompt, str) or not seg.prompt.strip():
        fail("prompt", f"'prompt' must be a non-empty string, got {show(seg.prompt)}")
    try:
        seg.prompt.encode("utf-8")  # text encoders choke on lone surrogates ("\ud800" escapes)
    except UnicodeEncodeError:
        fail("prompt", "'prompt' contains an unpaired surrogate character")
    for name in ("unit", "start_unit"):
        value = getattr(seg, name)
        if value not in UNITS and not (name == "start_unit" and value is None):
            fail(name, f"'{name}' must be one of {', '.join(UNITS)}, got {show(value)}")

    if seg.length is None:
        if not may_leave_out_length:
            fail(None, "only the last segment may leave out its length "
                       "('frames', 'seconds' or 'latent_frames')")
    elif not _is_amount(seg.length, seg.unit, positive=True):
        fail(seg.unit, f"'{seg.unit}' must be a positive {_amount_kind(seg.unit)}, "
                       f"got {show(seg.length)}")

    if seg.start is not None:
        start_unit = seg.start_unit or seg.unit
        key = START_KEYS[start_unit]
        if not _is_amount(seg.start, start_unit, positive=False):
            fail(key, f"'{key}' must be a non-negative {_amount_kind(start_unit)}, "
                      f"got {show(seg.start)}")
        if i == 0 and seg.start != 0:
            fail(key, f"the first segment must start at 0 (nothing plays before it), "
                      f"got {show(seg.start)}")

    if not isinstance(seg.transition, Transition):
        fail("transition", f"'transition' must be one of smooth, cut, recall, "
                           f"got {show(seg.transition)}")
    if seg.seed is not None and not _is_seed(seg.seed):
        fail("seed", f"'seed' must be an integer in [0, 2**64), got {show(seg.seed)}")


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
            known = {unit: known[unit] + previous.length} if unit in known and previous.length is not None else {}
            continue
        unit = seg.start_unit or seg.unit
        if unit in known and seg.start <= known[unit]:
            key = START_KEYS[unit]
            raise ScheduleError(
                f"segment {i + 1}: '{key}' must be later than the start of segment {i} "
                f"({show(known[unit])} {unit}), got {show(seg.start)}", segment=i, field=key)
        known = {unit: seg.start}
