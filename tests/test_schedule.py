"""Specification of prompt schedules (streamgen.schedule).

Read top to bottom: the data model, what each format accepts, how a schedule is laid onto the
generator's latent-frame grid, what each format rejects (with the exact line and column),
and fuzzing that nothing but ScheduleError ever escapes the parsers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgen.schedule import (
    START_KEYS,
    UNITS,
    PlannedSegment,
    Schedule,
    ScheduleError,
    Segment,
    Transition,
    load_schedules,
    parse_schedule_text,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "schedules"
RED = "a red circle drifting left over a blue backdrop"
YELLOW = "a yellow square drifting right over a green backdrop"
SMOOTH, CUT, RECALL = Transition.SMOOTH, Transition.CUT, Transition.RECALL

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def error_of(text, format="auto", **kwargs) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_schedule_text(text, format, **kwargs)
    return info.value


# -----------------------------------------------------------------------------
# Data model


def test_transition_names_are_case_insensitive():
    assert Transition("smooth") is SMOOTH
    assert Transition("CUT") is CUT
    assert Transition("Recall") is RECALL
    assert Segment("a", 1, "frames", transition="Cut").transition is CUT


def test_single_prompt_schedule_plays_the_whole_video():
    schedule = Schedule.single("a cat", seed=3)
    assert schedule.segments == (Segment("a cat", None, "latent_frames"),)
    # the schedule's seed seeds the stream once, at its start: no segment reseeds it
    assert schedule.plan(10, temporal_compression=4, fps=16, chunk_frames=3) == [
        PlannedSegment("a cat", 0, 10, SMOOTH, None)]


def test_segments_compare_equal_in_canonical_form():
    # the start unit is only recorded when it differs from the length unit
    assert Segment("a", 3, "seconds", start=0, start_unit="seconds") == Segment("a", 3, "seconds", start=0)
    # an open-ended segment is measured in its start's unit, or latent frames without a start
    assert Segment("a", None, "seconds", start=8, start_unit="frames") == Segment("a", None, "frames", start=8)
    assert Segment("a", None, "seconds") == Segment("a", None, "latent_frames")


def test_schedule_validates_on_construction():
    with pytest.raises(ScheduleError, match="at least one segment"):
        Schedule(())
    with pytest.raises(ScheduleError, match=r"segment 1: only the last segment may leave out its length"):
        Schedule((Segment("a", None, "frames"), Segment("b", 3, "frames")))
    with pytest.raises(ScheduleError, match=r"segment 2: 'frames' must be a positive integer, got 2.5"):
        Schedule((Segment("a", 1, "frames"), Segment("b", 2.5, "frames")))
    with pytest.raises(ScheduleError, match=r"'seed' must be an integer .* got true"):
        Schedule((Segment("a", 1, "frames"),), seed=True)
    # any sequence of segments is stored as a tuple
    assert Schedule([Segment("a", 1, "frames")]).segments == (Segment("a", 1, "frames"),)


def test_error_message_names_file_line_and_column():
    text = "segments:\n  - prompt: a\n    frames: 3\n  - prompt: b\n    frames: -3\n"
    error = error_of(text, source="prompts.yaml")
    assert (error.source, error.line, error.column) == ("prompts.yaml", 5, 13)
    assert str(error) == "prompts.yaml:5:13: segment 2: 'frames' must be a positive integer, got -3"
    assert isinstance(error, ValueError)


# -----------------------------------------------------------------------------
# Native YAML / JSON

DOCUMENTED_YAML = """\
fps: 16          # optional
seed: 0          # optional
segments:
  - prompt: "a red circle drifting left over a blue backdrop"
    seconds: 3            # exactly one of: frames | seconds | latent_frames
    start_frame: 0        # optional; or start_second / start_latent_frame
    transition: smooth    # optional: smooth | cut | recall
    seed: 1               # optional
"""


def test_yaml_documented_example():
    assert parse_schedule_text(DOCUMENTED_YAML, "yaml") == [Schedule(
        (Segment(RED, 3, "seconds", start=0, start_unit="frames", transition=SMOOTH, seed=1),),
        seed=0, fps=16)]


def test_yaml_every_key():
    text = """\
segments:
  - prompt: one
    frames: 40
  - prompt: two
    latent_frames: 6
    transition: CUT
  - prompt: three
    start_second: 5.5
    seconds: 2
    transition: Recall
  - prompt: four
    start_latent_frame: 30
"""
    [schedule] = parse_schedule_text(text, "yaml")
    assert schedule == Schedule((
        Segment("one", 40, "frames"),
        Segment("two", 6, "latent_frames", transition=CUT),
        Segment("three", 2, "seconds", start=5.5, transition=RECALL),
        Segment("four", None, "latent_frames", start=30),
    ))
    assert schedule.seed is None and schedule.fps is None


def test_yaml_reads_numbers_with_exponents_like_json_does():
    [schedule] = parse_schedule_text("segments:\n  - prompt: a\n    seconds: 1e1\n", "yaml")
    assert schedule.segments[0].length == 10.0


def test_json_is_the_same_format():
    text = json.dumps({"fps": 16, "seed": 0, "segments": [
        {"prompt": RED, "seconds": 3, "start_frame": 0, "transition": "smooth", "seed": 1}]}, indent=2)
    assert parse_schedule_text(text, "json") == parse_schedule_text(DOCUMENTED_YAML, "yaml")


def test_json_decodes_escapes_exactly():
    [schedule] = parse_schedule_text('{"segments": [{"prompt": "caf\\u00e9 \\ud83d\\ude00 \\"x\\""}]}', "json")
    assert schedule.segments[0].prompt == 'café 😀 "x"'


def test_from_dict_reads_plain_python_data():
    data = {"fps": 24, "segments": [{"prompt": "a", "frames": 12}, {"prompt": "b", "transition": "cut"}]}
    schedule = Schedule.from_dict(data)
    assert schedule == Schedule((Segment("a", 12, "frames"), Segment("b", None, "latent_frames", transition=CUT)), fps=24)
    with pytest.raises(ScheduleError, match="segment 2: 'transition' must be one of") as info:
        Schedule.from_dict({"segments": [{"prompt": "a", "frames": 1}, {"prompt": "b", "transition": "fade"}]})
    assert info.value.line is None  # plain data has no positions


# -----------------------------------------------------------------------------
# LongLive / Anchor Forcing JSONL


def test_jsonl_switch_indices_from_the_parser_argument():
    text = '{"prompts": ["a", "b", "c"], "seed": 7}\n\n{"prompts": ["d", "e", "f"]}\n'
    first, second = parse_schedule_text(text, "jsonl", switch_frame_indices=[6, 15])
    assert first == Schedule((
        Segment("a", 6, "latent_frames", start=0),
        Segment("b", 9, "latent_frames", start=6),
        Segment("c", None, "latent_frames", start=15),
    ), seed=7, timing="longlive")
    assert second.seed is None and [s.prompt for s in second.segments] == ["d", "e", "f"]


def test_jsonl_switch_indices_in_the_line_win():
    [schedule] = parse_schedule_text('{"prompts": ["a", "b"], "switch_frame_indices": [9]}', "jsonl",
                                     switch_frame_indices=[3])
    assert schedule.segments[1].start == 9


def test_jsonl_single_prompt_needs_no_switch_indices():
    [schedule] = parse_schedule_text('{"prompts": ["a"]}', "jsonl")
    assert schedule.plan(7, temporal_compression=4, fps=16, chunk_frames=3) == [
        PlannedSegment("a", 0, 7, SMOOTH, None)]


# -----------------------------------------------------------------------------
# Echo-Forcing lines


def test_echo_documented_example():
    [schedule] = parse_schedule_text("scene A [10s#] | scene B [5s@] | scene A [10s]", "echo")
    assert schedule == Schedule((
        Segment("scene A", 10, "seconds", transition=SMOOTH),
        Segment("scene B", 5, "seconds", transition=CUT),
        Segment("scene A", 10, "seconds", transition=RECALL),
    ), timing="echo-forcing")


def test_echo_suffix_enters_the_next_scene_and_subtitles_are_ignored():
    # as in the Echo-Forcing release: the suffix of scene i is the transition into scene i + 1, the last one has
    # no next scene, and the text after ";" is subtitles
    [schedule] = parse_schedule_text("a [1s@] | b [2s] | c [3s#] | d [4s@] ; sub a | sub b", "echo")
    assert [(s.prompt, s.transition) for s in schedule.segments] == [
        ("a", SMOOTH), ("b", RECALL), ("c", SMOOTH), ("d", CUT)]


def test_echo_one_video_per_line_with_comments():
    text = "# comment: a '#' then a blank\n#\n\n  a [2.5 s] | b [1.s]  \n#hashtag [3s]\n"
    first, second = parse_schedule_text(text, "echo")
    assert first.segments == (Segment("a", 2.5, "seconds"), Segment("b", 1.0, "seconds"))
    assert second.segments == (Segment("#hashtag", 3, "seconds"),)  # '#' without a blank is a prompt


def planned_starts(schedule, latent_frames, chunk=3):
    return [(p.prompt, p.start) for p in schedule.plan(latent_frames, temporal_compression=4, fps=16,
                                                         chunk_frames=chunk)]


def test_echo_six_ten_second_scenes_switch_where_the_release_does():
    # int(10 s * 16 fps / (4 * 3)) = 13 chunks per scene, rounded down, at cumulative counts
    [line] = parse_schedule_text(" | ".join(f"scene {i} [10s]" for i in range(6)), "echo")
    starts = [start for _, start in planned_starts(line, 240)]
    assert starts == [0, 39, 78, 117, 156, 195]
    # latent k > 0 decodes to video frames 4(k - 1) + 1 .. 4k: each new scene's first video frame
    assert [4 * (s - 1) + 1 for s in starts[1:]] == [153, 309, 465, 621, 777]


def test_echo_rounds_each_scene_down_to_whole_chunks_and_plays_each_at_least_one():
    # 5 s -> int(6.67) = 6 chunks (not the cumulative 13 for 10 s); 0.5 s -> int(0.67) = 0 -> 1 chunk
    [line] = parse_schedule_text("a [5s] | b [5s#] | c [0.5s@] | d [1s]", "echo")
    assert planned_starts(line, 60) == [("a", 0), ("b", 18), ("c", 36), ("d", 39)]


def test_echo_leniency_as_in_the_release():
    # a scene without a duration lasts 21 chunks; empty scenes are skipped; the marker may sit anywhere in a scene
    [line] = parse_schedule_text("a cat | | a [2s#] dog ||  the end [1s] ; subtitles", "echo")
    assert [(s.prompt, s.length, s.transition) for s in line.segments] == [  # the marker is cut out, as there
        ("a cat", None, SMOOTH), ("a  dog", 2.0, SMOOTH), ("the end", 1.0, CUT)]
    assert planned_starts(line, 90) == [("a cat", 0), ("a  dog", 63), ("the end", 63 + 6)]


@pytest.mark.parametrize("line", [
    "A timelapse of clouds over a mountain lake; golden light",  # ';' and all: a plain line is taken whole
    "a cat [5 sec] playing", "#hashtag", "a [-1s] b", "a | b with a bar but no duration",
])
def test_a_line_without_a_duration_marker_is_one_plain_prompt(line):
    [schedule] = parse_schedule_text(line, "echo")
    assert schedule == Schedule.single(line)


def test_plain_prompt_lists_give_one_video_per_line(tmp_path):
    path = tmp_path / "moviegen.txt"
    path.write_text("A dog runs on the beach.\n\nA red car drives through a tunnel at night.\n"
                    "a cat [4s] | a dog [4s#]\n")
    plain, other, echo = load_schedules(path)
    assert (plain, other) == (Schedule.single("A dog runs on the beach."),
                              Schedule.single("A red car drives through a tunnel at night."))
    assert echo.timing == "echo-forcing" and len(echo.segments) == 2


def test_jsonl_two_indices_inside_one_chunk_each_play_a_chunk():
    # LongLive's loop switches at most once per chunk: 40 -> 42, 41 -> 45 (not dropped), 80 -> 81
    [line] = parse_schedule_text('{"prompts": ["a", "b", "c", "d"], "switch_frame_indices": [40, 41, 80]}', "jsonl")
    assert planned_starts(line, 90) == [("a", 0), ("b", 42), ("c", 45), ("d", 81)]


def test_a_planned_switch_keeps_the_index_it_was_asked_for():
    # Anchor Forcing times its junction from the asked index (40), not from where the switch plays (42)
    [line] = parse_schedule_text('{"prompts": ["a", "b", "c", "d"], "switch_frame_indices": [40, 41, 120]}', "jsonl")
    plan = line.plan(150, temporal_compression=4, fps=16, chunk_frames=3)
    assert [(p.start, p.asked) for p in plan] == [(0, 0), (42, 40), (45, 41), (120, 120)]


def test_jsonl_accepts_anchor_forcings_num_and_seeds_the_line_once():
    [line] = parse_schedule_text('{"prompts": ["a", "b"], "seed": 6979, "num": 26, "switch_frame_indices": [9]}',
                                 "jsonl")
    assert line.seed == 6979
    assert [p.seed for p in line.plan(18, temporal_compression=4, fps=16, chunk_frames=3)] == [None, None]
    error = error_of('{"prompts": ["a"], "num": -1}', "jsonl")
    assert "'num' must be a non-negative integer, got -1" in error.message and error.column == 27


def test_timing_round_trips_through_the_native_format():
    [line] = parse_schedule_text("a [5s] | b [5s#] | c", "echo")
    assert parse_schedule_text(line.dump_yaml(), "yaml") == [line]
    assert "'timing' must be one of streamgen, echo-forcing, longlive" in error_of(
        "timing: late\nsegments:\n  - prompt: a\n", "yaml").message


# -----------------------------------------------------------------------------
# Files and format detection


def test_example_assets_parse():
    [shapes] = load_schedules(ASSETS / "shapeworld-switch.yaml")
    assert [(s.prompt, s.transition) for s in shapes.segments] == [(RED, SMOOTH), (YELLOW, SMOOTH), (RED, RECALL)]
    assert shapes.source == str(ASSETS / "shapeworld-switch.yaml")
    longlive = load_schedules(ASSETS / "longlive.jsonl")
    assert [len(s.segments) for s in longlive] == [2, 3]
    echo = load_schedules(str(ASSETS / "echo.txt"))
    assert [[s.transition for s in e.segments] for e in echo] == [[SMOOTH, CUT, RECALL], [SMOOTH, SMOOTH], [SMOOTH, CUT]]
    # the release's leniency: the marker mid-scene, an empty scene skipped, a last scene without a duration
    lenient = echo[2].plan(200, temporal_compression=4, fps=16, chunk_frames=3)
    assert [(p.start, p.length) for p in lenient] == [(0, 6), (6, 194)] and "[2s#]" not in lenient[0].prompt
    plain = load_schedules(ASSETS / "prompts.txt")  # Self-Forcing / LongLive / VBench lists: one video per line
    assert [[s.prompt for s in p.segments] for p in plain] == [[line] for line in
                                                               (ASSETS / "prompts.txt").read_text().splitlines()]
    # Anchor Forcing's lines: seed and num per line, switch indices from its config (here: the command line)
    anchor = load_schedules(ASSETS / "anchor-forcing.jsonl", switch_frame_indices=[12, 24])
    assert [(len(s.segments), s.seed) for s in anchor] == [(3, 7), (3, 11)]


@pytest.mark.parametrize("name", ["shapeworld-switch.yaml", "longlive.jsonl", "echo.txt"])  # plain lists go by .txt
def test_example_assets_are_sniffed_from_their_text(name):
    path = ASSETS / name
    assert parse_schedule_text(path.read_text()) == load_schedules(path)


@pytest.mark.parametrize("suffix, text", [
    (".yml", "segments:\n  - prompt: a\n"),
    (".json", '{"segments": [{"prompt": "a"}]}'),
    (".jsonl", '{"prompts": ["a"]}\n'),
    (".txt", "a [1s]\n"),
])
def test_format_comes_from_the_file_extension(tmp_path, suffix, text):
    path = tmp_path / f"schedule{suffix}"
    path.write_text(text)
    [schedule] = load_schedules(path)
    assert schedule.segments[0].prompt == "a" and schedule.source == str(path)


def test_raw_text_and_bytes_are_accepted():
    assert load_schedules("a [1s#] | b [2s]")[0].segments[1].transition is CUT
    assert load_schedules(b'\xef\xbb\xbf{"prompts": ["caf\xc3\xa9"]}')[0].segments[0].prompt == "café"


def test_unreadable_and_non_utf8_files(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"segments:\n  - prompt: caf\xe9\n")
    with pytest.raises(ScheduleError) as info:
        load_schedules(path)
    assert (info.value.source, info.value.line, info.value.column) == (str(path), 2, 16)
    assert "not valid UTF-8" in str(info.value)
    with pytest.raises(ScheduleError, match="cannot read the file") as info:
        load_schedules(tmp_path / "missing.yaml")
    assert info.value.line is None  # truly unknown
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ScheduleError, match="empty") as info:
        load_schedules(empty)
    assert (info.value.line, info.value.column) == (1, 1)


def test_bad_arguments_are_schedule_errors():
    with pytest.raises(ScheduleError, match="unknown format 'toml'"):
        parse_schedule_text("x", "toml")
    with pytest.raises(ScheduleError, match="only applies to the jsonl format"):
        parse_schedule_text("a [1s]", "echo", switch_frame_indices=[3])
    with pytest.raises(ScheduleError, match=r"switch_frame_indices argument\[1\] must be an integer greater than 5"):
        parse_schedule_text('{"prompts": ["a", "b", "c"]}', "jsonl", switch_frame_indices=[5, 3])


# -----------------------------------------------------------------------------
# plan(): laying a schedule onto the generator's grid


def grid(schedule, num_latent_frames, t=4, fps=16, chunk=3):
    return [(p.prompt, p.start, p.length)
            for p in schedule.plan(num_latent_frames, temporal_compression=t, fps=fps, chunk_frames=chunk)]


def test_plan_seconds_to_frames_to_latent_frames_to_chunks():
    schedule = Schedule((
        Segment("a", 3, "seconds"),    # 3 s  = frame 48 -> latent 12, a chunk boundary
        Segment("b", 2.3, "seconds"),  # 2.3 s = round(36.8) = 37 frames: b ends at frame 85
        Segment("c", 1, "seconds"),    # frame 85 -> latent ceil(85/4) = 22 -> boundary 24
    ))
    assert grid(schedule, 30) == [("a", 0, 12), ("b", 12, 12), ("c", 24, 6)]  # c runs to the end


def test_plan_video_frame_to_latent_frame_rule():
    # latent 0 holds frame 0, latent k holds frames 4k-3 .. 4k: a segment starting at frame f
    # starts at latent ceil(f / 4), the latent frame that holds frame f.
    for frame, latent in [(1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (48, 12), (49, 13)]:
        schedule = Schedule((Segment("a", frame, "frames"), Segment("b", None, "frames")))
        assert grid(schedule, 20, chunk=1) == [("a", 0, latent), ("b", latent, 20 - latent)], frame


def test_plan_moves_each_switch_to_the_next_chunk_boundary():
    schedule = Schedule((Segment("a", 4, "latent_frames"), Segment("b", 3, "latent_frames"), Segment("c", None, "frames")))
    assert grid(schedule, 12, chunk=3) == [("a", 0, 6), ("b", 6, 3), ("c", 9, 3)]
    assert grid(schedule, 12, chunk=4) == [("a", 0, 4), ("b", 4, 4), ("c", 8, 4)]


def test_plan_drops_segments_that_collapse_or_start_after_the_end():
    schedule = Schedule((
        Segment("a", 0.01, "seconds"),     # 0.16 frames round to 0: b starts where a does, a is dropped
        Segment("b", 1, "latent_frames"),
        Segment("c", 1, "latent_frames"),  # c starts at latent 1, d at latent 2: both switch at
        Segment("d", 10, "latent_frames"),  # boundary 3, so c is dropped
        Segment("e", 5, "latent_frames"),  # starts at latent 12 >= 9: dropped
    ))
    assert grid(schedule, 9) == [("b", 0, 3), ("d", 3, 6)]


def test_plan_last_prompt_continues_to_the_end():
    schedule = Schedule((Segment("a", 1, "seconds"), Segment("b", 1, "seconds")))
    assert grid(schedule, 21) == [("a", 0, 6), ("b", 6, 15)]


def test_plan_explicit_starts_override_lengths():
    schedule = Schedule((
        Segment("a", 100, "frames"),
        Segment("b", 4, "frames", start=24),    # cuts a short: a ends at frame 24 = latent 6
        Segment("c", 1, "seconds", start=60, start_unit="frames"),  # b holds until frame 60 = latent 15
    ))
    assert grid(schedule, 21) == [("a", 0, 6), ("b", 6, 9), ("c", 15, 6)]


def test_plan_schedule_fps_overrides_the_argument():
    schedule = Schedule((Segment("a", 2, "seconds"), Segment("b", None, "seconds")), fps=8)
    assert grid(schedule, 12, fps=16, chunk=1) == [("a", 0, 4), ("b", 4, 8)]  # 2 s = 16 frames at 8 fps


def test_plan_seeds_and_transitions():
    schedule = Schedule((Segment("a", 12, "frames", seed=5), Segment("b", 12, "frames", transition=RECALL)), seed=1)
    assert schedule.plan(6, temporal_compression=4, fps=16, chunk_frames=3) == [
        PlannedSegment("a", 0, 3, SMOOTH, 5), PlannedSegment("b", 3, 3, RECALL, None)]


def test_plan_rejects_starts_that_go_backwards_once_units_are_resolved():
    # 2 s and frame 10 can only be compared once fps is known
    schedule = Schedule((Segment("a", 1, "frames"), Segment("b", 1, "seconds", start=2), Segment("c", 1, "frames", start=10)))
    with pytest.raises(ScheduleError, match="segment 3 starts at video frame 10, before segment 2 .video frame 32."):
        schedule.plan(30, temporal_compression=4, fps=16, chunk_frames=3)


def test_plan_rejects_bad_grid_arguments():
    schedule = Schedule.single("a")
    with pytest.raises(ValueError, match="chunk_frames must be a positive integer"):
        schedule.plan(10, temporal_compression=4, fps=16, chunk_frames=0)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        schedule.plan(10, temporal_compression=4, fps=math.nan, chunk_frames=3)


# -----------------------------------------------------------------------------
# Malformed input: every case is a ScheduleError at an exact line and column.

BAD_YAML = [
    # (text, line, column, message fragment)
    ("segments:\n  - prompt: a\n    frames: -3\n", 3, 13, "segment 1: 'frames' must be a positive integer, got -3"),
    ("segments:\n  - prompt: a\n    frames: 2.5\n", 3, 13, "'frames' must be a positive integer, got 2.5"),
    ("segments:\n  - prompt: a\n    frames: true\n", 3, 13, "'frames' must be a positive integer, got true"),
    ("segments:\n  - prompt: a\n    frames: '3'\n", 3, 13, "'frames' must be a positive integer, got '3'"),
    ("segments:\n  - prompt: a\n    seconds: .nan\n", 3, 14, "'seconds' must be a positive number, got nan"),
    ("segments:\n  - prompt: a\n    seconds: -.inf\n", 3, 14, "got -inf"),
    ("segments:\n  - prompt: a\n    latent_frames: 0\n", 3, 20, "'latent_frames' must be a positive integer, got 0"),
    ("segments:\n  - prompt: '   '\n", 2, 13, "'prompt' must be a non-empty string, got '   '"),
    ("segments:\n  - prompt: 42\n", 2, 13, "'prompt' must be a non-empty string, got 42"),
    ("segments:\n  - prompt:\n", 2, 12, "'prompt' must be a non-empty string, got null"),
    ('segments:\n  - prompt: "\\ud800"\n', 2, 13, "unpaired surrogate"),
    ("segments:\n  - prompt: [a, b]\n", 2, 13, "'prompt' must be a single value, got a list"),
    ("segments:\n  - frames: 3\n", 2, 5, "segment 1: missing 'prompt'"),
    ("segments:\n  - prompt: a\n  - prompt: b\n    frames: 3\n", 2, 5, "segment 1: only the last segment may leave out its length"),
    ("segments:\n  - prompt: a\n    frames: 3\n    seconds: 1\n", 4, 14, "give only one of 'frames', 'seconds', 'latent_frames'"),
    ("segments:\n  - prompt: a\n    start_frame: 0\n    start_second: 0\n", 4, 19, "got both 'start_frame' and 'start_second'"),
    ("segments:\n  - prompt: a\n    start_second: 2\n", 3, 19, "the first segment must start at 0"),
    ("segments:\n  - prompt: a\n    frames: 10\n  - prompt: b\n    start_frame: 20\n    frames: 5\n"
     "  - prompt: c\n    start_frame: 15\n", 8, 18,
     "segment 3: 'start_frame' must be later than the start of segment 2 (20 frames), got 15"),
    ("segments:\n  - prompt: a\n    frames: 10\n  - prompt: b\n    start_frame: 0\n", 5, 18,
     "'start_frame' must be later than the start of segment 1 (0 frames), got 0"),
    ("segments:\n  - prompt: a\n    frames: 10\n  - prompt: b\n    frames: 5\n  - prompt: c\n    start_frame: 10\n",
     7, 18, "'start_frame' must be later than the start of segment 2 (10 frames), got 10"),
    ("segments:\n  - prompt: a\n    start_frame: -1\n", 3, 18, "'start_frame' must be a non-negative integer, got -1"),
    ("segments:\n  - prompt: a\n    transition: fade\n", 3, 17, "'transition' must be one of smooth, cut, recall, got 'fade'"),
    ("segments:\n  - prompt: a\n    seed: -1\n", 3, 11, "'seed' must be an integer in [0, 2**64), got -1"),
    ("seed: 1.5\nsegments:\n  - prompt: a\n", 1, 7, "'seed' must be an integer in [0, 2**64), got 1.5"),
    ("fps: 0\nsegments:\n  - prompt: a\n", 1, 6, "'fps' must be a positive number, got 0"),
    ("fps: [16]\nsegments:\n  - prompt: a\n", 1, 6, "'fps' must be a single value"),
    ("fps: 16\nsegmnets: []\n", 2, 1, "unknown key 'segmnets' (did you mean 'segments'?)"),
    ("segments:\n  - prompt: a\n    frmaes: 3\n", 3, 5, "segment 1: unknown key 'frmaes' (did you mean 'frames'?)"),
    ("segments: []\n", 1, 11, "a schedule needs at least one segment"),
    ("fps: 16\n", 1, 1, "the schedule needs a 'segments' list"),
    ("segments:\n  prompt: a\n", 2, 3, "'segments' must be a list, got a mapping"),
    ("segments:\n  - just a prompt\n", 2, 5, "segment 1 must be a mapping (key: value), got 'just a prompt'"),
    ("- prompt: a\n", 1, 1, "the schedule must be a mapping"),
    ("just text\n", 1, 1, "the schedule must be a mapping (key: value), got 'just text'"),
    ("segments:\n  - prompt: a\n    prompt: b\n", 3, 5, "duplicate key 'prompt'"),
    ("segments:\n  - prompt: a\n    1: b\n", 3, 5, "keys must be strings, got 1"),
    ("segments:\n  - prompt: 2024-01-01\n", 2, 13, "unsupported YAML value '2024-01-01'"),
    ("segments:\n  - prompt: !shout a\n", 2, 13, "unsupported YAML value"),
    ("seed: " + "9" * 5000 + "\nsegments:\n  - prompt: a\n", 1, 7, "invalid value"),
    ("segments: &s [*s]\n", 1, 11, "an alias refers to a node that contains it"),
    ("segments: [*nowhere]\n", 1, 12, "invalid YAML: found undefined alias 'nowhere'"),
    ("segments: " + "[" * 40 + "]" * 40 + "\n", 1, 42, "nesting is too deep"),
    ("segments:\n\t- prompt: a\n", 2, 1, "invalid YAML: while scanning for the next token, found character '\\t' that cannot start any token"),
    ('segments:\n  - prompt: "a\n', 3, 1, "invalid YAML: while scanning a quoted scalar, found unexpected end of stream"),
    ("segments:\n  - prompt: a\n   frames: 3\n", 3, 4, "invalid YAML: while parsing a block collection, expected <block end>"),
    ("segments:\n  - prompt: a\x00\n", 2, 14, "invalid YAML: unacceptable character '\\x00'"),
    ("segments: []\n---\nsegments: []\n", 2, 1, "invalid YAML: expected a single document"),
    ("", 1, 1, "the file is empty"),
    ("# nothing but a comment\n", 1, 1, "the file is empty"),
]


@pytest.mark.parametrize("text, line, column, message", BAD_YAML)
def test_malformed_yaml(text, line, column, message):
    error = error_of(text, "yaml")
    assert message in error.message
    assert (error.line, error.column) == (line, column), error


BAD_JSON = [
    ('{"segments": [}', 1, 15, "invalid JSON: expected a value"),
    ('{"segments": [{"prompt": "a"},]}', 1, 31, "invalid JSON: expected a value"),
    ('{"segments": [{"prompt": "a"}]', 1, 31, "invalid JSON: expected '}'"),
    ('{"fps": NaN, "segments": []}', 1, 9, "invalid JSON: expected a value"),
    ("{'segments': []}", 1, 2, "invalid JSON: expected a key in double quotes"),
    ('{"segments": [{"prompt": "a', 1, 26, "invalid JSON: Unterminated string"),
    ('{"segments": [{"prompt": "\\x"}]}', 1, 27, "invalid JSON: Invalid \\escape"),
    ('{"segments": [{"prompt": "a"}]} x', 1, 33, "invalid JSON: unexpected text after the JSON value"),
    ('{"segments": [], "segments": []}', 1, 18, "duplicate key 'segments'"),
    ('{\n  "segments": [\n    {"prompt": "a", "frames": -3}\n  ]\n}', 3, 31, "'frames' must be a positive integer, got -3"),
    ('{"segments": [{"prompt": "a", "frames": true}]}', 1, 41, "'frames' must be a positive integer, got true"),
    ('{"fps": 1e999, "segments": [{"prompt": "a"}]}', 1, 9, "'fps' must be a positive number, got inf"),
    ('{"seed": ' + "9" * 5000 + ', "segments": []}', 1, 10, "number has too many digits"),
    ('{"segments": ' + "[" * 40 + "]" * 40 + "}", 1, 46, "invalid JSON: nesting is too deep"),
    ('["segments"]', 1, 1, "the schedule must be a mapping"),
    ("", 1, 1, "invalid JSON: the file is empty"),
    ("  \n ", 2, 2, "invalid JSON: the file is empty"),
]


@pytest.mark.parametrize("text, line, column, message", BAD_JSON)
def test_malformed_json(text, line, column, message):
    error = error_of(text, "json")
    assert message in error.message
    assert (error.line, error.column) == (line, column), error


BAD_JSONL = [
    # (text, switch_frame_indices argument, line, column, message fragment)
    ('{"prompts": ["a", "b"], "switch_frame_indices": [3, 5]}', None, 1, 49,
     "2 prompts need 1 switch_frame_indices, got 2"),
    ('{"prompts": ["a", "b", "c"]}', [4], 1, 13, "3 prompts need 2 switch_frame_indices, got 1"),
    ('{"prompts": ["a", "b", "c"]}', None, 1, 13, "3 prompts need 2 switch_frame_indices; add a"),
    ('{"prompts": ["a", "b", "c"], "switch_frame_indices": [8, 8]}', None, 1, 58,
     "switch_frame_indices[1] must be an integer greater than 8"),
    ('{"prompts": ["a", "b"], "switch_frame_indices": [true]}', None, 1, 50, "got true"),
    ('{"prompts": ["a", "b"], "switch_frame_indices": [4.0]}', None, 1, 50, "got 4.0"),
    ('{"prompts": ["a", "b"], "switch_frame_indices": [0]}', None, 1, 50,
     "switch_frame_indices[0] must be an integer greater than 0"),
    ('{"prompts": ["a", "b"], "switch_frame_indices": 4}', None, 1, 49, "'switch_frame_indices' must be a list"),
    ('{"prompts": ["a", " "], "switch_frame_indices": [4]}', None, 1, 19, "segment 2: 'prompt' must be a non-empty string"),
    ('{"prompts": ["a", 5], "switch_frame_indices": [4]}', None, 1, 19, "'prompt' must be a non-empty string, got 5"),
    ('{"prompts": ["a", ["b"]], "switch_frame_indices": [4]}', None, 1, 19, "prompts[1] must be a string, got a list"),
    ('{"prompts": []}', None, 1, 13, "'prompts' must be a non-empty list of strings"),
    ('{"prompts": "a"}', None, 1, 13, "'prompts' must be a non-empty list of strings, got 'a'"),
    ('{"seed": 1}', None, 1, 1, "the line needs a 'prompts' list"),
    ('{"prompt": ["a"]}', None, 1, 2, "unknown key 'prompt' (did you mean 'prompts'?)"),
    ('{"prompts": ["a"], "seed": true}', None, 1, 28, "'seed' must be an integer in [0, 2**64), got true"),
    ('{"prompts": ["a"], "seed": -5}', None, 1, 28, "'seed' must be an integer in [0, 2**64), got -5"),
    ('["a", "b"]', None, 1, 1, "the line must be a mapping"),
    ('{"prompts": ["a"]}\n{"prompts": ["b"]\n', None, 2, 18, "invalid JSON: expected '}'"),
    ('\n\n   {"prompts": ["a"]} {}', None, 3, 23, "invalid JSON: unexpected text after the JSON value"),
    ("", None, 1, 1, "the file is empty"),
]


@pytest.mark.parametrize("text, indices, line, column, message", BAD_JSONL)
def test_malformed_jsonl(text, indices, line, column, message):
    error = error_of(text, "jsonl", switch_frame_indices=indices)
    assert message in error.message
    assert (error.line, error.column) == (line, column), error


BAD_ECHO = [
    ("a cat [0s]", 1, 7, "segment 1: 'seconds' must be a positive number, got 0.0"),
    ("a cat [" + "9" * 400 + "s]", 1, 7, "'seconds' must be a positive number, got inf"),
    ("  [5s] | a dog [1s]", 1, 3, "segment 1: 'prompt' must be a non-empty string"),
    ("a [1s] |  [2s#] ; sub", 1, 11, "segment 2: 'prompt' must be a non-empty string"),
    ("", 1, 1, "the file is empty"),
    ("# only\n#\n   \n", 1, 1, "the file is empty"),
]


@pytest.mark.parametrize("text, line, column, message", BAD_ECHO)
def test_malformed_echo(text, line, column, message):
    error = error_of(text, "echo")
    assert message in error.message
    assert (error.line, error.column) == (line, column), error


def test_hostile_inputs_fail_fast_with_a_position():
    # "billion laughs": the whole document is read before any check, but aliases are never expanded
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    error = error_of(bomb + "segments: [{prompt: *i}]\n", "yaml")
    assert (error.line, error.column) == (1, 1) and "unknown key 'a'" in error.message
    error = error_of("segments: [{prompt: x}]\nx: &i [x]\n", "yaml")
    assert (error.line, error.column) == (2, 1)
    # self-referencing Python data
    data = {"segments": []}
    data["segments"].append(data)
    with pytest.raises(ScheduleError, match="nesting is too deep"):
        Schedule.from_dict(data)


def test_windows_line_endings():
    assert parse_schedule_text("fps: 16\r\nsegments:\r\n  - prompt: a\r\n", "yaml")[0].fps == 16
    assert parse_schedule_text('{"prompts": ["a"]}\r\n{"prompts": ["b"]}\r\n', "jsonl")[1].segments[0].prompt == "b"
    assert parse_schedule_text("a [1s] | b [2s]\r\nc [3s]\r\n", "echo")[0].segments[1] == Segment("b", 2, "seconds")
    assert (error_of("a [1s]\r\n[2s]\r\n", "echo").line, error_of("a [1s]\r\n[2s]\r\n", "echo").column) == (2, 1)


# -----------------------------------------------------------------------------
# Fuzzing: whatever the input, a parser returns valid Schedules or raises ScheduleError.

ALL_FORMATS = ("auto", "yaml", "json", "jsonl", "echo")
SEGMENT_KEYS = ["prompt", *UNITS, *START_KEYS.values(), "transition", "seed", "frmaes"]
EXAMPLES = [DOCUMENTED_YAML, *(p.read_text() for p in sorted(ASSETS.iterdir()))]


def parses_or_raises_schedule_error(text: str) -> None:
    for format in ALL_FORMATS:
        try:
            schedules = parse_schedule_text(text, format)
        except ScheduleError as error:
            assert error.line is not None and error.line >= 1 and error.column >= 1, (format, error)
            assert str(error)
        else:
            assert schedules and all(isinstance(s, Schedule) for s in schedules)


@FUZZ
@given(st.text())
def test_fuzz_arbitrary_text(text):
    parses_or_raises_schedule_error(text)


@FUZZ
@given(st.lists(st.sampled_from(list('{}[]":,-#|@&*!?\'\\ \n\t.0123456789esx')
                                + ["prompt", "seconds", "segments", "prompts", "[1s]", "- ", ": "])).map("".join))
def test_fuzz_syntax_soup(text):
    parses_or_raises_schedule_error(text)


scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(SEGMENT_KEYS + ["segments", "prompts", "fps", "switch_frame_indices"])
                      | st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
schedule_shaped = st.fixed_dictionaries(
    {"segments": st.lists(st.dictionaries(st.sampled_from(SEGMENT_KEYS), scalars, max_size=5), max_size=4)},
    optional={"fps": scalars, "seed": scalars},
)
longlive_shaped = st.fixed_dictionaries(
    {"prompts": st.lists(scalars, max_size=4)},
    optional={"seed": scalars, "switch_frame_indices": st.lists(st.integers(-2, 40) | scalars, max_size=4)},
)


@FUZZ
@given(json_values | schedule_shaped | longlive_shaped)
def test_fuzz_json_ish_values(value):
    for text in (json.dumps(value), yaml.safe_dump(value)):
        parses_or_raises_schedule_error(text)
    try:
        Schedule.from_dict(value)
    except ScheduleError:
        pass


@FUZZ
@given(st.lists(longlive_shaped, min_size=1, max_size=3))
def test_fuzz_jsonl_lines(lines):
    parses_or_raises_schedule_error("\n".join(json.dumps(line) for line in lines))


echo_scene = st.tuples(st.text(alphabet="ab #|@[]", max_size=6),
                       st.sampled_from(["[1s]", "[2.5s#]", "[3s@]", "[0s]", "[s]", "[1 s]", "[1s", "", "[1.s]", "[9e9s]"]))


@FUZZ
@given(st.lists(st.lists(echo_scene, min_size=1, max_size=4), min_size=1, max_size=3))
def test_fuzz_echo_lines(lines):
    parses_or_raises_schedule_error("\n".join(" | ".join(f"{p} {d}" for p, d in line) for line in lines))


@st.composite
def mutated_examples(draw):
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate"]))
        if op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 10)):]
        elif op == "insert":
            text = text[:at] + draw(st.text(alphabet='{}[]":,-#|@ \n\t.0123456789sx', min_size=1, max_size=4)) + text[at:]
        else:
            text = text[:at] + text[at:at + 20] + text[at:]
    return text


@FUZZ
@given(mutated_examples())
def test_fuzz_mutated_examples(text):
    parses_or_raises_schedule_error(text)


# -----------------------------------------------------------------------------
# Round trips, and plan() invariants on arbitrary valid schedules


def amounts(unit, *, minimum):
    """Lengths (minimum=1) are positive, starts (minimum=0) non-negative; frames are whole."""
    if unit == "seconds":
        return st.floats(min_value=minimum and 0.001, max_value=999) | st.integers(minimum, 999)
    return st.integers(minimum, 999)


@st.composite
def schedules(draw):
    count = draw(st.integers(1, 5))
    segments = []
    for i in range(count):
        unit = draw(st.sampled_from(UNITS))
        length = None if i == count - 1 and draw(st.booleans()) else draw(amounts(unit, minimum=1))
        start = start_unit = None
        if draw(st.integers(0, 3)) == 0:
            start_unit = draw(st.sampled_from(UNITS))
            # far apart, so explicit starts always lie after anything before them
            start = 0 if i == 0 else i * 10_000 + draw(amounts(start_unit, minimum=0))
        prompt = draw(st.text(min_size=1, max_size=20).filter(str.strip))
        segments.append(Segment(prompt, length, unit, start=start, start_unit=start_unit,
                                transition=draw(st.sampled_from(Transition)),
                                seed=draw(st.none() | st.integers(0, 2**64 - 1))))
    return Schedule(tuple(segments), seed=draw(st.none() | st.integers(0, 2**64 - 1)),
                    fps=draw(st.none() | st.floats(0.5, 240) | st.integers(1, 240)))


@FUZZ
@given(schedules())
def test_round_trip_through_yaml_json_and_dicts(schedule):
    assert parse_schedule_text(schedule.dump_yaml(), "yaml") == [schedule]
    assert parse_schedule_text(json.dumps(schedule.to_dict()), "json") == [schedule]
    assert Schedule.from_dict(schedule.to_dict()) == schedule


@pytest.mark.parametrize("prompt", ["1e3", "yes", "null", "- a", "a: b", "#x", " a\n\nb ", "a\x85b", "a\u2028b\u2029", "\ufeffa", "café 😀"])
def test_round_trip_keeps_tricky_prompts(prompt):
    schedule = Schedule((Segment(prompt, 2, "frames"), Segment("b", None, "latent_frames")))
    assert parse_schedule_text(schedule.dump_yaml(), "yaml") == [schedule]


@st.composite
def short_schedules(draw):
    """Lengths small enough that several segments land inside a short video."""
    segments = [
        Segment(f"p{i}", draw(st.floats(0.01, 3) if unit == "seconds" else st.integers(1, 40)), unit,
                transition=draw(st.sampled_from(Transition)))
        for i, unit in enumerate(draw(st.lists(st.sampled_from(UNITS), min_size=1, max_size=6)))
    ]
    return Schedule(tuple(segments))


@FUZZ
@given(short_schedules(), st.integers(1, 120), st.integers(1, 8), st.integers(1, 8), st.sampled_from([8, 16, 24, 30]))
def test_plan_covers_the_video_exactly(schedule, num_latent_frames, t, chunk, fps):
    planned = schedule.plan(num_latent_frames, temporal_compression=t, fps=fps, chunk_frames=chunk)
    assert planned[0].start == 0 and planned[-1].end == num_latent_frames
    for before, after in zip(planned, planned[1:]):
        assert before.end == after.start
    assert all(p.length > 0 and p.start % chunk == 0 for p in planned)
    # segments keep their order; only dropped ones disappear
    order = [int(p.prompt[1:]) for p in planned]
    assert order == sorted(set(order))
