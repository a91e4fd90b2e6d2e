"""Retries over a real socket, counted on the server: what is retried, how often, how long it waits.

The FakeNebulaServer (``fake``) scripts the documented failures; the hand-rolled servers send the
Retry-After forms it doesn't (seconds alone, an HTTP date), a rate limit in a 200, a body cut short,
a TLS certificate the client does not trust.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InsufficientQuotaError,
    InvalidRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from nebula_async.testing import FakeNebulaServer
from tests.conftest import Handler, LocalServer
from tests.helpers import FAST_RETRY, NO_RETRY, error_body, success_body
from tests.integration._support import (
    RawConnection,
    RawServer,
    free_port,
    http_head,
    json_handler,
    make_client,
    self_signed_cert,
    sequence_handler,
    server_context,
    trusting_context,
    wait_until,
)


def _rate_limited(**headers: str) -> Handler:
    return json_handler(error_body("rate_limit_exceeded", "slow down"), status=429, headers=headers)


async def test_429_with_retry_after_zero_is_retried_once(fake: FakeNebulaServer) -> None:
    """A 429 with Retry-After: 0 then a success gives the success, retries == 1, two requests sent."""
    fake.fail_next(status=429, code="rate_limit_exceeded", message="slow down", retry_after=0)
    fake.replies["p"] = "second time"
    async with make_client(fake.base_url, retry=RetryPolicy(max_retries=2)) as client:
        started = time.monotonic()
        result = await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 0.5  # Retry-After: 0 wins over the 0.5 s initial backoff
    assert result.text == "second time"
    assert result.retries == 1
    assert [r.status for r in fake.requests] == [429, 200]
    assert result.request_id == fake.requests[1].request_id
    assert fake.requests[0].json == fake.requests[1].json


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_retryable_status_then_success(fake: FakeNebulaServer, status: int) -> None:
    """A 408 or 5xx answer, envelope or not, is retried and the next success is returned."""
    fake.html_error_next(status=status)
    fake.replies["p"] = "recovered"
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "recovered"
    assert result.retries == 1
    assert [r.status for r in fake.requests] == [status, 200]


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_request"), (401, None), (403, None), (404, "model_not_found"), (422, None)],
)
async def test_client_errors_are_not_retried(fake: FakeNebulaServer, status: int, code: str | None) -> None:
    """A 4xx other than 408/429 is raised after exactly one request."""
    fake.fail_next(4, status=status, code=code or "whatever")  # every attempt would fail
    async with make_client(fake.base_url, retry=RetryPolicy(max_retries=3, initial_delay=0.001)) as client:
        with pytest.raises(APIError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.status_code == status
    assert len(fake.requests) == 1


async def test_insufficient_quota_429_is_never_retried(fake: FakeNebulaServer) -> None:
    """A 429 whose code is insufficient_quota is raised after exactly one request, Retry-After or not."""
    fake.fail_next(6, status=429, code="insufficient_quota", message="top up", retry_after=0)
    async with make_client(fake.base_url, retry=RetryPolicy(max_retries=5, initial_delay=0.001)) as client:
        with pytest.raises(InsufficientQuotaError):
            await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 1


async def test_envelope_code_beats_retryable_status(fake: FakeNebulaServer) -> None:
    """A 500 whose code is invalid_request is not retried: waiting will not fix the request."""
    fake.fail_next(3, status=500, code="invalid_request")
    async with make_client(fake.base_url) as client:
        with pytest.raises(InvalidRequestError):
            await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 1


async def test_rate_limit_in_a_200_envelope_is_retried(server: LocalServer) -> None:
    """A 200 whose envelope says rate_limit_exceeded is retried like a 429."""
    server.handler = sequence_handler(
        json_handler(error_body("rate_limit_exceeded")), json_handler(success_body("fine"))
    )
    async with make_client(server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert (result.text, result.retries, len(server.requests)) == ("fine", 1, 2)


async def test_retry_after_above_max_raises_at_once(fake: FakeNebulaServer) -> None:
    """A Retry-After above max_retry_after is not slept through: RateLimitError at once, with retry_after."""
    fake.fail_next(4, status=429, code="rate_limit_exceeded", retry_after=30)
    policy = RetryPolicy(max_retries=3, initial_delay=0.001, max_retry_after=5.0)
    async with make_client(fake.base_url, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 0.5
    assert info.value.retry_after == 30.0
    assert len(fake.requests) == 1


async def test_retry_after_ms_is_waited(fake: FakeNebulaServer) -> None:
    """retry-after-ms: 150 makes the client wait about 150 ms before the second request."""
    # The fake sends retry-after-ms: 150 and Retry-After: 1 (whole seconds): the first must win.
    fake.fail_next(status=429, code="rate_limit_exceeded", retry_after=0.15)
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.retries == 1
    first, second = fake.requests
    assert 0.14 <= second.time - first.time < 0.9


async def test_retry_after_http_date_in_the_past_retries_at_once(server: LocalServer) -> None:
    """A Retry-After HTTP date already past means retry now, not a parse failure or a long backoff."""
    past = email.utils.formatdate(time.time() - 10, usegmt=True)
    server.handler = sequence_handler(_rate_limited(**{"Retry-After": past}), json_handler(success_body()))
    policy = RetryPolicy(max_retries=1, initial_delay=5.0)  # a fallback to backoff would time the test out
    async with make_client(server.base_url, retry=policy) as client:
        started = time.monotonic()
        result = await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 1.0
    assert result.retries == 1


async def test_exhausted_retries_raise_the_last_error(fake: FakeNebulaServer) -> None:
    """After max_retries failed retries, the error of the last attempt is raised unchanged."""
    for attempt in (1, 2, 3):
        fake.fail_next(status=503, code="upstream_down", message=f"failure {attempt}")
    async with make_client(fake.base_url, retry=FAST_RETRY) as client:
        with pytest.raises(ServerError) as info:
            await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 3
    assert info.value.message == "failure 3"
    assert info.value.request_id == fake.requests[2].request_id


async def test_exhausted_rate_limit_keeps_retry_after(fake: FakeNebulaServer) -> None:
    """A RateLimitError raised after the last retry keeps its retry_after."""
    fake.fail_next(3, status=429, code="rate_limit_exceeded", retry_after=0)
    async with make_client(fake.base_url, retry=FAST_RETRY) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.retry_after == 0.0
    assert len(fake.requests) == 3


async def test_per_call_max_retries_overrides_the_client(fake: FakeNebulaServer) -> None:
    """max_retries= on a call replaces the client's count for that call only."""
    fake.fail_next(1 + 5, status=429, code="rate_limit_exceeded", retry_after=0)
    async with make_client(fake.base_url, retry=FAST_RETRY) as client:
        with pytest.raises(RateLimitError):
            await client.generate_text(model="m", prompt="p", max_retries=0)
        assert len(fake.requests) == 1
        with pytest.raises(RateLimitError):
            await client.generate_text(model="m", prompt="p", max_retries=4)
    assert len(fake.requests) == 1 + 5


async def test_max_retries_shortcut_is_used_without_a_policy(fake: FakeNebulaServer) -> None:
    """AsyncNebulaClient(max_retries=1) retries exactly once."""
    fake.fail_next(3, status=429, code="rate_limit_exceeded", retry_after=0)
    async with make_client(fake.base_url, retry=None, max_retries=1) as client:
        with pytest.raises(RateLimitError):
            await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 2


async def test_connection_refused_is_a_connection_error_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection raises APIConnectionError (not a timeout) after max_retries retries."""
    caplog.set_level("DEBUG", logger="nebula_async")
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    async with make_client(base_url, retry=FAST_RETRY) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 1.0
    assert not isinstance(info.value, APITimeoutError)
    mine = [r for r in caplog.records if r.name == "nebula_async"]
    assert len([r for r in mine if r.levelname == "DEBUG"]) == 3  # one line per attempt
    assert len([r for r in mine if r.levelname == "WARNING"]) == 2  # one line per retry


async def test_connection_refused_without_retries_is_one_attempt(caplog: pytest.LogCaptureFixture) -> None:
    """With max_retries=0 a refused connection fails after a single attempt."""
    caplog.set_level("DEBUG", logger="nebula_async")
    async with make_client(f"http://127.0.0.1:{free_port()}/v1", retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError):
            await client.generate_text(model="m", prompt="p")
    assert len([r for r in caplog.records if r.name == "nebula_async"]) == 1


async def _cut_body_then_answer(conn: RawConnection) -> None:
    if await conn.read_request() is None:
        return
    body = json.dumps(success_body("complete")).encode()
    head = http_head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    if conn.index == 0:
        await conn.send(head, body[:20])  # half the promised body, then the connection dies
        await asyncio.sleep(0.01)
        conn.abort()
        return
    await conn.send(head + body)


async def test_dropped_connection_is_a_connection_error_retried(fake: FakeNebulaServer) -> None:
    """A server that drops the connection without answering gives APIConnectionError after every retry."""
    fake.disconnect_next(3)
    async with make_client(fake.base_url) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert not isinstance(info.value, APITimeoutError)
    assert [r.status for r in fake.requests] == [None, None, None]  # three requests, none answered
    assert fake.pending_faults == 0


async def test_body_cut_short_is_retried() -> None:
    """A response whose body stops short of its Content-Length is retried and the next answer returned."""
    async with RawServer(_cut_body_then_answer) as raw, make_client(raw.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert (result.text, result.retries) == ("complete", 1)
    assert len(raw.requests) == 2


async def test_body_cut_short_says_the_connection_closed_before_the_answer_ended() -> None:
    """A body cut short reads as a closed connection, not as aiohttp's "400, message=...", like a status."""
    async with RawServer(_cut_body_then_answer) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert str(info.value).startswith(
        "connection to the API failed: the connection closed before the answer ended"
    )
    assert "400" not in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)  # aiohttp's own, for debugging


# --- a TLS certificate the client does not trust is not retried ----------------------------------

# The test server upgrades its sockets with loop.start_tls(), which resets the connection on 3.10.
_tls_server_works = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the test TLS server needs Python 3.11+"
)


async def _tls_json(context: ssl.SSLContext, conn: RawConnection, handshakes: list[bool]) -> None:
    """Upgrade to TLS and answer one request with a success; record whether the client accepted us."""
    try:
        await conn.writer.start_tls(context)  # type: ignore[attr-defined,unused-ignore]  # 3.11+ only
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
    # Regression (6705a48, "narrower transport errors"): a bad certificate is not transient, so no retry.
    caplog.set_level(logging.WARNING, logger="nebula_async")
    context = server_context(*tls_files)
    handshakes: list[bool] = []

    async def handle(conn: RawConnection) -> None:
        await _tls_json(context, conn, handshakes)

    async with RawServer(handle) as raw:
        async with make_client(f"https://127.0.0.1:{raw.port}/v1", retry=FAST_RETRY) as client:
            with pytest.raises(APIConnectionError, match=r"(?i)certificate") as info:
                await client.generate_text(model="m", prompt="p")
        await wait_until(lambda: len(handshakes) == raw.connections)  # the server saw each refusal
    assert type(info.value) is APIConnectionError
    assert info.value.retryable is False
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
