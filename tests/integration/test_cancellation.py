"""Cancelling a task that awaits a call or a stream ends it at once, and drops its connection.

A Jupyter kernel interrupt is such a cancellation (ipykernel cancels the cell's task):
tests/integration/test_notebooks.py checks it in a real kernel. These tests take the kernel out and
show that, once the task is cancelled, the SDK itself never holds the cancellation back, wherever
the call waits: for its answer under aiohttp's total timeout, or for a stream's first event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine

import pytest
from aiohttp import web

from nebula_async import AsyncNebulaClient, Timeout
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import success_body
from tests.integration._support import HELLO, json_handler, make_client, wait_until

ANSWER_AFTER = 5.0  # seconds the slow server takes to answer
PROMPT = 1.0  # a cancelled call must end well within this: generous, the answer would take 5 s

Call = Callable[[AsyncNebulaClient], Coroutine[object, None, object]]


async def _generate(client: AsyncNebulaClient) -> object:
    return await client.generate_text(model="m", prompt="p")


async def _generate_with_total(client: AsyncNebulaClient) -> object:
    return await client.generate_text(model="m", prompt="p", timeout=Timeout(total=30.0))


async def _generate_with_read(client: AsyncNebulaClient) -> object:
    return await client.generate_text(model="m", prompt="p", timeout=Timeout(read=20.0))


async def _stream(client: AsyncNebulaClient) -> object:
    async with client.stream_text(model="m", prompt="p") as stream:
        return [chunk.text async for chunk in stream]


async def _cancel_once_sent(fake: FakeNebulaServer, task: asyncio.Task[object]) -> float:
    """Cancel ``task`` once its request reached ``fake``; return the seconds it took to end."""
    await wait_until(lambda: len(fake.requests) == 1)
    await asyncio.sleep(0.05)  # the call now waits on its socket for the answer
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - started


@pytest.mark.parametrize(
    "call",
    [_generate, _generate_with_total, _generate_with_read, _stream],
    ids=["generate_text", "total_timeout", "read_timeout", "stream_before_first_event"],
)
async def test_cancelling_a_waiting_call_ends_it_at_once(fake: FakeNebulaServer, call: Call) -> None:
    """A call or stream whose task is cancelled while the slow server thinks ends at once, cancelled."""
    fake.time_to_first_token = ANSWER_AFTER
    async with make_client(fake.base_url) as client:
        task: asyncio.Task[object] = asyncio.create_task(call(client))
        assert await _cancel_once_sent(fake, task) < PROMPT
        assert task.cancelled()
        fake.time_to_first_token = 0.0
        assert (await asyncio.wait_for(_generate(client), 2)) is not None  # the client still works
    assert len(fake.requests) == 2  # the cancelled call was not retried


async def test_cancelling_a_waiting_call_closes_its_connection(server: LocalServer) -> None:
    """The server sees a cancelled call's connection closed at once, and the one pooled connection is free."""
    disconnected = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.sleep(ANSWER_AFTER)
        except asyncio.CancelledError:  # aiohttp.web cancels the handler when its client goes away
            disconnected.set()
            raise
        return web.json_response({})

    server.handler = slow
    async with make_client(server.base_url, max_connections=1) as client:
        task = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        await wait_until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(disconnected.wait(), PROMPT)
        server.handler = json_handler(success_body(HELLO))
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert result.text == HELLO
