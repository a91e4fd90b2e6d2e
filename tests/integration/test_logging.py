"""Logging over real calls, and the API key: absent from every log record and every error."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from nebula_async import APIConnectionError, AsyncNebulaClient, NebulaError, Timeout
from tests.conftest import LocalServer
from tests.helpers import error_body, sse, success_body
from tests.integration._support import (
    SECRET_KEY,
    SSE_HEAD_CHUNKED,
    RawConnection,
    RawServer,
    chunk,
    collect,
    free_port,
    json_handler,
    make_client,
    sequence_handler,
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
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429-then-success call logs a DEBUG line per attempt and one WARNING for the retry."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    server.handler = sequence_handler(
        json_handler(error_body("rate_limit_exceeded", "slow"), status=429, headers={"Retry-After": "0"}),
        json_handler(success_body()),
    )
    async with make_client(server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.retries == 1
    records = _ours(caplog)
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(debug) == 2
    url = f"{server.base_url}/text/generate"
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


async def test_stream_attempts_are_logged(server: LocalServer, caplog: pytest.LogCaptureFixture) -> None:
    """A stream retried after an error event logs each attempt at DEBUG and the retry at WARNING."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    server.handler = sequence_handler(
        stream_handler(sse(error_body("rate_limit_exceeded"))),
        stream_handler(sse(chunk("ok", "stop"))),
    )
    async with make_client(server.base_url) as client:
        texts = [c.text async for c in client.stream_text(model="m", prompt="p")]
    assert texts == ["ok"]
    records = _ours(caplog)
    assert len([r for r in records if r.levelno == logging.DEBUG]) == 2
    assert len([r for r in records if r.levelno == logging.WARNING]) == 1
    _assert_no_key_in_logs(caplog)


async def test_no_logging_above_debug_for_a_plain_success(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A successful call without retries logs nothing above DEBUG."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    async with make_client(server.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    assert [r.levelno for r in _ours(caplog)] == [logging.DEBUG]


Scenario = Callable[[LocalServer, AsyncNebulaClient], Awaitable[object]]


async def _http_500(server: LocalServer, client: AsyncNebulaClient) -> object:
    server.handler = json_handler(error_body("internal", "boom"), status=500, headers={"x-request-id": "r"})
    return await client.generate_text(model="m", prompt="p")


async def _auth_401(server: LocalServer, client: AsyncNebulaClient) -> object:
    async def echo_key(request: web.Request) -> web.StreamResponse:
        # A careless server echoing the header back would be the server's leak, not ours: send a fixed body.
        return web.json_response(error_body("invalid_api_key", "Incorrect API key provided"), status=401)

    server.handler = echo_key
    return await client.generate_text(model="m", prompt="p")


async def _timeout(server: LocalServer, client: AsyncNebulaClient) -> object:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response(success_body())

    server.handler = slow
    return await client.generate_text(model="m", prompt="p", timeout=Timeout(read=0.05))


async def _stream_error_event(server: LocalServer, client: AsyncNebulaClient) -> object:
    server.handler = stream_handler(sse(error_body("rate_limit_exceeded")))
    return await collect(client.stream_text(model="m", prompt="p"))


async def _stream_eof(server: LocalServer, client: AsyncNebulaClient) -> object:
    server.handler = stream_handler(sse(chunk("a")))
    return await collect(client.stream_text(model="m", prompt="p"))


async def _refused(server: LocalServer, client: AsyncNebulaClient) -> object:
    other = make_client(f"http://127.0.0.1:{free_port()}/v1")
    async with other:
        return await other.generate_text(model="m", prompt="p")


@pytest.mark.parametrize(
    "scenario",
    [_http_500, _auth_401, _timeout, _stream_error_event, _stream_eof, _refused],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_key_never_in_logs_or_errors(
    server: LocalServer, caplog: pytest.LogCaptureFixture, scenario: Scenario
) -> None:
    """The API key appears in no log record and in no str, repr or traceback of the error raised."""
    caplog.set_level(logging.DEBUG)
    async with make_client(server.base_url) as client:
        with pytest.raises(NebulaError) as info:
            await scenario(server, client)
        assert SECRET_KEY not in repr(client)
    _assert_no_key_in_error(info.value)
    _assert_no_key_in_logs(caplog)
    assert _ours(caplog)  # the scenario did log something


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


async def test_key_not_in_client_or_stream_repr(server: LocalServer) -> None:
    """Neither the client's nor a stream's repr shows the key."""
    async with make_client(server.base_url) as client:
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
