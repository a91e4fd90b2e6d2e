"""Regression tests for the second review's async findings, each over a real socket on 127.0.0.1.

The FakeNebulaServer (``fake``) serves what it can; the hand-rolled servers send what it never does:
malformed responses, a body left open after the final event, an error answer that comes late.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import traceback
import warnings
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from nebula_async import (
    APIConnectionError,
    AsyncNebulaClient,
    InvalidRequestError,
    ServerError,
    TextGeneration,
)
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import error_body
from tests.integration._support import (
    CALLS,
    FAST_RETRY,
    NO_RETRY,
    SECRET_KEY,
    STALL,
    Handler,
    RawConnection,
    RawServer,
    collect,
    events,
    make_client,
    open_stream,
    stream_once,
    wait_until,
)

CLOSED_MID_CALL = "closed while the call was running"

Call = Callable[[AsyncNebulaClient], Awaitable[object]]


# --- 1. aclose() while calls wait for a pooled connection -----------------------------------------


async def test_aclose_fails_calls_waiting_for_a_pooled_connection_with_runtime_error(
    fake: FakeNebulaServer,
) -> None:
    """aclose() ends the call holding the only connection and the two queued behind it with RuntimeError."""
    fake.delay_next(3, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1, retry=FAST_RETRY)
    tasks = [asyncio.create_task(client.generate_text(model="m", prompt=f"p{i}")) for i in range(3)]
    await wait_until(lambda: len(fake.requests) == 1)  # p0 holds the connection; p1 and p2 wait for it
    await client.aclose()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
    assert [type(outcome) for outcome in outcomes] == [RuntimeError] * 3
    assert all(CLOSED_MID_CALL in str(outcome) for outcome in outcomes)
    assert [task.cancelled() for task in tasks] == [False] * 3  # nobody cancelled them
    assert [r.json["prompt"] for r in fake.requests] == ["p0"]  # no retry, no queued call sent


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Task.cancelling() tells the two cancellations apart only on 3.11+"
)
async def test_call_cancelled_by_its_caller_while_aclose_runs_stays_cancelled(fake: FakeNebulaServer) -> None:
    """A queued call that its caller cancels while aclose() runs still ends cancelled."""
    fake.delay_next(2, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1, retry=FAST_RETRY)
    holder = asyncio.create_task(client.generate_text(model="m", prompt="p0"))
    queued = asyncio.create_task(client.generate_text(model="m", prompt="p1"))
    await wait_until(lambda: len(fake.requests) == 1)
    queued.cancel()
    await client.aclose()
    outcomes = await asyncio.wait_for(asyncio.gather(holder, queued, return_exceptions=True), 2)
    assert isinstance(outcomes[0], RuntimeError)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert queued.cancelled()


async def test_generate_many_over_a_client_being_closed_raises_runtime_error(fake: FakeNebulaServer) -> None:
    """generate_many(return_exceptions=True) over a client being closed raises RuntimeError."""
    fake.delay_next(3, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1, retry=FAST_RETRY)
    batch = asyncio.create_task(
        client.generate_many(
            [{"model": "m", "prompt": f"p{i}"} for i in range(3)], concurrency=3, return_exceptions=True
        )
    )
    await wait_until(lambda: len(fake.requests) == 1)
    await client.aclose()
    [outcome] = await asyncio.wait_for(asyncio.gather(batch, return_exceptions=True), 2)
    assert isinstance(outcome, RuntimeError)  # raised, or in the results: either way never CancelledError
    assert CLOSED_MID_CALL in str(outcome)
    assert not batch.cancelled()
    assert len(fake.requests) == 1


# --- 2. a malformed response does not carry the key --------------------------------------------


MALFORMED = {
    "bad-status-line": b"HTTP/1.1 abc OK\r\n\r\n",
    "bad-header": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nBad Header\r\n\r\n",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and every exception chained to it, as cause or context."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([current.__cause__, current.__context__])


@CALLS
@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_response_error_does_not_hold_the_api_key(call: Call, payload: bytes) -> None:
    """A malformed response's error holds the key in no chained repr, request_info or traceback."""

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(payload)

    async with RawServer(handle) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError) as info:
            await call(client)
    cause = info.value.__cause__
    assert isinstance(cause, aiohttp.ClientResponseError)  # the one carrying our request's headers
    assert "Authorization" in cause.request_info.headers  # the check below is not vacuous
    assert SECRET_KEY not in repr(dict(cause.request_info.headers))
    assert SECRET_KEY not in repr(cause)
    assert not [repr(e) for e in _chain(info.value) if SECRET_KEY in repr(e)]
    assert SECRET_KEY not in "".join(traceback.format_exception(info.value))
    assert raw.requests == [
        {"model": "m", "prompt": "p", **({"stream": True} if call is stream_once else {})}
    ]


# --- 3. aclose() cancelled half-way still closes the session -------------------------------------


def _final_then_stall() -> Handler:
    """Answer a stream with its final event, then keep the body open for STALL s."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(events("Hi"))
        await asyncio.sleep(STALL)
        return response

    return handler


async def test_cancelled_aclose_still_closes_the_session(
    server: LocalServer, unraisables: list[BaseException | None], caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() cancelled while it waits for a background drain still closes the session, with no warning."""
    caplog.set_level(logging.ERROR)  # "Task was destroyed but it is pending!" is logged by asyncio
    server.handler = _final_then_stall()
    client = make_client(server.base_url, retry=NO_RETRY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The handler stalls after the final event: the body's tail is being drained in the background.
        texts = await collect(client.stream_text(model="m", prompt="p"))
        closing = asyncio.create_task(client.aclose())
        await asyncio.sleep(0)  # aclose() has cancelled the drain and now waits for it
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(RuntimeError, match="client is closed"):
            await client.generate_text(model="m", prompt="p")
        await client.aclose()  # a second aclose() has nothing left to do
        # An unclosed session or connector would warn when collected (the asserts below).
        del client
        await asyncio.sleep(0.01)
        gc.collect()
    assert texts == ["Hi"]
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert unraisables == []
    assert [r.getMessage() for r in caplog.records] == []


# --- 4. a stream cancelled while it waits to retry ------------------------------------------------


async def test_stream_cancelled_while_sleeping_before_a_retry_is_failed(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream cancelled in its Retry-After sleep raises RuntimeError if used again; nothing is resent."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    fake.fail_next(status=429, code="rate_limit_exceeded", message="slow down", retry_after=0.5)
    fake.replies["p"] = "next call"
    async with make_client(fake.base_url, max_connections=1, retry=FAST_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream))
        await wait_until(lambda: any("retrying in" in r.getMessage() for r in caplog.records))
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        with pytest.raises(RuntimeError, match=r"failed earlier \(CancelledError\)"):
            await anext(stream)
        with pytest.raises(RuntimeError, match="failed earlier"):
            await collect(stream)
        next_call = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert next_call.text == "next call"  # the pool's only connection was not kept by the stream
    assert [bool(r.json.get("stream")) for r in fake.requests] == [True, False]  # one stream request
    assert [r.status for r in fake.requests] == [429, 200]


# --- 5. a caller-owned session: aclose() does not mask an in-flight call's outcome -----------------


def _late(status: int, body: object, delay: float = 0.2) -> Handler:
    """Answer every request with ``body`` and ``status`` after ``delay`` s."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.json_response(body, status=status, headers={"x-request-id": "req_late"})

    return handler


async def _call_across_aclose(server: LocalServer | FakeNebulaServer) -> object:
    """Start a call on a caller's session, aclose() the client while it is in flight; return its outcome."""
    async with aiohttp.ClientSession() as session:
        client = make_client(server.base_url, session=session, retry=FAST_RETRY)
        call = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        await wait_until(lambda: len(server.requests) == 1)  # sent; the answer is 0.2 s away
        await client.aclose()
        assert not call.done()
        [outcome] = await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 2)
        assert not session.closed  # the caller's session is the caller's to close
    return outcome


async def test_in_flight_non_retryable_error_is_raised_as_is_after_aclose(server: LocalServer) -> None:
    """A call in flight during aclose() (caller's session) that gets a 400 raises InvalidRequestError."""
    # The fake delays an answer or fails it, not both: a late error needs the hand-rolled server.
    server.handler = _late(400, error_body("invalid_request", "bad prompt"), delay=0.2)
    outcome = await _call_across_aclose(server)
    assert isinstance(outcome, InvalidRequestError), repr(outcome)
    assert outcome.status_code == 400
    assert outcome.request_id == "req_late"
    assert len(server.requests) == 1


async def test_in_flight_retryable_error_after_aclose_raises_runtime_error(server: LocalServer) -> None:
    """A call in flight during aclose() that gets a retryable 503 raises RuntimeError: no retry is sent."""
    server.handler = _late(503, error_body("server_error", "busy"), delay=0.2)
    outcome = await _call_across_aclose(server)
    assert isinstance(outcome, RuntimeError), repr(outcome)
    assert CLOSED_MID_CALL in str(outcome)
    assert isinstance(outcome.__cause__, ServerError)
    assert len(server.requests) == 1


async def test_in_flight_success_after_aclose_is_returned(fake: FakeNebulaServer) -> None:
    """A call in flight during aclose() (caller's session) that gets a 200 returns its result."""
    fake.delay_next(seconds=0.2)
    fake.replies["p"] = "made it"
    outcome = await _call_across_aclose(fake)
    assert isinstance(outcome, TextGeneration), repr(outcome)
    assert outcome.text == "made it"


# --- 6. a bare "?" or "#" ends base_url ------------------------------------------------------------


BARE_MARKERS = [
    "http://127.0.0.1:8080/v1?",
    "http://127.0.0.1:8080/v1#",
    "http://127.0.0.1:8080/v1/?",
    "http://127.0.0.1:8080/v1?#",
    "http://127.0.0.1:8080?",
]


@pytest.mark.parametrize("base_url", BARE_MARKERS)
def test_base_url_ending_in_a_bare_query_or_fragment_marker_is_rejected(base_url: str) -> None:
    """A base_url ending in a bare "?" or "#" raises ValueError when the client is constructed."""
    with pytest.raises(ValueError, match="must not have a query or fragment"):
        AsyncNebulaClient(SECRET_KEY, base_url=base_url)


@pytest.mark.parametrize("base_url", BARE_MARKERS[:2])
def test_env_base_url_ending_in_a_bare_marker_is_rejected(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEBULA_BASE_URL ending in a bare "?" or "#" raises ValueError naming the variable."""
    monkeypatch.setenv("NEBULA_BASE_URL", base_url)
    with pytest.raises(ValueError, match="NEBULA_BASE_URL must not have a query or fragment"):
        AsyncNebulaClient(SECRET_KEY)
