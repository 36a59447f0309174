"""When the demo shows each frame: at the pipeline's fps, or as fast as chunks arrive when they arrive slower.

A server with more sessions than cores cannot generate every stream in real time. Shown at full rate, a late chunk's
frames would play in a burst and then stall until the next chunk; spread over the time a chunk takes to arrive, the
same frames play evenly and a late chunk shows as one longer gap.
"""

from __future__ import annotations

import time
from typing import Callable


class PlaybackClock:
    """Due times of one run's frames. ``fps``: the stream's rate. ``smoothing``: weight of the newest chunk's arrival
    time in the moving average. ``restart_after_s``: a frame this late restarts the clock instead of the next frames
    playing fast to catch up."""

    def __init__(self, fps: float, *, smoothing: float = 0.3, restart_after_s: float = 0.25,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.frame_s = 1.0 / fps
        self.smoothing = smoothing
        self.restart_after_s = restart_after_s
        self.clock, self.sleep = clock, sleep
        self.chunk_s: float | None = None  # how long a chunk takes to arrive once asked for (moving average)
        self.next_due: float | None = None

    def chunk_arrived(self, waited_s: float) -> None:
        """A chunk arrived ``waited_s`` after it was asked for (generation plus any wait for a free worker)."""
        if self.chunk_s is None:
            self.chunk_s = waited_s
        else:
            self.chunk_s += self.smoothing * (waited_s - self.chunk_s)

    def interval(self, frames: int) -> float:
        """Seconds between the frames of a chunk of ``frames`` frames."""
        if self.chunk_s is None:
            return self.frame_s
        return max(self.frame_s, self.chunk_s / frames)

    def wait_for_frame(self, interval: float) -> None:
        """Sleep until the next frame is due, then set the one after ``interval`` later."""
        now = self.clock()
        if self.next_due is None or now - self.next_due > self.restart_after_s:
            self.next_due = now
        elif self.next_due > now:
            self.sleep(self.next_due - now)
        self.next_due += interval
