"""Fixtures of the fake server's tests: a raw HTTP session and a server in the test's own loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from nebula_async.testing import FakeNebulaServer
from tests.testing._support import FAKE_KEY, REPLIES


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw aiohttp session, one connection per request, so a fault never poisons the next request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer that accepts FAKE_KEY only and answers REPLIES, in the test's event loop."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], replies=REPLIES) as server:
        yield server
