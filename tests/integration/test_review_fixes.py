"""Regression tests for the review fixes of 6705a48, each over a real socket on 127.0.0.1.

The FakeNebulaServer (``fake``) serves what it can; the hand-rolled servers send what it never does:
a stall with the body open after some events, a tail after the final event, a clean end without a
final event, ``[DONE]``, a byte order mark, ``"error": null``, redirects and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import ssl
import sys
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import nebula_async
from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNebulaClient,
    InsufficientQuotaError,
    TextStream,
    Timeout,
)
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import sse, success_body
from tests.integration._support import (
    CALLS,
    FAST_RETRY,
    HELLO,
    NO_RETRY,
    SECRET_KEY,
    SSE_HEAD_UNTIL_CLOSE,
    STALL,
    Handler,
    RawConnection,
    RawServer,
    chunk,
    collect,
    events,
    free_port,
    http_head,
    make_client,
    open_stream,
    stream_handler,
    wait_until,
)
from tests.integration._tls import self_signed_cert, server_context, trusting_context

BOM = b"\xef\xbb\xbf"

Call = Callable[[AsyncNebulaClient], Awaitable[object]]


# The test server upgrades its sockets with loop.start_tls(), which resets the connection on 3.10.
_tls_server_works = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the test TLS server needs Python 3.11+"
)


def _stream_then_json(*first: bytes) -> Handler:
    """Answer a stream with ``first`` then stall STALL s; answer a plain call with a success at once."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(success_body("next call"))
        response = await open_stream(request, {"x-request-id": "req_s"})
        for payload in first:
            await response.write(payload)
        await asyncio.sleep(STALL)
        return response

    return handler


# --- 1. a cancelled or failed stream is over for good --------------------------------------------


@pytest.mark.parametrize("delivered", [[], ["Hello"]], ids=["before-first-chunk", "after-a-chunk"])
async def test_cancelled_read_makes_the_stream_fail_without_resending(
    server: LocalServer, delivered: list[str]
) -> None:
    """A read cancelled by wait_for leaves a stream that raises RuntimeError and never sends again."""
    server.handler = _stream_then_json(*(sse(chunk(text)) for text in delivered))
    async with make_client(server.base_url, retry=FAST_RETRY, max_connections=1) as client:
        stream = client.stream_text(model="m", prompt="p")
        received = [(await asyncio.wait_for(anext(stream), 2)).text for _ in delivered]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(stream), 0.1)
        with pytest.raises(RuntimeError, match="failed earlier"):
            await anext(stream)
        with pytest.raises(RuntimeError, match="failed earlier"):
            async for _ in stream:
                pass
        next_call = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert received == delivered
    assert stream.text == "".join(delivered)  # nothing delivered twice
    assert next_call.text == "next call"  # the cancelled stream's connection went back to the pool
    assert [bool(r["body"].get("stream")) for r in server.requests] == [True, False]  # one stream, one call


async def test_stream_failed_midway_raises_runtime_error_when_iterated_again(server: LocalServer) -> None:
    """A stream cut before its final event raises APIConnectionError, then RuntimeError; one request."""
    server.handler = stream_handler(sse(chunk("Hello")), sse(chunk(" world")), delay=0.01)
    received: list[str] = []
    async with make_client(server.base_url, retry=FAST_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        with pytest.raises(APIConnectionError, match="before its final event") as first:
            await collect(stream, received)
        with pytest.raises(RuntimeError, match=r"failed earlier \(APIConnectionError\)") as again:
            await collect(stream, received)
    assert again.value.__cause__ is first.value
    assert received == ["Hello", " world"]
    assert stream.text == "Hello world"
    assert len(server.requests) == 1


# --- 2. aclose() from another task ----------------------------------------------------------------


async def test_aclose_from_another_task_during_the_first_read(fake: FakeNebulaServer) -> None:
    """aclose() while another task awaits the first event makes it raise RuntimeError; one request."""
    fake.time_to_first_token = STALL  # headers at once, then no event for STALL s
    received: list[str] = []
    async with make_client(fake.base_url, retry=FAST_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream, received))
        await wait_until(lambda: stream.request_id is not None)  # the response is open: the read is pending
        await asyncio.sleep(0.02)
        await stream.aclose()
        with pytest.raises(RuntimeError, match="closed while it was being read"):
            await asyncio.wait_for(reader, 2)
        await asyncio.sleep(0.05)  # a retry, had there been one, would have reached the server by now
    assert received == []
    assert stream.text == ""
    assert len(fake.requests) == 1


async def test_aclose_from_another_task_while_waiting_for_headers(fake: FakeNebulaServer) -> None:
    """aclose() while another task awaits the response headers makes it raise RuntimeError, no chunk."""
    fake.delay_next(seconds=0.2)  # then the stream, "Hello, World!"
    received: list[str] = []
    async with make_client(fake.base_url, retry=FAST_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream, received))
        await wait_until(lambda: len(fake.requests) == 1)  # sent; the headers are 0.2 s away
        await stream.aclose()
        [outcome] = await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), 2)
    assert received == []  # nothing may be delivered by a stream closed before it
    assert isinstance(outcome, RuntimeError)
    assert "closed" in str(outcome)
    assert len(fake.requests) == 1


# --- 3. a forgotten stream under warnings-as-errors -----------------------------------------------


async def test_break_without_async_with_releases_under_warnings_as_errors(
    server: LocalServer, unraisables: list[BaseException | None]
) -> None:
    """With ResourceWarning as an error, a stream left by break still frees the only pooled connection."""
    server.handler = _stream_then_json(sse(chunk("e0"), chunk("e1"), chunk("e2")))
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            received = await _break_after(client.stream_text(model="m", prompt="p"), 3)
            gc.collect()
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert received == ["e0", "e1", "e2"]
    assert result.text == "next call"
    assert len(unraisables) == 1  # TextStream.__del__ raised its warning, after closing the response
    assert isinstance(unraisables[0], ResourceWarning)
    assert "TextStream was not closed" in str(unraisables[0])


# --- 4. a caller-owned session with raise_for_status=True ----------------------------------------


@CALLS
async def test_caller_session_with_raise_for_status_still_gets_mapped_errors(
    fake: FakeNebulaServer, call: Call
) -> None:
    """A caller's ClientSession(raise_for_status=True) still gets InsufficientQuotaError, in one request."""
    fake.fail_next(3, status=429, code="insufficient_quota", message="no credits")
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        make_client(fake.base_url, session=session, retry=FAST_RETRY) as client,
    ):
        with pytest.raises(InsufficientQuotaError) as info:
            await call(client)
    assert info.value.code == "insufficient_quota"
    assert info.value.status_code == 429
    assert info.value.request_id == fake.requests[0].request_id
    assert len(fake.requests) == 1


# --- 5. redirects are not followed ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _catch_all(handler: Handler) -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """Serve ``handler`` for every method and path on 127.0.0.1; yield the base URL and a log of requests."""
    seen: list[tuple[str, str]] = []

    async def route(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    finally:
        await runner.cleanup()


@CALLS
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_not_followed(status: int, call: Call) -> None:
    """A 3xx is not followed: one request is sent, and the APIError names the Location and base_url."""

    async def moved(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/text/generate":
            return web.Response(status=status, headers={"Location": "/v2/text/generate"})
        return web.json_response(success_body("followed"))  # reached only if the redirect was followed

    async with _catch_all(moved) as (base_url, seen), make_client(base_url, retry=FAST_RETRY) as client:
        with pytest.raises(APIError) as info:
            await call(client)
    assert seen == [("POST", "/v1/text/generate")]
    assert type(info.value) is APIError
    assert info.value.status_code == status
    assert "/v2/text/generate" in info.value.message
    assert "base_url" in info.value.message


# --- 6. a bad TLS certificate is not retried ------------------------------------------------------


async def _tls_json(context: ssl.SSLContext, conn: RawConnection, handshakes: list[bool]) -> None:
    """Upgrade to TLS and answer one request with a success; record whether the client accepted us."""
    try:
        await conn.writer.start_tls(context)
    except (ssl.SSLError, OSError):  # the client refused the certificate
        handshakes.append(False)
        return
    handshakes.append(True)
    await conn.read_request()
    payload = json.dumps(success_body("over tls")).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(payload)), "Connection": "close"}
    await conn.send(http_head(200, head) + payload)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """Make a self-signed certificate for 127.0.0.1 in the test's temporary directory."""
    return self_signed_cert(tmp_path)


@_tls_server_works
async def test_untrusted_certificate_is_not_retried(
    tls_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A self-signed certificate raises APIConnectionError after one connection: it is never retried."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    context = server_context(*tls_files)
    handshakes: list[bool] = []

    async def handle(conn: RawConnection) -> None:
        await _tls_json(context, conn, handshakes)

    async with RawServer(handle) as raw:
        base_url = f"https://127.0.0.1:{raw.port}/v1"
        async with make_client(base_url, retry=FAST_RETRY) as client:
            with pytest.raises(APIConnectionError, match=r"(?i)certificate") as info:
                await client.generate_text(model="m", prompt="p")
        await wait_until(lambda: len(handshakes) == raw.connections)  # the server saw each refusal
    assert type(info.value) is APIConnectionError
    assert raw.connections == 1
    assert handshakes == [False]
    assert [r.getMessage() for r in caplog.records if r.name == "nebula_async"] == []


@_tls_server_works
async def test_trusted_certificate_reaches_the_same_server(tls_files: tuple[Path, Path]) -> None:
    """The same TLS server answers a session that trusts its certificate: the failure above is the trust."""
    cert, key = tls_files
    context = server_context(cert, key)
    handshakes: list[bool] = []

    async def handle(conn: RawConnection) -> None:
        await _tls_json(context, conn, handshakes)

    connector = aiohttp.TCPConnector(ssl=trusting_context(cert))
    async with (
        RawServer(handle) as raw,
        aiohttp.ClientSession(connector=connector) as session,
        make_client(f"https://127.0.0.1:{raw.port}/v1", session=session) as client,
    ):
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "over tls"
    assert handshakes == [True]


# --- 7. a stream's wait for a pooled connection is bounded ---------------------------------------


async def test_stream_waiting_for_a_pooled_connection_times_out(fake: FakeNebulaServer) -> None:
    """A stream queued behind another on max_connections=1 raises APITimeoutError after Timeout(total=0.3)."""
    fake.replies["long"] = "held on"
    fake.token_delay = STALL  # "held", then nothing for STALL s
    async with (
        make_client(fake.base_url, max_connections=1, retry=NO_RETRY) as client,
        client.stream_text(model="m", prompt="long") as holder,
    ):
        assert (await anext(holder)).text == "held"  # it now holds the only connection
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            async with client.stream_text(model="m", prompt="second", timeout=Timeout(total=0.3)):
                pass
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    assert [r.json["prompt"] for r in fake.requests] == ["long"]  # the second never got a connection


# --- 8. SSE edges: [DONE] too early, a byte order mark, "error": null ----------------------------


@pytest.mark.parametrize(
    "cut", [None, 1, 2, 3, 4], ids=["whole", "after-1-byte", "after-2-bytes", "bom-alone", "bom-and-1-byte"]
)
async def test_byte_order_mark_at_the_start_is_dropped(cut: int | None) -> None:
    """A UTF-8 BOM opening the stream is dropped, also when it is split across two network reads."""
    body = BOM + events("Hi", " there")
    parts = [body] if cut is None else [body[:cut], body[cut:]]

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_HEAD_UNTIL_CLOSE, *parts, pause=0.02)

    async with RawServer(handle) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        texts = await collect(stream)
    assert texts == ["Hi", " there"]
    assert stream.finish_reason == "stop"


async def test_event_with_error_null_is_a_normal_chunk(server: LocalServer) -> None:
    """Stream events carrying ``"error": null`` are ordinary chunks, and so is a success envelope with it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response({**success_body("plain"), "error": None})
        response = await open_stream(request)
        await response.write(sse({**chunk("Hi"), "error": None}, {**chunk("!", "stop"), "error": None}))
        await response.write_eof()
        return response

    server.handler = handler
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        texts = await collect(client.stream_text(model="m", prompt="p"))
        plain = await client.generate_text(model="m", prompt="p")
    assert texts == ["Hi", "!"]
    assert plain.text == "plain"


# --- 9. the body's tail is drained in the background ---------------------------------------------


def _final_then_tail(tail_after: float) -> Handler:
    """Answer a stream with its final event, then ``[DONE]`` ``tail_after`` s later; a plain call at once."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(success_body("next call"))
        response = await open_stream(request)
        await response.write(events("Hi"))
        await asyncio.sleep(tail_after)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    return handler


async def _time_to_leave_the_loop(stream: TextStream) -> float:
    """Iterate ``stream`` in a plain ``async for``; return the seconds from its last chunk to the exit."""
    last = time.monotonic()
    async for _ in stream:
        last = time.monotonic()
    return time.monotonic() - last


async def test_loop_ends_at_the_final_event_while_the_body_stays_open(server: LocalServer) -> None:
    """The loop ends at once after the final event though the body stays open 1.5 s, and the pool recovers."""
    server.handler = _final_then_tail(1.5)
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        lag = await _time_to_leave_the_loop(stream)
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert lag < 0.3
    assert stream.text == "Hi"
    assert result.text == "next call"


async def test_short_tail_is_drained_in_the_background_and_the_connection_reused(server: LocalServer) -> None:
    """A tail 0.2 s after the final event doesn't delay the loop; the next call reuses the connection."""
    peers: list[object] = []
    inner = _final_then_tail(0.2)

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await inner(request)

    server.handler = handler
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        lag = await _time_to_leave_the_loop(client.stream_text(model="m", prompt="p"))
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert lag < 0.1
    assert result.text == "next call"
    assert len(peers) == 2
    assert peers[0] == peers[1]


async def test_closing_the_client_while_a_drain_is_pending_is_clean(
    server: LocalServer, unraisables: list[BaseException | None], caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() while a finished stream's tail is being drained leaves no warning, error or task."""
    caplog.set_level(logging.ERROR)  # "Task was destroyed but it is pending!" is logged by asyncio
    server.handler = _final_then_tail(STALL)
    client = make_client(server.base_url, retry=NO_RETRY)
    texts = await collect(client.stream_text(model="m", prompt="p"))
    await client.aclose()
    await asyncio.sleep(0.01)
    gc.collect()
    assert texts == ["Hi"]
    assert unraisables == []
    assert [r.getMessage() for r in caplog.records] == []


# --- 10. aclose() from another event loop ---------------------------------------------------------


async def test_aclose_from_another_event_loop_raises(fake: FakeNebulaServer) -> None:
    """aclose() in a second event loop raises RuntimeError, and the client still closes from its own loop."""
    client = make_client(fake.base_url)
    await client.generate_text(model="m", prompt="p")

    def close_in_other_loop() -> None:
        asyncio.run(client.aclose())

    with pytest.raises(RuntimeError, match="event loop"):
        await asyncio.wait_for(asyncio.to_thread(close_in_other_loop), 5)
    again = await client.generate_text(model="m", prompt="p")  # the failed aclose() closed nothing
    await client.aclose()
    assert again.text == HELLO
    assert len(fake.requests) == 2


# --- 11. the API key stays out of reprs and traceback locals -------------------------------------


def _frames(exc: traceback.TracebackException) -> Iterator[traceback.FrameSummary]:
    """Yield every frame of ``exc`` and of the exceptions chained to it."""
    seen: set[int] = set()
    pending: list[traceback.TracebackException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield from current.stack
        pending.extend([current.__cause__, current.__context__])


def _sdk_objects(root: object) -> list[object]:
    """Every object of a nebula_async class reachable from ``root`` through attributes and containers."""
    found: list[object] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (dict, list, tuple, set)):
            todo.extend(obj.values() if isinstance(obj, dict) else obj)
        elif type(obj).__module__.startswith("nebula_async") and hasattr(obj, "__dict__"):
            found.append(obj)
            todo.extend(vars(obj).values())
    assert len(found) > 2  # the client, its call path and its transport at least
    return found


@CALLS
async def test_api_key_is_not_in_reprs_or_in_our_frames_locals(call: Call) -> None:
    """The key is in no repr of the client, nor in any nebula_async frame of a traceback with locals."""
    package_dir = os.path.dirname(nebula_async.__file__)
    aiohttp_dir = os.path.dirname(aiohttp.__file__)
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", retry=NO_RETRY)
    try:
        with pytest.raises(APIConnectionError) as info:
            await call(client)
        shown = [repr(client), *(repr(vars(obj)) for obj in _sdk_objects(client))]
    finally:
        await client.aclose()
    assert not [text for text in shown if SECRET_KEY in text]
    summary = traceback.TracebackException.from_exception(info.value, capture_locals=True)
    frames = list(_frames(summary))
    ours = [f for f in frames if f.filename.startswith(package_dir)]
    assert ours  # the check below is not vacuous
    assert all(f.locals for f in ours)
    leaking = {
        f"{f.filename}:{f.lineno} {f.name}"
        for f in frames
        if any(SECRET_KEY in value for value in (f.locals or {}).values())
    }
    assert not [where for where in leaking if not where.startswith(aiohttp_dir)]  # only aiohttp's own frames
    without_locals = "".join(traceback.TracebackException.from_exception(info.value).format())
    assert SECRET_KEY not in without_locals  # no message or source line of the chain shows it


async def _break_after(stream: TextStream, count: int) -> list[str]:
    """Iterate in a plain ``async for``, break after ``count`` chunks; the stream is dropped on return."""
    received: list[str] = []
    async for piece in stream:
        received.append(piece.text)
        if len(received) == count:
            break
    return received
