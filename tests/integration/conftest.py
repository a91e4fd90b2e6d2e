"""Fixtures shared by the integration tests."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def unraisables(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Collect what ``__del__`` methods raise during the test, instead of letting pytest fail on it."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
    return seen
