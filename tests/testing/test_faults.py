"""FakeNebulaServer's scripted faults over real sockets on 127.0.0.1, and the SDK riding them out."""

from __future__ import annotations

import threading
import time
from typing import Any

import aiohttp
import pytest

import nebula_sync
from nebula_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncNebulaClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextChunk,
    Timeout,
)
from nebula_async.testing import FakeNebulaServer
from tests.testing._support import (
    FAKE_KEY,
    MODEL,
    THREE_FAST_RETRIES,
    body,
    finish_reasons,
    parse_events,
    post,
    read_broken_stream,
    send,
    statuses,
)

PROMPT = "long"  # REPLIES' 300-token reply: long enough for every cut below
STREAM = body(prompt=PROMPT, max_tokens=10, stream=True)


async def _stream_into(client: AsyncNebulaClient, chunks: list[TextChunk]) -> None:
    """Stream PROMPT, appending each chunk to ``chunks`` as it arrives (so they survive an error)."""
    async with client.stream_text(model=MODEL, prompt=PROMPT, max_tokens=10) as stream:
        async for chunk in stream:
            chunks.append(chunk)


# --- fail_next ------------------------------------------------------------------------------------


async def test_fail_next_affects_exactly_the_next_n_requests(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """fail_next(2) fails the next two requests, then normal service resumes."""
    fake.fail_next(2, status=503)
    assert fake.pending_faults == 2
    replies = [await send(http, fake, body()) for _ in range(4)]
    assert [r.status for r in replies] == [503, 503, 200, 200]
    assert fake.pending_faults == 0
    assert replies[2].json()["status"] == "success"


async def test_fail_next_sends_the_scripted_envelope_and_retry_headers(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """fail_next's status, code, message and details reach the wire; retry_after sets both retry headers."""
    fake.fail_next(
        status=429,
        code="insufficient_quota",
        message="Out of credit",
        details={"quota": "used up"},
        retry_after=1.2,
    )
    reply = await send(http, fake, body())
    assert reply.status == 429
    assert reply.json() == {
        "status": "error",
        "error": {"code": "insufficient_quota", "message": "Out of credit", "details": {"quota": "used up"}},
    }
    assert reply.headers["Retry-After"] == "2"  # whole seconds, rounded up
    assert reply.headers["retry-after-ms"] == "1200"
    assert reply.headers["x-request-id"].startswith("req_")


async def test_fail_next_retry_after_ms_is_exact(fake: FakeNebulaServer, http: aiohttp.ClientSession) -> None:
    """retry_after=4.03 is sent as retry-after-ms 4030, the exact milliseconds the docstring promises."""
    fake.fail_next(status=429, retry_after=4.03)
    reply = await send(http, fake, body())
    assert reply.headers["Retry-After"] == "5"
    assert reply.headers["retry-after-ms"] == "4030"


async def test_fail_next_without_retry_after_sends_no_retry_headers(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """Without retry_after, a scripted 429 carries neither Retry-After nor retry-after-ms."""
    fake.fail_next(status=429)
    reply = await send(http, fake, body())
    assert reply.status == 429
    assert "Retry-After" not in reply.headers
    assert "retry-after-ms" not in reply.headers


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (429, "rate_limit_exceeded", "Too many requests"),
        (500, "server_error", "The server had an error while processing the request"),
        (503, "server_error", "The server had an error while processing the request"),
        (400, "invalid_request", "Invalid parameters in the request"),
        (422, "invalid_request", "Invalid parameters in the request"),
    ],
)
async def test_fail_next_picks_the_default_code_by_status(
    fake: FakeNebulaServer, http: aiohttp.ClientSession, status: int, code: str, message: str
) -> None:
    """Without a code, fail_next picks the documented one for the status, and its message."""
    fake.fail_next(status=status)
    reply = await send(http, fake, body())
    assert reply.status == status
    assert reply.json() == {"status": "error", "error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"code": "insufficient_quota"}, 429, "insufficient_quota"),
        ({"code": "model_not_found"}, 404, "model_not_found"),
        ({"code": "context_length_exceeded"}, 400, "context_length_exceeded"),
        ({}, 500, "server_error"),
        ({"status": 429}, 429, "rate_limit_exceeded"),
    ],
    ids=["insufficient_quota", "model_not_found", "context_length_exceeded", "nothing", "status-429"],
)
def test_fail_next_matches_the_status_to_the_code(kwargs: dict[str, Any], status: int, code: str) -> None:
    """fail_next with only a code answers that code's documented status, and with neither a 500."""
    # Regression: fail_next(code=...) alone answered 500 whatever the code's documented status.
    with FakeNebulaServer(api_keys=[FAKE_KEY]).run_in_thread() as server:
        server.fail_next(**kwargs)
        got_status, _, answer = post(server.base_url)
    assert (got_status, answer["error"]["code"]) == (status, code)


async def test_sdk_rides_out_two_scripted_429s(fake: FakeNebulaServer) -> None:
    """fail_next(2, status=429, retry_after=0) costs the SDK two retries, then the call succeeds."""
    fake.fail_next(2, status=429, retry_after=0)
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url) as client:
        result = await client.generate_text(model=MODEL, prompt=PROMPT, max_tokens=5)
    assert result.retries == 2
    assert result.text
    assert statuses(fake) == [429, 429, 200]
    assert result.request_id == fake.requests[-1].request_id


async def test_sdk_gives_up_after_max_retries_scripted_500s(fake: FakeNebulaServer) -> None:
    """fail_next(3, status=500) outlasts max_retries=2: the SDK raises ServerError after three attempts."""
    fake.fail_next(3, status=500)
    retry = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.001)
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, retry=retry) as client:
        with pytest.raises(ServerError) as info:
            await client.generate_text(model=MODEL, prompt=PROMPT)
    assert info.value.status_code == 500
    assert info.value.code == "server_error"
    assert statuses(fake) == [500, 500, 500]
    assert fake.pending_faults == 0


# --- html_error_next, delay_next, disconnect_next -------------------------------------------------


async def test_html_error_next_answers_an_html_page(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """html_error_next answers one request with a text/html 502 page, as a proxy does; the next is normal."""
    fake.html_error_next()
    page = await send(http, fake, body())
    assert page.status == 502
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"502 Bad Gateway" in page.raw
    assert (await send(http, fake, body())).status == 200


async def test_sdk_raises_server_error_for_an_html_page(fake: FakeNebulaServer) -> None:
    """The SDK turns the scripted HTML 502 page into a ServerError."""
    fake.html_error_next(status=502)
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(ServerError) as info:
            await client.generate_text(model=MODEL, prompt=PROMPT)
    assert info.value.status_code == 502
    assert statuses(fake) == [502]


async def test_delay_next_holds_the_answer(fake: FakeNebulaServer, http: aiohttp.ClientSession) -> None:
    """delay_next(seconds=0.3) answers the next request normally, no sooner than 0.3 s; the next is prompt."""
    fake.delay_next(seconds=0.3)
    started = time.monotonic()
    assert (await send(http, fake, body())).status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await send(http, fake, body())).status == 200
    assert time.monotonic() - started < 0.3


async def test_sdk_times_out_on_a_delayed_answer(fake: FakeNebulaServer) -> None:
    """A client whose read timeout is shorter than delay_next's seconds gets APITimeoutError."""
    fake.delay_next(seconds=3.0)
    timeout = Timeout(connect=1.0, read=0.1, total=1.0)
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, timeout=timeout, max_retries=0) as client:
        with pytest.raises(APITimeoutError):
            await client.generate_text(model=MODEL, prompt=PROMPT)
        result = await client.generate_text(model=MODEL, prompt=PROMPT)  # the fault is used up
    assert result.retries == 0


async def test_disconnect_next_closes_without_an_answer(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """disconnect_next drops the connection with no response; the request is recorded with status None."""
    fake.disconnect_next()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(http, fake, body())
    assert (await send(http, fake, body())).status == 200
    assert statuses(fake) == [None, 200]


async def test_sdk_retries_a_disconnect_as_a_connection_error(fake: FakeNebulaServer) -> None:
    """The SDK retries a dropped connection, and the second attempt succeeds."""
    fake.disconnect_next()
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, retry=THREE_FAST_RETRIES) as client:
        result = await client.generate_text(model=MODEL, prompt=PROMPT)
    assert result.retries == 1
    assert statuses(fake) == [None, 200]


async def test_sdk_raises_connection_error_when_disconnects_outlast_retries(fake: FakeNebulaServer) -> None:
    """With max_retries=0 a scripted disconnect reaches the caller as APIConnectionError."""
    fake.disconnect_next()
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model=MODEL, prompt=PROMPT)
    assert not isinstance(info.value, APITimeoutError)


# --- stream faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("events", [0, 1, 3])
async def test_drop_stream_after_sends_exactly_k_events(
    fake: FakeNebulaServer, http: aiohttp.ClientSession, events: int
) -> None:
    """drop_stream_after(events=k) sends exactly k whole events, then breaks the body."""
    fake.drop_stream_after(events=events)
    received = await read_broken_stream(http, fake, STREAM)
    assert received.endswith(b"\n\n") or received == b""
    assert [e["finish_reason"] for e in parse_events(received)] == [None] * events
    assert statuses(fake) == [200]


async def test_drop_stream_after_more_events_than_the_stream_has_still_cuts(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """drop_stream_after(events=50) on a 5-event stream cuts it before the final event."""
    # Regression: a count past the stream's end let the whole stream through, final event included.
    fake.drop_stream_after(events=50)
    events = parse_events(await read_broken_stream(http, fake, {**STREAM, "max_tokens": 5}))
    assert finish_reasons(events) == [None] * 4
    assert fake.pending_faults == 0


@pytest.mark.parametrize("events", [0, 2])
async def test_sdk_delivers_k_chunks_then_raises_connection_error(
    fake: FakeNebulaServer, events: int
) -> None:
    """Over a dropped stream the SDK delivers the k chunks sent, then raises APIConnectionError."""
    fake.drop_stream_after(events=events)
    chunks: list[TextChunk] = []
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(APIConnectionError):
            await _stream_into(client, chunks)
    assert len(chunks) == events
    assert fake.pending_faults == 0


async def test_sdk_retries_a_stream_dropped_before_its_first_chunk(fake: FakeNebulaServer) -> None:
    """A stream dropped after 0 events is retried by the SDK, and the retry streams the whole text."""
    fake.drop_stream_after(events=0)
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, retry=THREE_FAST_RETRIES) as client:
        whole = await client.generate_text(model=MODEL, prompt=PROMPT, max_tokens=10)
        async with client.stream_text(model=MODEL, prompt=PROMPT, max_tokens=10) as stream:
            text = "".join([chunk.text async for chunk in stream])
            assert stream.retries == 1
    assert text == whole.text


async def test_error_event_after_sends_k_events_then_an_error_event(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """error_event_after(events=2) sends two events, then an error envelope as an event, then ends cleanly."""
    fake.error_event_after(events=2, code="rate_limit_exceeded")
    reply = await send(http, fake, STREAM)
    assert reply.status == 200
    events = parse_events(reply.raw)
    assert len(events) == 3
    assert [e["finish_reason"] for e in events[:2]] == [None, None]
    assert events[2] == {
        "status": "error",
        "error": {"code": "rate_limit_exceeded", "message": "Too many requests"},
    }


async def test_error_event_after_more_events_than_the_stream_has_still_fires(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """error_event_after(events=50) on a 5-event stream sends the error in place of the final event."""
    # Regression: a count past the stream's end sent the whole stream, final event included, then the error.
    fake.error_event_after(events=50, code="server_error", message="boom")
    events = parse_events((await send(http, fake, {**STREAM, "max_tokens": 5})).raw)
    assert len(events) == 5
    assert all(e.get("finish_reason") is None for e in events)
    assert events[-1] == {"status": "error", "error": {"code": "server_error", "message": "boom"}}
    assert fake.pending_faults == 0


async def test_sdk_raises_rate_limit_error_mid_stream(fake: FakeNebulaServer) -> None:
    """The SDK delivers the chunks before a rate_limit_exceeded error event, then raises RateLimitError."""
    fake.error_event_after(events=2, code="rate_limit_exceeded")
    chunks: list[TextChunk] = []
    async with AsyncNebulaClient(FAKE_KEY, base_url=fake.base_url, retry=THREE_FAST_RETRIES) as client:
        with pytest.raises(RateLimitError):
            await _stream_into(client, chunks)
    assert len(chunks) == 2
    assert len(fake.requests) == 1  # chunks were delivered: no retry


async def test_stream_faults_wait_for_the_next_valid_stream(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """A stream fault skips non-streaming requests and rejected streams, and hits the next valid stream."""
    fake.drop_stream_after(events=1)
    assert (await send(http, fake, body())).status == 200
    assert (await send(http, fake, {**STREAM, "model": "no-such-model"})).status == 404
    assert fake.pending_faults == 1
    received = await read_broken_stream(http, fake, STREAM)
    assert len(parse_events(received)) == 1
    assert fake.pending_faults == 0
    whole = await send(http, fake, STREAM)
    assert parse_events(whole.raw)[-1]["finish_reason"] is not None


# --- order, reset, arguments, threads -------------------------------------------------------------


async def test_request_faults_are_fifo(fake: FakeNebulaServer, http: aiohttp.ClientSession) -> None:
    """Request faults happen in the order they were scripted, each for its own count."""
    fake.fail_next(status=503)
    fake.html_error_next(2, status=504)
    fake.fail_next(status=429)
    fake.disconnect_next()
    assert fake.pending_faults == 5
    seen: list[int | None] = []
    for _ in range(6):
        try:
            seen.append((await send(http, fake, body())).status)
        except aiohttp.ServerDisconnectedError:
            seen.append(None)
    assert seen == [503, 504, 504, 429, None, 200]
    assert statuses(fake) == seen


async def test_stream_faults_are_fifo(fake: FakeNebulaServer, http: aiohttp.ClientSession) -> None:
    """Stream faults happen in the order scripted: a drop after 2 events, then an error event after 1."""
    fake.drop_stream_after(events=2)
    fake.error_event_after(events=1)
    assert len(parse_events(await read_broken_stream(http, fake, STREAM))) == 2
    events = parse_events((await send(http, fake, STREAM)).raw)
    assert len(events) == 2
    assert events[1]["error"]["code"] == "server_error"


async def test_reset_clears_faults_requests_and_limits(http: aiohttp.ClientSession) -> None:
    """reset() forgets pending faults, recorded requests, rate-limit windows and quota usage."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], requests_per_minute=1) as server:
        assert (await send(http, server, body())).status == 200
        assert server.tokens_used() > 0
        assert (await send(http, server, body())).status == 429  # over the limit
        server.fail_next(3)
        server.drop_stream_after(events=1)
        server.reset()
        assert server.pending_faults == 0
        assert server.requests == []
        assert server.tokens_used() == 0
        reply = await send(http, server, STREAM)
        assert reply.status == 200
        assert parse_events(reply.raw)[-1]["finish_reason"] is not None
        assert statuses(server) == [200]


@pytest.mark.parametrize(
    ("script", "error", "match"),
    [
        (lambda s: s.fail_next(0), ValueError, r"count must be an int >= 1, got 0"),
        (
            lambda s: s.fail_next(status=200),
            ValueError,
            r"status must be an int from 400 to 599 \(an HTTP error status\), got 200",
        ),
        (
            lambda s: s.fail_next(retry_after=-1),
            ValueError,
            r"retry_after must be a finite number of seconds >= 0",
        ),
        (
            lambda s: s.html_error_next(status=302),
            ValueError,
            r"status must be an int from 400 to 599 \(an HTTP error status\), got 302",
        ),
        (
            lambda s: s.delay_next(seconds=-0.5),
            ValueError,
            r"seconds must be a finite number of seconds >= 0, got -0.5",
        ),
        (lambda s: s.delay_next(seconds=float("nan")), ValueError, r"seconds must be a finite number"),
        (lambda s: s.delay_next(seconds="1"), TypeError, r"seconds must be a number of seconds, got str"),
        (lambda s: s.disconnect_next(count=-1), ValueError, r"count must be an int >= 1, got -1"),
        (lambda s: s.drop_stream_after(events=-1), ValueError, r"events must be an int >= 0, got -1"),
        (lambda s: s.error_event_after(events=1, count=0), ValueError, r"count must be an int >= 1, got 0"),
    ],
)
def test_fault_arguments_are_checked(script: Any, error: type[Exception], match: str) -> None:
    """A bad fault argument raises a clear error at once and scripts nothing."""
    server = FakeNebulaServer()
    with pytest.raises(error, match=match):
        script(server)
    assert server.pending_faults == 0


def test_faults_scripted_from_other_threads_apply() -> None:
    """Faults scripted from several threads while the server runs in its own thread all apply, in full."""
    with FakeNebulaServer(api_keys=[FAKE_KEY]).run_in_thread() as server:
        threads = [
            threading.Thread(target=server.fail_next, args=(5,), kwargs={"status": 503}) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.pending_faults == 20
        with nebula_sync.NebulaClient(FAKE_KEY, base_url=server.base_url, max_retries=0) as client:
            for _ in range(20):
                with pytest.raises(ServerError):
                    client.generate_text(model=MODEL, prompt=PROMPT)
            server.fail_next(status=429, retry_after=0)  # scripted while the client's loop thread is live
            result = client.generate_text(model=MODEL, prompt=PROMPT, max_retries=1)
        assert result.retries == 1
        assert statuses(server) == [503] * 20 + [429, 200]
