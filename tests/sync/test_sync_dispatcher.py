"""The sync client's one-hop dispatcher: one call's failure stays that call's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient
from tests.helpers import KEY


async def _requests_awaiting_a_cancelled_future() -> AsyncIterator[dict[str, Any]]:
    """An input generator that awaits a future someone else gave up on: a CancelledError of its own."""
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)
    await future
    yield {"model": "m", "prompt": "never sent"}  # pragma: no cover - the await above raises


def test_a_stray_cancellation_in_one_call_spares_the_others(fake_thread: FakeNebulaServer) -> None:
    """A call ending in its own CancelledError fails alone: another thread's call and later calls succeed."""
    with NebulaClient(KEY, base_url=fake_thread.base_url, max_retries=0) as client:
        fake_thread.delay_next(1, seconds=0.5)
        other: dict[str, object] = {}

        def slow_call() -> None:
            other["text"] = client.generate_text(model="m", prompt="other thread").text

        thread = threading.Thread(target=slow_call)
        thread.start()
        time.sleep(0.15)  # the slow call is running in the loop
        with pytest.raises(concurrent.futures.CancelledError):
            client.generate_many(_requests_awaiting_a_cancelled_future())
        thread.join(5)
        assert other == {"text": "echo: other thread"}
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
        assert not client.closed
