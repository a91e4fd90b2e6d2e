"""Timeouts against slow and stalled real servers: each raises APITimeoutError, quickly.

The FakeNebulaServer (``fake``) delays answers and paces streams; the hand-rolled ``server`` sends
what it never does: a body stalled half-way, keep-alive comments.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiohttp import web

from nebula_async import APIConnectionError, APITimeoutError, RetryPolicy, Timeout
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import NO_RETRY, sse
from tests.integration._support import STALL, chunk, collect, make_client, open_stream, wait_until

# Long enough that no test could pass by waiting it out; a handler is cancelled when its client leaves.


def _stall_after_one_event(fake: FakeNebulaServer) -> None:
    """Make the fake's streams send their first event, "first", then stay silent for STALL s."""
    fake.replies["p"] = "first second"
    fake.token_delay = STALL


@pytest.mark.parametrize(
    "timeout", [Timeout(read=0.1), 0.2, Timeout(total=0.2)], ids=["read", "number", "total"]
)
async def test_slow_server_times_out(fake: FakeNebulaServer, timeout: float | Timeout) -> None:
    """A server slower than the read or total timeout gives APITimeoutError, well before it answers."""
    fake.delay_next(seconds=STALL)
    async with make_client(fake.base_url, timeout=timeout, retry=NO_RETRY) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 1.0


async def test_per_call_timeout_overrides_the_client(fake: FakeNebulaServer) -> None:
    """timeout= on one call replaces the client's generous default for that call."""
    fake.delay_next(seconds=STALL)
    async with make_client(fake.base_url, retry=NO_RETRY) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await client.generate_text(model="m", prompt="p", timeout=0.1)
    assert time.monotonic() - started < 1.0


async def test_timeouts_are_retried(fake: FakeNebulaServer) -> None:
    """A timed-out attempt is retried: max_retries=1 sends the request twice before raising."""
    fake.delay_next(3, seconds=STALL)
    policy = RetryPolicy(max_retries=1, initial_delay=0.001)
    async with make_client(fake.base_url, timeout=Timeout(read=0.1), retry=policy) as client:
        with pytest.raises(APITimeoutError):
            await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 2


async def test_slow_body_after_headers_times_out(server: LocalServer) -> None:
    """Headers on time but a body that stalls half-way still gives APITimeoutError."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"status": "success", "data": {"text": "hal')
        await asyncio.sleep(STALL)
        return response

    server.handler = handler
    async with make_client(server.base_url, timeout=Timeout(read=0.1), retry=NO_RETRY) as client:
        with pytest.raises(APITimeoutError):
            await client.generate_text(model="m", prompt="p")


async def test_stalled_stream_read_timeout(fake: FakeNebulaServer) -> None:
    """A stream that stops sending after one event raises APITimeoutError once the read timeout passes."""
    _stall_after_one_event(fake)
    received: list[str] = []
    async with make_client(fake.base_url, timeout=Timeout(read=0.2)) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            await collect(client.stream_text(model="m", prompt="p"), received)
    assert time.monotonic() - started < 1.0
    assert received == ["first"]
    assert info.value.request_id == fake.requests[0].request_id
    assert len(fake.requests) == 1  # "first" was delivered: not retried


async def test_stalled_stream_stream_idle_timeout(fake: FakeNebulaServer) -> None:
    """A silent stream fails after stream_idle even when the read timeout is much longer."""
    _stall_after_one_event(fake)
    async with make_client(fake.base_url, timeout=Timeout(read=30, stream_idle=0.2)) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p")), 3)
    assert time.monotonic() - started < 1.0


async def test_keep_alives_do_not_reset_stream_idle(server: LocalServer) -> None:
    """A stream that only sends `: keep-alive` every 20 ms fails once stream_idle passes without data."""
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(sse(chunk("only this")))
        while not stop.is_set():
            await asyncio.sleep(0.02)
            await response.write(b": keep-alive\n\n")
        return response

    server.handler = handler
    received: list[str] = []
    async with make_client(server.base_url, timeout=Timeout(stream_idle=0.2)) as client:
        started = time.monotonic()
        try:
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p"), received), 2)
        finally:
            stop.set()
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 1.0
    assert received == ["only this"]


async def test_keep_alives_only_from_the_start(server: LocalServer) -> None:
    """Keep-alives with no data event at all also trip stream_idle, with APITimeoutError."""
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        while not stop.is_set():
            await response.write(b":\n\n")
            await asyncio.sleep(0.02)
        return response

    server.handler = handler
    async with make_client(server.base_url, timeout=Timeout(stream_idle=0.2), retry=NO_RETRY) as client:
        try:
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p")), 3)
        finally:
            stop.set()


async def test_data_events_reset_stream_idle(fake: FakeNebulaServer) -> None:
    """Data events every 50 ms keep a stream alive for longer than stream_idle: it is not a total timeout."""
    texts = [*(f" {i}" for i in range(9)), " end"]  # one token, so one event, each
    fake.replies["p"] = "".join(texts)
    fake.token_delay = 0.05
    async with make_client(fake.base_url, timeout=Timeout(stream_idle=0.2)) as client:
        started = time.monotonic()
        got = [piece.text async for piece in client.stream_text(model="m", prompt="p")]
    assert time.monotonic() - started > 0.3  # longer than stream_idle in total
    assert got == texts


async def test_connect_timeout_is_a_timeout(backlog_full_port: int) -> None:
    """A connection that cannot be established in Timeout(connect=...) raises APITimeoutError."""
    base_url = f"http://127.0.0.1:{backlog_full_port}/v1"
    async with make_client(base_url, timeout=Timeout(connect=0.2), retry=NO_RETRY) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value, APIConnectionError)  # a timeout is also a connection error


@pytest.mark.parametrize("kind", ["generate", "stream"])
async def test_total_timeout_covers_waiting_for_a_pooled_connection(
    fake: FakeNebulaServer, kind: str
) -> None:
    """With the only connection busy, a call or stream with total=0.3 fails in time instead of queueing on."""
    # Regression (review of 6705a48): a stream's wait for a pooled connection had no bound.
    async with contextlib.AsyncExitStack() as stack:
        client = make_client(fake.base_url, max_connections=1, retry=NO_RETRY)
        await stack.enter_async_context(client)
        if kind == "stream":
            fake.replies["busy"] = "held on"
            fake.token_delay = STALL  # "held", then nothing for STALL s
            holder = await stack.enter_async_context(client.stream_text(model="m", prompt="busy"))
            assert (await anext(holder)).text == "held"  # it now holds the only connection
        else:
            fake.delay_next(seconds=STALL)
            busy = asyncio.create_task(client.generate_text(model="m", prompt="busy"))
            stack.push_async_callback(_cancel, busy)
            await wait_until(lambda: len(fake.requests) == 1)  # the first call now holds the connection

        async def queued() -> object:
            if kind == "stream":
                return await collect(client.stream_text(model="m", prompt="q", timeout=Timeout(total=0.3)))
            return await client.generate_text(model="m", prompt="q", timeout=Timeout(total=0.3))

        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await queued()
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    assert [r.json["prompt"] for r in fake.requests] == ["busy"]  # the second never got a connection


async def _cancel(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
