"""Ctrl-C and ``kill`` as a clean stop of a long command: SIGINT and SIGTERM raise :class:`Stopped`, which the
command catches to finish its output, say what it kept, and exit 128 + the signal number (130 for Ctrl-C).

A signal that arrives inside :meth:`StopSignals.deferred` (a frame half written into ffmpeg's pipe) is held until
the block ends, so output is never cut inside a frame; inside :meth:`StopSignals.ignored` (finishing the file) it
is dropped.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """The user stopped the command (Ctrl-C or ``kill``). A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """``with StopSignals() as stops:`` SIGINT / SIGTERM raise :class:`Stopped` in the block (only where Python
    delivers signals: the main thread; elsewhere the block changes nothing)."""

    def __init__(self):
        self._previous: dict[int, object] = {}
        self._defer = 0
        self._held: int | None = None
        self._ignore = False

    def _handle(self, signum, frame) -> None:
        if self._ignore:
            return
        if self._defer:
            self._held = self._held or signum
            return
        raise Stopped(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def deferred(self):
        """A signal inside the block raises :class:`Stopped` when the block ends."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        if not self._defer and self._held is not None:
            signum, self._held = self._held, None
            raise Stopped(signum)

    @contextmanager
    def ignored(self):
        """Signals inside the block are dropped (the output is being finished)."""
        self._ignore = True
        try:
            yield
        finally:
            self._ignore = False
