"""Argument checks shared by every entry point: one wording for one mistake, wherever it is made."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_number"]


def check_int(name: str, value: object, low: int, high: int | None = None, *, note: str = "") -> int:
    """Return ``value`` if it is an int in [low, high]; raise TypeError or ValueError naming ``name``.

    A bool is not an int here: ``max_tokens=True`` is a mistake, not one token. ``note`` follows
    "an int" in the message, e.g. " or None (no limit)".
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{note}, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} must be an int {bounds}{note}, got {value}")
    return value


def check_number(
    name: str, value: object, *, positive: bool = False, high: float | None = None, unit: str = ""
) -> float:
    """Return ``value`` if it is a finite int or float >= 0 (> 0 if ``positive``, <= ``high`` if given).

    Raise TypeError or ValueError naming ``name``; ``unit`` follows "a number", e.g. " of seconds".
    A bool is not a number here: ``Timeout(read=True)`` is a mistake, not one second.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number{unit}, got {type(value).__name__}")
    if high is not None:
        if not (0 <= value <= high):  # NaN fails this too
            raise ValueError(f"{name} must be between 0 and {high:g}, got {value!r}")
    elif not ((value > 0 if positive else value >= 0) and _finite(value)):
        # A huge int's repr may be thousands of digits.
        shown = (
            f"an int of {value.bit_length()} bits"
            if isinstance(value, int) and value > 2**64
            else repr(value)
        )
        raise ValueError(f"{name} must be a finite number{unit} {'>' if positive else '>='} 0, got {shown}")
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: no rate or duration is that big
        return False
