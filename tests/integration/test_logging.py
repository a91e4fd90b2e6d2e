"""Logging over real calls, and the API key: absent from every log record and every error.

The FakeNebulaServer (``fake``) produces the documented failures; the hand-rolled servers send a
stream that ends without its final event and malformed HTTP.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Awaitable, Callable

import pytest

from nebula_async import APIConnectionError, AsyncNebulaClient, NebulaError, Timeout
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import sse
from tests.integration._support import (
    SECRET_KEY,
    SSE_HEAD_CHUNKED,
    RawConnection,
    RawServer,
    chunk,
    collect,
    free_port,
    make_client,
    stream_handler,
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
    """A stream retried after an error event logs each attempt at DEBUG and the retry at WARNING."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    fake.error_event_after(events=0, code="rate_limit_exceeded")
    fake.replies["p"] = "ok"
    async with make_client(fake.base_url) as client:
        texts = [c.text async for c in client.stream_text(model="m", prompt="p")]
    assert texts == ["ok"]
    records = _ours(caplog)
    assert len([r for r in records if r.levelno == logging.DEBUG]) == 2
    assert len([r for r in records if r.levelno == logging.WARNING]) == 1
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
