"""Retry decisions (pure tables) and the retry loop as seen on the wire and in the logs."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InsufficientQuotaError,
    InvalidRequestError,
    NebulaError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from nebula_async._errors import error_from_response, parse_retry_after
from nebula_async._retry import is_retryable, retry_delay
from tests.conftest import MockAPI
from tests.helpers import SECRET_KEY, error_body, sse, success_body
from tests.unit._support import ENDPOINT, consume, mock_client

NOW = 1_700_000_000.0  # a fixed "now" for HTTP dates: 2023-11-14 22:13:20 UTC
FAST = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.001, jitter=False)


def api_error(status: int, code: str | None = None, headers: dict[str, str] | None = None) -> APIError:
    """Build the error the client would raise for this answer."""
    body: Any = error_body(code, "m") if code is not None else b"<html>oops</html>"
    return error_from_response(status, body, CIMultiDict(headers or {}))


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


# --- is_retryable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, "rate_limit_exceeded", True),
        (429, None, True),
        (200, "rate_limit_exceeded", True),
        (503, "rate_limit_exceeded", True),
        (429, "insufficient_quota", False),
        (200, "insufficient_quota", False),
        (402, "insufficient_quota", False),
        (408, None, True),
        (500, None, True),
        (502, None, True),
        (503, None, True),
        (504, None, True),
        (503, "overloaded", True),
        (400, None, False),
        (401, None, False),
        (403, None, False),
        (404, None, False),
        (422, None, False),
        (400, "invalid_request", False),
        (404, "model_not_found", False),
        (400, "context_length_exceeded", False),
        (400, "some_future_code", False),
        (500, "invalid_request", False),
    ],
)
def test_is_retryable_table(status: int, code: str | None, retryable: bool) -> None:
    """The envelope's code decides first (quota never, rate limit always), then the status."""
    assert is_retryable(api_error(status, code)) is retryable


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (APIConnectionError("connection refused"), True),
        (APITimeoutError("timed out"), True),
        (APIConnectionError("certificate verify failed", retryable=False), False),
        (NebulaError("something else"), False),
    ],
    ids=["connection", "timeout", "not-retryable", "plain"],
)
def test_is_retryable_transport_errors(error: NebulaError, retryable: bool) -> None:
    """Connection errors and timeouts are retried unless marked not retryable; an unknown error is not."""
    assert is_retryable(error) is retryable


# --- retry_delay ----------------------------------------------------------------------------------


def test_insufficient_quota_is_never_retried_even_with_retry_after() -> None:
    """A 429 insufficient_quota gives up at once, even with a Retry-After of 0 and retries left."""
    err = api_error(429, "insufficient_quota", {"Retry-After": "0"})
    assert retry_delay(RetryPolicy(max_retries=5), 1, err) is None


def test_rate_limit_is_retried() -> None:
    """A 429 rate_limit_exceeded gets a delay on its first retry."""
    delay = retry_delay(RetryPolicy(jitter=False), 1, api_error(429, "rate_limit_exceeded"))
    assert delay == 0.5


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_retryable_statuses_get_a_delay(status: int) -> None:
    """408 and the 5xx gateway statuses are retried with backoff."""
    assert retry_delay(RetryPolicy(jitter=False), 1, api_error(status)) == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_give_up(status: int) -> None:
    """A 4xx other than 408/429 is not retried."""
    assert retry_delay(RetryPolicy(max_retries=5), 1, api_error(status)) is None


@pytest.mark.parametrize(
    "error", [APIConnectionError("refused"), APITimeoutError("slow")], ids=["conn", "timeout"]
)
def test_transport_errors_get_backoff(error: NebulaError) -> None:
    """Connection errors and timeouts are retried with exponential backoff."""
    policy = RetryPolicy(max_retries=5, jitter=False)
    assert [retry_delay(policy, n, error) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_attempt_beyond_max_retries_gives_up(max_retries: int) -> None:
    """Retry number max_retries still gets a delay; retry number max_retries + 1 gives up."""
    policy = RetryPolicy(max_retries=max_retries, jitter=False)
    err = api_error(503)
    if max_retries:
        assert retry_delay(policy, max_retries, err) is not None
    assert retry_delay(policy, max_retries + 1, err) is None


@pytest.mark.parametrize("seconds", ["0", "1", "2.5", "60"])
def test_retry_after_within_cap_is_used_exactly(seconds: str) -> None:
    """A Retry-After up to max_retry_after is the delay, with no jitter or backoff applied."""
    err = api_error(429, "rate_limit_exceeded", {"Retry-After": seconds})
    assert retry_delay(RetryPolicy(max_retry_after=60.0), 1, err, random=lambda: 0.0) == float(seconds)


def test_retry_after_on_a_5xx_is_used() -> None:
    """A 503 carrying Retry-After waits what the server asked."""
    err = api_error(503, None, {"Retry-After": "3"})
    assert retry_delay(RetryPolicy(), 1, err, random=lambda: 0.0) == 3.0


@pytest.mark.parametrize(
    "headers", [{"Retry-After": "60.5"}, {"Retry-After": "3600"}, {"retry-after-ms": "61000"}]
)
def test_retry_after_above_cap_gives_up(headers: dict[str, str]) -> None:
    """A Retry-After above max_retry_after is not slept through: retry_delay gives up."""
    err = api_error(429, "rate_limit_exceeded", headers)
    assert retry_delay(RetryPolicy(max_retries=5, max_retry_after=60.0), 1, err) is None


def test_retry_after_does_not_make_a_client_error_retryable() -> None:
    """A 400 with Retry-After is still not retried."""
    err = api_error(400, "invalid_request", {"Retry-After": "0"})
    assert retry_delay(RetryPolicy(max_retries=5), 1, err) is None


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    """With jitter off, delays are 0.5, 1, 2, 4, 8 and then stay at max_delay."""
    policy = RetryPolicy(max_retries=10, initial_delay=0.5, max_delay=8.0, jitter=False)
    delays = [retry_delay(policy, n, api_error(503)) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


@pytest.mark.parametrize(("attempt", "expected"), [(1, 0.25), (2, 0.5), (3, 1.0), (5, 4.0), (9, 4.0)])
def test_full_jitter_scales_the_backoff(attempt: int, expected: float) -> None:
    """Full jitter multiplies the capped backoff by the random draw (0.5 here)."""
    policy = RetryPolicy(max_retries=10, initial_delay=0.5, max_delay=8.0, jitter=True)
    assert retry_delay(policy, attempt, api_error(503), random=lambda: 0.5) == expected


def test_full_jitter_spans_zero_to_the_backoff() -> None:
    """Full jitter can wait anything from 0 up to the backoff, never more."""
    policy = RetryPolicy(max_retries=10, initial_delay=1.0, max_delay=8.0, jitter=True)
    assert retry_delay(policy, 2, api_error(503), random=lambda: 0.0) == 0.0
    high = retry_delay(policy, 2, api_error(503), random=lambda: 0.999999)
    assert high is not None
    assert 1.99 < high <= 2.0
    drawn = [retry_delay(policy, 3, api_error(503)) for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 4.0 for d in drawn)
    assert len(set(drawn)) > 1  # the default draw is random, not a constant


@pytest.mark.parametrize("attempt", [64, 65, 1_100, 10**6, 10**18])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    """A huge retry number gives max_delay instead of an OverflowError."""
    policy = RetryPolicy(max_retries=10**19, initial_delay=0.5, max_delay=8.0, jitter=False)
    assert retry_delay(policy, attempt, api_error(503)) == 8.0


def test_zero_initial_delay_retries_immediately() -> None:
    """initial_delay=0 gives a delay of 0 on every retry."""
    policy = RetryPolicy(max_retries=3, initial_delay=0.0, jitter=False)
    assert [retry_delay(policy, n, api_error(503)) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]


# --- parse_retry_after ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "5"}, 5.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": " 7 "}, 7.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"retry-after-ms": "-5", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"Retry-After": "-10"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Wed, 99 Foo 2023 07:28:00 GMT"}, None),
        ({"Retry-After": "1" * 40}, float("1" * 40)),
        ({"Retry-After": http_date(NOW + 30)}, 30.0),
        ({"Retry-After": http_date(NOW + 3600)}, 3600.0),
        ({"Retry-After": http_date(NOW - 30)}, 0.0),
        ({"Retry-After": http_date(0)}, 0.0),
    ],
)
def test_parse_retry_after_table(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms wins, then Retry-After seconds or date; junk, inf, nan and negatives are ignored."""
    assert parse_retry_after(CIMultiDict(headers), now=NOW) == expected


@pytest.mark.parametrize("name", ["Retry-After", "retry-after", "RETRY-AFTER", "ReTrY-aFtEr"])
def test_parse_retry_after_is_case_insensitive(name: str) -> None:
    """The header is found whatever its case."""
    assert parse_retry_after(CIMultiDictProxy(CIMultiDict({name: "4"})), now=NOW) == 4.0


@pytest.mark.parametrize("name", ["retry-after-ms", "Retry-After-Ms", "RETRY-AFTER-MS"])
def test_parse_retry_after_ms_is_case_insensitive(name: str) -> None:
    """retry-after-ms is found whatever its case."""
    assert parse_retry_after(CIMultiDict({name: "4000"}), now=NOW) == 4.0


def test_forty_digit_retry_after_gives_up_with_the_value() -> None:
    """A 40-digit Retry-After neither overflows nor sleeps: the error carries it and retry gives up."""
    err = api_error(429, "rate_limit_exceeded", {"Retry-After": "9" * 40})
    assert err.retry_after is not None
    assert err.retry_after > 1e39
    assert retry_delay(RetryPolicy(max_retries=5), 1, err) is None


def test_date_beyond_the_cap_gives_up() -> None:
    """An HTTP date further away than max_retry_after makes retry_delay give up."""
    err = api_error(429, "rate_limit_exceeded", {"Retry-After": http_date(time.time() + 3600)})
    assert err.retry_after is not None
    assert err.retry_after > 3000
    assert retry_delay(RetryPolicy(max_retries=5, max_retry_after=60.0), 1, err) is None


# --- the retry loop through the client ------------------------------------------------------------


def rate_limited(mock_api: MockAPI, retry_after: str = "0", **kwargs: Any) -> None:
    headers = {"Retry-After": retry_after, **kwargs.pop("headers", {})}
    mock_api.post(
        ENDPOINT,
        status=429,
        payload=error_body("rate_limit_exceeded", kwargs.pop("message", "slow")),
        headers=headers,
    )


async def test_429_retry_after_zero_is_retried_once(mock_api: MockAPI) -> None:
    """A 429 with Retry-After: 0 then a success is retried once, the same body sent twice."""
    rate_limited(mock_api)
    mock_api.post(ENDPOINT, payload=success_body("ok"), headers={"x-request-id": "req_ok"})
    async with mock_client(max_retries=2) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "ok"
    assert result.retries == 1
    assert result.request_id == "req_ok"
    first, second = mock_api.sent()
    assert first["raw"] == second["raw"]
    assert first["headers"] == second["headers"]


@pytest.mark.parametrize("headers", [{"Retry-After": "120"}, {"retry-after-ms": "120000"}])
async def test_retry_after_above_cap_raises_at_once(mock_api: MockAPI, headers: dict[str, str]) -> None:
    """A 429 asking for longer than max_retry_after raises RateLimitError at once with retry_after set."""
    mock_api.post(ENDPOINT, status=429, payload=error_body("rate_limit_exceeded", "slow"), headers=headers)
    mock_api.post(ENDPOINT, payload=success_body())
    started = time.monotonic()
    async with mock_client(max_retries=3) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    assert time.monotonic() - started < 5
    assert info.value.retry_after == 120.0
    assert len(mock_api.sent()) == 1


async def test_custom_max_retry_after_is_respected(mock_api: MockAPI) -> None:
    """With max_retry_after=1, a Retry-After of 2 raises at once instead of waiting."""
    rate_limited(mock_api, "2")
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(retry=RetryPolicy(max_retries=3, max_retry_after=1.0)) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.retry_after == 2.0
    assert len(mock_api.sent()) == 1


async def test_insufficient_quota_429_is_sent_once(mock_api: MockAPI) -> None:
    """A 429 saying insufficient_quota raises InsufficientQuotaError after exactly one request."""
    mock_api.post(
        ENDPOINT,
        status=429,
        payload=error_body("insufficient_quota", "no credits"),
        headers={"Retry-After": "0"},
    )
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(retry=RetryPolicy(max_retries=5, initial_delay=0.001)) as client:
        with pytest.raises(InsufficientQuotaError):
            await client.generate_text(model="m", prompt="p")
    assert len(mock_api.sent()) == 1


async def test_exhausted_retries_raise_the_last_error_unchanged(mock_api: MockAPI) -> None:
    """After max_retries the last RateLimitError is raised as it came, retry_after included."""
    rate_limited(mock_api, message="first", headers={"x-request-id": "req_1"})
    rate_limited(mock_api, message="second", headers={"x-request-id": "req_2"})
    rate_limited(mock_api, message="third", headers={"x-request-id": "req_3"})
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(max_retries=2) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    err = info.value
    assert type(err) is RateLimitError
    assert (err.message, err.request_id, err.retry_after, err.status_code) == ("third", "req_3", 0.0, 429)
    assert len(mock_api.sent()) == 3


async def test_exhausted_5xx_retries_raise_server_error(mock_api: MockAPI) -> None:
    """Three 503s with two retries allowed raise the third ServerError after three requests."""
    mock_api.post(ENDPOINT, status=503, payload=error_body("overloaded", "busy"), repeat=True)
    async with mock_client(retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.status_code == 503
    assert len(mock_api.sent()) == 3


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_retryable_status_then_success(mock_api: MockAPI, status: int) -> None:
    """A retryable status followed by a success returns the success with retries == 1."""
    mock_api.post(ENDPOINT, status=status, body="upstream trouble", content_type="text/plain")
    mock_api.post(ENDPOINT, payload=success_body("recovered"))
    async with mock_client(retry=FAST) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert (result.text, result.retries) == ("recovered", 1)
    assert len(mock_api.sent()) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_error_is_sent_once(mock_api: MockAPI, status: int) -> None:
    """A non-retryable status raises after one request, whatever max_retries is."""
    mock_api.post(ENDPOINT, status=status, payload={"status": "error", "error": {"message": "no"}})
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(retry=FAST) as client:
        with pytest.raises(APIError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.status_code == status
    assert len(mock_api.sent()) == 1


@pytest.mark.parametrize(
    ("exception", "expected"),
    [(aiohttp.ClientConnectionError("reset"), APIConnectionError), (asyncio.TimeoutError(), APITimeoutError)],
    ids=["connection", "timeout"],
)
async def test_transport_error_then_success(
    mock_api: MockAPI, exception: Exception, expected: type[NebulaError]
) -> None:
    """A connection error or timeout is retried; when it persists, its own class is raised."""
    mock_api.post(ENDPOINT, exception=exception)
    mock_api.post(ENDPOINT, payload=success_body("ok"))
    async with mock_client(retry=FAST) as client:
        result = await client.generate_text(model="m", prompt="p")
        assert result.retries == 1
        mock_api.post(ENDPOINT, exception=exception, repeat=True)
        with pytest.raises(expected) as info:
            await client.generate_text(model="m", prompt="p")
    assert type(info.value) is expected
    assert len(mock_api.sent()) == 2 + 3


async def test_retry_policy_wins_over_max_retries(mock_api: MockAPI) -> None:
    """retry=RetryPolicy(max_retries=1) limits a client built with max_retries=5 to two requests."""
    mock_api.post(ENDPOINT, status=503, payload=error_body("overloaded"), repeat=True)
    policy = RetryPolicy(max_retries=1, initial_delay=0.001, jitter=False)
    async with mock_client(max_retries=5, retry=policy) as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")
    assert len(mock_api.sent()) == 2


async def test_past_http_date_retries_at_once(mock_api: MockAPI) -> None:
    """A Retry-After date in the past is a zero wait, and the call is retried."""
    rate_limited(mock_api, "Wed, 21 Oct 2015 07:28:00 GMT")
    mock_api.post(ENDPOINT, payload=success_body("ok"))
    async with mock_client(max_retries=1) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.retries == 1
    assert len(mock_api.sent()) == 2


async def test_200_error_envelope_is_retried_like_a_429(mock_api: MockAPI) -> None:
    """A 200 whose envelope says rate_limit_exceeded is retried just as a 429 would be."""
    mock_api.post(
        ENDPOINT, status=200, payload=error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}
    )
    mock_api.post(ENDPOINT, payload=success_body("ok"))
    async with mock_client(max_retries=1) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert (result.text, result.retries) == ("ok", 1)


# --- streams: retried only before the first chunk -------------------------------------------------

SSE_OK = sse({"text": "Hi", "finish_reason": None}, {"text": "!", "finish_reason": "stop"})


async def test_stream_is_retried_before_its_first_chunk(mock_api: MockAPI) -> None:
    """A stream whose first event is a rate-limit error is retried, and the caller sees one clean text."""
    mock_api.post(
        ENDPOINT, body=sse(error_body("rate_limit_exceeded", "slow")), content_type="text/event-stream"
    )
    mock_api.post(ENDPOINT, body=SSE_OK, content_type="text/event-stream")
    async with mock_client(retry=FAST) as client, client.stream_text(model="m", prompt="p") as stream:
        chunks = [chunk.text async for chunk in stream]
    assert chunks == ["Hi", "!"]
    assert stream.text == "Hi!"
    assert stream.retries == 1
    assert len(mock_api.sent()) == 2


async def test_stream_cut_before_any_event_is_retried(mock_api: MockAPI) -> None:
    """A stream that ends before any event is retried rather than returning nothing."""
    mock_api.post(ENDPOINT, body=b"", content_type="text/event-stream")
    mock_api.post(ENDPOINT, body=SSE_OK, content_type="text/event-stream")
    async with mock_client(retry=FAST) as client, client.stream_text(model="m", prompt="p") as stream:
        text = "".join([chunk.text async for chunk in stream])
    assert text == "Hi!"
    assert len(mock_api.sent()) == 2


async def test_stream_is_not_retried_after_text_was_delivered(mock_api: MockAPI) -> None:
    """A stream failing after its first chunk raises instead of retrying: text is never delivered twice."""
    body = sse({"text": "Hi", "finish_reason": None}, error_body("rate_limit_exceeded", "slow"))
    mock_api.post(ENDPOINT, body=body, content_type="text/event-stream")
    mock_api.post(ENDPOINT, body=SSE_OK, content_type="text/event-stream")
    chunks: list[str] = []
    async with mock_client(retry=FAST) as client:
        with pytest.raises(RateLimitError):
            await consume(client, chunks, model="m", prompt="p")
    assert chunks == ["Hi"]
    assert len(mock_api.sent()) == 1


async def test_stream_quota_error_is_not_retried(mock_api: MockAPI) -> None:
    """A stream refused with insufficient_quota is sent once."""
    mock_api.post(
        ENDPOINT, status=429, payload=error_body("insufficient_quota"), headers={"Retry-After": "0"}
    )
    mock_api.post(ENDPOINT, body=SSE_OK, content_type="text/event-stream")
    async with mock_client(retry=FAST) as client:
        with pytest.raises(InsufficientQuotaError):
            await consume(client, model="m", prompt="p")
    assert len(mock_api.sent()) == 1


# --- logging --------------------------------------------------------------------------------------


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nebula_async" and r.levelno == logging.WARNING]


def _key_in_logs(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        SECRET_KEY in text
        for record in caplog.records
        for text in (record.getMessage(), repr(record.args), record.exc_text or "")
    ) or (SECRET_KEY in caplog.text)


async def test_each_retry_logs_a_warning_with_reason_and_delay(
    mock_api: MockAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry logs one WARNING naming the reason and the delay, and no record shows the key."""
    caplog.set_level(logging.DEBUG)
    mock_api.post(
        ENDPOINT,
        status=429,
        payload=error_body("rate_limit_exceeded", "slow"),
        headers={"retry-after-ms": "3"},
    )
    mock_api.post(
        ENDPOINT, status=503, payload=error_body("overloaded", "busy"), headers={"retry-after-ms": "7"}
    )
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(SECRET_KEY, max_retries=2) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.retries == 2
    first, second = (r.getMessage() for r in _retry_warnings(caplog))
    assert "rate_limit_exceeded" in first or "RateLimitError" in first
    assert "0.003" in first
    assert "ServerError" in second or "503" in second
    assert "0.007" in second
    assert not _key_in_logs(caplog)


async def test_backoff_delays_are_logged(mock_api: MockAPI, caplog: pytest.LogCaptureFixture) -> None:
    """Without Retry-After the logged delays follow the backoff formula (jitter off)."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    mock_api.post(ENDPOINT, status=502, body="bad gateway", content_type="text/plain", repeat=True)
    policy = RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=1.0, jitter=False)
    async with mock_client(retry=policy) as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")
    messages = [r.getMessage() for r in _retry_warnings(caplog)]
    assert len(messages) == 3
    for message, delay in zip(messages, ["0.001", "0.002", "0.004"], strict=True):
        assert delay in message
    assert len(mock_api.sent()) == 4


async def test_no_warning_without_a_retry(mock_api: MockAPI, caplog: pytest.LogCaptureFixture) -> None:
    """A call that is not retried logs no WARNING, whether it succeeds or fails."""
    caplog.set_level(logging.DEBUG)
    mock_api.post(ENDPOINT, payload=success_body())
    mock_api.post(ENDPOINT, status=400, payload=error_body("invalid_request"))
    async with mock_client(SECRET_KEY, max_retries=2) as client:
        await client.generate_text(model="m", prompt="p")
        with pytest.raises(InvalidRequestError):
            await client.generate_text(model="m", prompt="p")
    assert _retry_warnings(caplog) == []
    assert not _key_in_logs(caplog)


async def test_each_attempt_logs_a_debug_line(mock_api: MockAPI, caplog: pytest.LogCaptureFixture) -> None:
    """Every attempt logs a DEBUG line with the URL and the status."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    rate_limited(mock_api)
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(SECRET_KEY, max_retries=1) as client:
        await client.generate_text(model="m", prompt="p")
    debug = [
        r.getMessage() for r in caplog.records if r.name == "nebula_async" and r.levelno == logging.DEBUG
    ]
    assert len(debug) == 2
    assert ENDPOINT in debug[0]
    assert "429" in debug[0]
    assert ENDPOINT in debug[1]
    assert "200" in debug[1]


async def test_key_never_logged_for_transport_errors_holding_headers(
    mock_api: MockAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """A retried aiohttp error that holds the request headers (TooManyRedirects) is logged without the key."""
    caplog.set_level(logging.DEBUG)
    sent_headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {SECRET_KEY}"}))
    request_info = aiohttp.RequestInfo(URL(ENDPOINT), "POST", sent_headers, URL(ENDPOINT))
    mock_api.post(ENDPOINT, exception=aiohttp.TooManyRedirects(request_info, (), status=307, message="loop"))
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(SECRET_KEY, retry=FAST) as client:
        await client.generate_text(model="m", prompt="p")
    assert len(mock_api.sent()) == 2
    assert not _key_in_logs(caplog)
