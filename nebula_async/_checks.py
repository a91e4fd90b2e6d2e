"""Argument checks shared by every entry point: one wording for one mistake, wherever it is made."""

from __future__ import annotations

__all__ = ["check_int"]


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
