"""A cancellation storm: thousands of calls cancelled at random moments; the client and its pool survive.

One client (``max_connections=64``) against an aiohttp.web server on 127.0.0.1 whose answers are,
by prompt: at once; slow to send its headers; cut in two with a pause mid-body; a stream of events
20 ms apart; a 503 (retried after a back-off); a 429 with Retry-After (the client-wide gate); a
dropped connection (retried); an answer after exactly the call's total timeout. Calls start in
waves of 500, more than the pool holds (so some wait for a connection), and nine in ten are
cancelled at a random moment in their first 250 ms: connecting, waiting for headers, mid-body,
mid-stream, in a back-off, at the gate, at the timeout's own moment.

Checked: every task whose cancel() took ended in CancelledError (never another exception, never a
swallowed cancel); the others ended in a correct answer or a NebulaError; the client then answers
correctly; no connection stays acquired; after aclose() the server sees no connection left; no
"Task was destroyed", "Unclosed" or never-retrieved exception is logged (asyncio debug is on for
the first wave, and pytest turns warnings, ResourceWarning included, into errors).

The CI run is the short form: 1,500 calls. The long form::

    NEBULA_STORM_CALLS=20000 python -m pytest tests/integration/test_cancellation_storm.py -s

prints its figures (calls, duration, outcomes, connections left).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from nebula_async import AsyncNebulaClient, NebulaError, RetryPolicy, Timeout
from tests.helpers import error_body, success_body
from tests.integration._support import HELLO, events, make_client, open_stream, wait_until

CALLS = int(os.environ.get("NEBULA_STORM_CALLS", "1500"))
WAVE = 500  # calls started together: more than the pool's 64 connections
CANCEL_WITHIN = 0.25  # seconds after its start, a call is cancelled at a uniform random moment
TOTAL = 0.1  # the "late" calls' total timeout, and how late their answer comes
KINDS = ("quick", "slow", "body", "stream", "fail", "gate", "drop", "late")
STREAMED = ("Hel", "lo, ", "Wor", "ld!")
RETRY = RetryPolicy(max_retries=2, initial_delay=0.05, max_delay=0.1)


class StormServer:
    """An aiohttp.web server on 127.0.0.1 answering each prompt kind (see the module docstring)."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = (await request.json())["prompt"]
        if kind == "slow":
            await asyncio.sleep(random.uniform(0.0, 0.1))
        elif kind == "late":
            await asyncio.sleep(TOTAL)
        elif kind == "fail":
            return web.json_response(error_body("server_error"), status=503)
        elif kind == "gate":
            return web.json_response(
                error_body("rate_limit_exceeded"), status=429, headers={"Retry-After": "0.05"}
            )
        elif kind == "stream":
            response = await open_stream(request)
            for i, text in enumerate(STREAMED):
                await response.write(events(text) if i == len(STREAMED) - 1 else _event(text))
                await asyncio.sleep(0.02)
            await response.write_eof()
            return response
        elif kind in ("body", "drop"):
            body = web.json_response(success_body(HELLO)).body
            assert isinstance(body, bytes)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[:20])
            if kind == "drop":
                assert request.transport is not None
                request.transport.close()  # the connection breaks mid-body: the client retries
                return response
            await asyncio.sleep(0.03)
            await response.write(body[20:])
            await response.write_eof()
            return response
        return web.json_response(success_body(HELLO))

    def open_connections(self) -> int:
        """Return how many connections the server holds open."""
        assert self.runner is not None
        assert self.runner.server is not None
        return len(self.runner.server.connections)


def _event(text: str) -> bytes:
    return events(text).replace(b'"stop"', b"null")  # not the last one: no finish_reason


@pytest.fixture
async def storm_server() -> AsyncIterator[StormServer]:
    """A StormServer for the test, in its own event loop."""
    srv = StormServer()
    app = web.Application()
    app.router.add_post("/v1/text/generate", srv.handle)
    srv.runner = web.AppRunner(app, handler_cancellation=True)
    await srv.runner.setup()
    site = web.TCPSite(srv.runner, "127.0.0.1", 0)
    await site.start()
    srv.base_url = f"http://127.0.0.1:{srv.runner.addresses[0][1]}/v1"
    try:
        yield srv
    finally:
        await srv.runner.cleanup()


def _connections_in_use(client: AsyncNebulaClient) -> int:
    """Return the connections the client's pool has lent out (a look inside, for this test only)."""
    transport = client._calls._transport  # the pool's counters are not public
    session = None if transport is None else transport._session
    if session is None or session.connector is None:
        return 0
    return len(session.connector._acquired)  # aiohttp's own count of connections lent out


async def _call(client: AsyncNebulaClient, kind: str) -> str:
    if kind == "stream":
        async with client.stream_text(model="m", prompt=kind) as stream:
            return "".join([chunk.text async for chunk in stream])
    timeout = Timeout(total=TOTAL) if kind == "late" else None
    return (await client.generate_text(model="m", prompt=kind, timeout=timeout)).text


@pytest.mark.storm
@pytest.mark.timeout(max(30, CALLS // 100))  # the long form takes longer than the suite's 30 s
async def test_a_cancellation_storm_leaves_the_client_working_and_its_pool_whole(
    storm_server: StormServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls cancelled at random moments all end cancelled; the client then works, no connection is left."""
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 1.0  # a loaded machine is slow; leaks, not speed, are checked here
    caplog.set_level(logging.WARNING, logger="asyncio")
    rng = random.Random(13)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    client = make_client(storm_server.base_url, retry=RETRY, max_connections=64)
    try:
        for first in range(0, CALLS, WAVE):
            loop.set_debug(first == 0)  # asyncio debug costs 5x: for the first wave only
            kinds = [rng.choice(KINDS) for _ in range(min(WAVE, CALLS - first))]
            tasks = [asyncio.create_task(_call(client, kind)) for kind in kinds]
            cancelled: dict[asyncio.Task[str], bool] = {}
            for task in tasks:
                if rng.random() < 0.9:
                    loop.call_later(rng.uniform(0.0, CANCEL_WITHIN), _cancel, task, cancelled)
            await asyncio.wait(tasks)
            for kind, task in zip(kinds, tasks, strict=True):
                outcomes[_outcome(kind, task, took=cancelled.get(task, False))] += 1
        assert await asyncio.wait_for(_call(client, "quick"), 5) == HELLO  # the client still works
        assert await asyncio.wait_for(_call(client, "stream"), 5) == HELLO
        await wait_until(lambda: _connections_in_use(client) == 0, timeout=5)
    finally:
        await client.aclose()
    await wait_until(lambda: storm_server.open_connections() == 0, timeout=5)
    loop.set_debug(True)  # for what the collection below may log
    elapsed = time.monotonic() - started
    gc.collect()  # an unclosed session or connection would warn (an error here) or log now
    await asyncio.sleep(0)
    noise = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" not in r.getMessage()]
    print(f"\nstorm: {CALLS} calls in {elapsed:.1f} s: {dict(sorted(outcomes.items()))}; "
          f"connections left: {storm_server.open_connections()}")  # fmt: skip
    assert noise == []
    assert not [name for name in outcomes if name.startswith("BAD")], outcomes
    assert sum(outcomes.values()) == CALLS
    # A storm it was: some cancels took, and some calls answered (else the checks above prove nothing).
    assert outcomes["cancelled"] > 0
    assert outcomes["answered"] > 0


def _cancel(task: asyncio.Task[str], took: dict[asyncio.Task[str], bool]) -> None:
    took[task] = task.cancel()  # False: it had ended already


def _outcome(kind: str, task: asyncio.Task[str], *, took: bool) -> str:
    """Name how ``task`` ended; "BAD ..." for what must not happen."""
    if task.cancelled():
        return "cancelled" if took else "BAD cancelled without a cancel"
    error = task.exception()
    if took:  # a cancel that took must end the task cancelled: anything else swallowed it
        return f"BAD cancel lost ({kind}: {type(error).__name__ if error else 'answered'})"
    if error is None:
        return "answered" if task.result() == HELLO else f"BAD wrong text ({kind})"
    if isinstance(error, NebulaError):
        return f"error {type(error).__name__}"
    return f"BAD {type(error).__name__} ({kind}): {error}"
