"""Checks of values read from preset files: YAML's ``true`` / ``false`` load as bools, which Python counts as ints."""

from __future__ import annotations


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
