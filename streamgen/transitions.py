"""The transition vocabulary: how a stream enters a new prompt. Spelled here once; schedules, the pipeline, the cache
mechanisms, the ShapeWorld renderer and the demo import it."""

from __future__ import annotations

from enum import Enum


class Transition(str, Enum):
    """How a segment is entered. Parsers accept the names case-insensitively."""

    SMOOTH = "smooth"  # the new scene grows out of the old one
    CUT = "cut"        # hard cut
    RECALL = "recall"  # an earlier scene comes back

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return None


# The names in order, for messages, menus and per-transition option keys (a member equals and hashes as its name).
TRANSITIONS: tuple[str, ...] = tuple(t.value for t in Transition)
