"""Fixtures shared by the integration tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest

from nebula_async.testing import FakeNebulaServer
from tests.integration._support import HELLO


@pytest.fixture
async def fake() -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer in the test's own event loop, knowing the model "m" and answering "p" with HELLO.

    Tests set ``fake.replies``, ``fake.reply`` and ``fake.token_delay``, or script faults, as they need.
    """
    async with FakeNebulaServer(models=["m"], replies={"p": HELLO}) as server:
        yield server


@pytest.fixture
def unraisables(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Collect what ``__del__`` methods raise during the test, instead of letting pytest fail on it."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
    return seen
