"""Fixtures shared by the integration tests."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture
def backlog_full_port() -> Iterator[int]:
    """A listening port whose accept queue is full, so a new connection's handshake never completes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # the handshake completes or stalls on its own
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
