"""Logging over real calls, and the API key: absent from every log record and every error.

The FakeNebulaServer (``fake``) produces the documented failures; the hand-rolled servers send a
stream that ends without its final event and malformed HTTP.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

import nebula_async
from nebula_async import APIConnectionError, AsyncNebulaClient, NebulaError, Timeout
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import NO_RETRY, SECRET_KEY, exception_chain, sse
from tests.integration._support import (
    CALLS,
    SSE_HEAD_CHUNKED,
    Call,
    RawConnection,
    RawServer,
    chunk,
    collect,
    free_port,
    make_client,
    stream_handler,
    stream_once,
)


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nebula_async"]


def _assert_no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:  # every logger: aiohttp's too
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        assert SECRET_KEY not in text, f"the API key leaked into a {record.levelname} record of {record.name}"


def _assert_no_key_in_error(err: BaseException) -> None:
    assert SECRET_KEY not in str(err)
    assert SECRET_KEY not in repr(err)
    # What a user sees when the error is not caught: the whole chain, causes included.
    assert SECRET_KEY not in "".join(traceback.format_exception(err))


async def test_debug_per_attempt_and_warning_per_retry(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429-then-success call logs a DEBUG line per attempt and one WARNING for the retry."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    fake.fail_next(status=429, code="rate_limit_exceeded", message="slow", retry_after=0)
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.retries == 1
    records = _ours(caplog)
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(debug) == 2
    url = f"{fake.base_url}/text/generate"
    for line, status, attempt in zip(debug, ("429", "200"), ("1", "2"), strict=True):
        assert "POST" in line
        assert url in line
        assert status in line
        assert re.search(rf"attempt {attempt}\b", line), line
        assert re.search(r"\d+(\.\d+)? ?ms", line), line  # the elapsed time
    assert len(warnings) == 1
    assert "rate_limit_exceeded" in warnings[0]  # the reason
    assert re.search(r"\b0(\.0+)? ?s\b", warnings[0]), warnings[0]  # the delay: Retry-After 0
    _assert_no_key_in_logs(caplog)


async def test_stream_attempts_are_logged(fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture) -> None:
    """A stream retried after a rate-limit error event logs each attempt at DEBUG and one WARNING.

    The WARNING is the client-wide gate's (it speaks for every task); the retry itself is at DEBUG.
    """
    # Regression: on a loaded machine the 1 ms gate had opened again before the retry asked whether it
    # was closed, and the retry logged a second WARNING; whether the error closed the gate now decides.
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    fake.error_event_after(events=0, code="rate_limit_exceeded")
    fake.replies["p"] = "ok"
    async with make_client(fake.base_url) as client:
        texts = [c.text async for c in client.stream_text(model="m", prompt="p")]
    assert texts == ["ok"]
    records = _ours(caplog)
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert len([line for line in debug if line.startswith("POST")]) == 2
    assert len([line for line in debug if line.startswith("retrying")]) == 1
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rate limited" in warnings[0]
    _assert_no_key_in_logs(caplog)


async def test_no_logging_above_debug_for_a_plain_success(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A successful call without retries logs nothing above DEBUG."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    assert [r.levelno for r in _ours(caplog)] == [logging.DEBUG]


Scenario = Callable[[FakeNebulaServer, AsyncNebulaClient], Awaitable[object]]


async def _http_500(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    fake.fail_next(3, status=500, code="internal", message="boom")
    return await client.generate_text(model="m", prompt="p")


async def _auth_401(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    # The fake answers with a fixed body: a server echoing the header back would be its leak, not ours.
    fake.fail_next(status=401, code="invalid_api_key", message="Incorrect API key provided")
    return await client.generate_text(model="m", prompt="p")


async def _timeout(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    fake.delay_next(3, seconds=5)
    return await client.generate_text(model="m", prompt="p", timeout=Timeout(read=0.05))


async def _stream_error_event(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    fake.error_event_after(3, events=0, code="rate_limit_exceeded")
    return await collect(client.stream_text(model="m", prompt="p"))


async def _stream_drop(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    fake.drop_stream_after(events=1)  # after a chunk was delivered: not retried
    return await collect(client.stream_text(model="m", prompt="p"))


async def _refused(fake: FakeNebulaServer, client: AsyncNebulaClient) -> object:
    other = make_client(f"http://127.0.0.1:{free_port()}/v1")
    async with other:
        return await other.generate_text(model="m", prompt="p")


async def _fail_and_check_the_key_is_hidden(
    base_url: str, caplog: pytest.LogCaptureFixture, call: Callable[[AsyncNebulaClient], Awaitable[object]]
) -> None:
    """Run ``call`` on a client for ``base_url``; it must raise, and the key must be in no log or error."""
    caplog.set_level(logging.DEBUG)
    async with make_client(base_url) as client:
        with pytest.raises(NebulaError) as info:
            await call(client)
        assert SECRET_KEY not in repr(client)
    _assert_no_key_in_error(info.value)
    _assert_no_key_in_logs(caplog)
    assert _ours(caplog)  # the scenario did log something


@pytest.mark.parametrize(
    "scenario",
    [_http_500, _auth_401, _timeout, _stream_error_event, _stream_drop, _refused],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_key_never_in_logs_or_errors(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture, scenario: Scenario
) -> None:
    """The API key appears in no log record and in no str, repr or traceback of the error raised."""
    await _fail_and_check_the_key_is_hidden(fake.base_url, caplog, lambda client: scenario(fake, client))


async def test_key_never_in_logs_or_errors_of_a_stream_ended_early(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream ending cleanly before its final event raises an error, and logs, without the key."""
    server.handler = stream_handler(sse(chunk("a")))  # then the end of the body: the fake never does this
    await _fail_and_check_the_key_is_hidden(
        server.base_url, caplog, lambda client: collect(client.stream_text(model="m", prompt="p"))
    )


async def _malformed_status_line(conn: RawConnection) -> None:
    if await conn.read_request() is not None:
        await conn.send(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n")


async def _broken_chunk(conn: RawConnection) -> None:
    if await conn.read_request() is not None:
        await conn.send(SSE_HEAD_CHUNKED, b"zz\r\nnot a chunk\r\n")


@pytest.mark.parametrize(
    ("fault", "stream"),
    [(_malformed_status_line, False), (_broken_chunk, True)],
    ids=["status-line", "chunk"],
)
async def test_key_never_in_protocol_errors(
    caplog: pytest.LogCaptureFixture, fault: Callable[[RawConnection], Awaitable[None]], stream: bool
) -> None:
    """A malformed HTTP answer gives an APIConnectionError whose text and logs do not contain the key."""
    caplog.set_level(logging.DEBUG)
    async with RawServer(fault) as raw, make_client(raw.base_url) as client:
        call = (
            collect(client.stream_text(model="m", prompt="p"))
            if stream
            else client.generate_text(model="m", prompt="p")
        )
        with pytest.raises(APIConnectionError) as info:
            await call
    assert raw.connections == 3  # retried like any connection error
    _assert_no_key_in_error(info.value)
    _assert_no_key_in_logs(caplog)


async def test_key_not_in_client_or_stream_repr(fake: FakeNebulaServer) -> None:
    """Neither the client's nor a stream's repr shows the key."""
    async with make_client(fake.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert SECRET_KEY not in repr(client)
        assert SECRET_KEY not in repr(stream)
        async with stream:
            assert SECRET_KEY not in repr(stream)


async def test_bad_status_error_is_one_line() -> None:
    """A connection error caused by a malformed status line still reads as a single line."""
    async with (
        RawServer(_malformed_status_line) as raw,
        make_client(raw.base_url, max_retries=0, retry=None) as client,
    ):
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert "\n" not in str(info.value)


# --- the key in reprs, traceback locals and chained errors -----------------------------------------


def _reprs_reachable_from(root: object) -> tuple[list[str], list[dict[object, object]]]:
    """Return repr() of ``root`` and of every nebula_async object reachable through attributes and containers.

    Also return the mappings met on the way: the test checks that the one holding the key was reached.
    """
    shown: list[str] = []
    mappings: list[dict[object, object]] = []
    seen: set[int] = set()
    pending: list[object] = [root]
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            mappings.append(obj)
            pending.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            pending.extend(obj)
        if not type(obj).__module__.startswith("nebula_async"):
            continue  # aiohttp's objects are aiohttp's: the test stops at our boundary
        shown.append(repr(obj))
        attributes = dict(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    attributes[name] = getattr(obj, name)
        shown.append(repr(attributes))
        pending.extend(attributes.values())
    return shown, mappings


def _frames(exc: traceback.TracebackException) -> Iterator[traceback.FrameSummary]:
    """Yield every frame of ``exc`` and of the exceptions chained to it."""
    for summary in exception_chain(exc):
        yield from summary.stack


@CALLS
async def test_api_key_is_not_in_reprs_or_in_our_frames_locals(call: Call) -> None:
    """No repr of the client's objects, nor a nebula_async frame of a traceback with locals, shows the key."""
    package_dir = os.path.dirname(nebula_async.__file__)
    aiohttp_dir = os.path.dirname(aiohttp.__file__)
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", retry=NO_RETRY)
    try:
        with pytest.raises(APIConnectionError) as info:
            await call(client)
        shown, mappings = _reprs_reachable_from(client)  # after a call: the transport exists
    finally:
        await client.aclose()
    assert "Secret('<redacted>')" in shown  # the walk reached the key's holder
    # No dict of ours holds the key either: it stays a Secret until aiohttp is handed the headers.
    assert not [m for m in mappings if any(isinstance(v, str) and SECRET_KEY in v for v in m.values())]
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


MALFORMED = {
    "bad-status-line": b"HTTP/1.1 abc OK\r\n\r\n",
    "bad-header": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nBad Header\r\n\r\n",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
}


@CALLS
@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_response_error_does_not_hold_the_api_key(call: Call, payload: bytes) -> None:
    """A malformed response's error holds the key in no chained repr, request_info or traceback."""
    # Regression (second review): aiohttp's error kept our request's headers, the key among them.

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
    assert not [repr(e) for e in exception_chain(info.value) if SECRET_KEY in repr(e)]
    assert SECRET_KEY not in "".join(traceback.format_exception(info.value))
    assert raw.requests == [
        {"model": "m", "prompt": "p", **({"stream": True} if call is stream_once else {})}
    ]
