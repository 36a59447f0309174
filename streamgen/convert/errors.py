"""The one error type of ``streamgen convert`` (no heavy imports: the CLI's ``--help`` imports this)."""

from __future__ import annotations

from typing import Iterable

MAX_LISTED = 12


class ConversionError(ValueError):
    """A checkpoint that cannot be converted, explained in one paragraph (no newlines, no traceback needed)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def listing(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c ... and 7 more`` for an error message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def either(options: Iterable[str]) -> str:
    """``a, b or c`` for an error message or a help text."""
    options = list(options)
    return " or ".join([", ".join(options[:-1]), options[-1]]) if len(options) > 1 else "".join(options)
