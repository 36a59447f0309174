"""The demo's playback clock, on a fake clock: frames at the stream's fps, or evenly spread when chunks come slower."""

from __future__ import annotations

import pytest

from streamgen.demo.pacing import PlaybackClock


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def _shown_at(clock: PlaybackClock, fake: FakeTime, frames: int, interval: float) -> list[float]:
    times = []
    for _ in range(frames):
        clock.wait_for_frame(interval)
        times.append(fake.now)
    return times


def test_frames_play_at_the_stream_fps_while_chunks_arrive_in_time():
    fake = FakeTime()
    clock = PlaybackClock(16.0, clock=fake.clock, sleep=fake.sleep)
    assert clock.interval(3) == pytest.approx(1 / 16)  # nothing measured yet
    clock.chunk_arrived(0.05)  # a chunk of 3 frames (187.5 ms of video) came in 50 ms
    assert clock.interval(3) == pytest.approx(1 / 16)
    times = _shown_at(clock, fake, 6, clock.interval(3))
    assert [b - a for a, b in zip(times, times[1:])] == pytest.approx([1 / 16] * 5)


def test_frames_are_spread_over_the_time_chunks_take_when_they_arrive_slower():
    fake = FakeTime()
    clock = PlaybackClock(16.0, smoothing=0.5, clock=fake.clock, sleep=fake.sleep)
    clock.chunk_arrived(0.3)
    assert clock.interval(3) == pytest.approx(0.1)  # 300 ms per chunk of 3: a frame every 100 ms, not 62.5
    clock.chunk_arrived(0.5)  # a moving average, not the last chunk alone
    assert clock.chunk_s == pytest.approx(0.4) and clock.interval(4) == pytest.approx(0.1)
    times = _shown_at(clock, fake, 4, clock.interval(4))
    assert [b - a for a, b in zip(times, times[1:])] == pytest.approx([0.1] * 3)


def test_a_late_frame_is_shown_at_once_and_a_very_late_one_restarts_the_clock():
    fake = FakeTime()
    clock = PlaybackClock(10.0, restart_after_s=0.25, clock=fake.clock, sleep=fake.sleep)
    clock.wait_for_frame(0.1)
    fake.now += 0.15  # the next frame was due at +0.1: shown at once, and the one after keeps the old schedule
    clock.wait_for_frame(0.1)
    assert fake.now == pytest.approx(100.15) and clock.next_due == pytest.approx(100.2)
    fake.now += 0.5  # far behind: no burst of catch-up frames, the schedule starts again from now
    clock.wait_for_frame(0.1)
    assert clock.next_due == pytest.approx(fake.now + 0.1)


def test_fps_must_be_positive():
    with pytest.raises(ValueError, match="fps must be positive"):
        PlaybackClock(0.0)
