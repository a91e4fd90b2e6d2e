"""Streams over real sockets: SSE framing, byte-level splits, truncation, drops and stream retries.

The FakeNebulaServer (``fake``) streams the documented events and scripts drops and error events;
the hand-rolled servers send what it never does: other line ends, comments, ``[DONE]``, a clean end
without a final event, a byte order mark, ``"error": null``, a stall with the body open after some
events, writes split at chosen bytes, a drop timed by what the caller has read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from nebula_async import APIConnectionError, RateLimitError, RetryPolicy, ServerError, TextChunk
from nebula_async._sse import MAX_LINE_BYTES
from nebula_async.testing import FakeNebulaServer
from tests.conftest import Handler, LocalServer
from tests.helpers import FAST_RETRY, NO_RETRY, error_body, sse, success_body
from tests.integration._support import (
    CALLS,
    SSE_HEAD_CHUNKED,
    SSE_HEAD_UNTIL_CLOSE,
    STALL,
    Call,
    RawConnection,
    RawServer,
    chunk,
    collect,
    events,
    http_chunk,
    make_client,
    open_stream,
    stream_handler,
    wait_until,
)

BOM = b"\xef\xbb\xbf"


def _data(text: str, finish_reason: str | None = None) -> bytes:
    """Return one event's JSON payload as bytes, non-ASCII kept as UTF-8."""
    return json.dumps(chunk(text, finish_reason), ensure_ascii=False).encode()


async def test_stream_chunks_text_finish_reason_and_request_id(fake: FakeNebulaServer) -> None:
    """A stream yields each event as a TextChunk; .text, .finish_reason and .request_id follow them."""
    fake.replies["p"] = "Here is a simple program, cut by max_tokens"
    seen: list[tuple[TextChunk, str, str | None]] = []
    async with (
        make_client(fake.base_url) as client,
        client.stream_text(model="m", prompt="p", max_tokens=4) as stream,
    ):
        request_id_on_entry = stream.request_id  # known once entered, before the first chunk
        async for piece in stream:
            seen.append((piece, stream.text, stream.finish_reason))
    assert request_id_on_entry == fake.requests[0].request_id
    assert seen == [
        (TextChunk("Here", None), "Here", None),
        (TextChunk(" is", None), "Here is", None),
        (TextChunk(" a", None), "Here is a", None),
        (TextChunk(" simple", "length"), "Here is a simple", "length"),
    ]
    assert stream.finish_reason == "length"
    assert stream.retries == 0


async def test_plain_async_for_without_async_with(fake: FakeNebulaServer) -> None:
    """A plain ``async for`` over stream_text() reads the whole stream and ends cleanly."""
    async with make_client(fake.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        texts = [piece.text async for piece in stream]
    assert texts == ["Hello", ",", " World", "!"]
    assert stream.text == "Hello, World!"
    assert stream.finish_reason == "stop"
    assert stream.request_id == fake.requests[0].request_id


async def test_crlf_cr_comments_unknown_fields_and_done(server: LocalServer) -> None:
    """CRLF, CR and LF line ends, comments, unknown fields, `data:` without a space, and [DONE] all parse."""
    body = (
        b": this is a comment\r\n\r\n"
        b"data:" + _data("A") + b"\r\n\r\n"  # no space after the colon, CRLF
        b"data: " + _data("B") + b"\r\r"  # CR only
        b"event: message\nid: 7\nretry: 100\nfoo: bar\ndata: " + _data("C") + b"\n\r\n"  # mixed LF + CRLF
        b":keep-alive\n"
        b'data: {"text": "D",\ndata:  "finish_reason": null}\n\n'  # two data lines joined by \n
        b"data: " + _data("E", "stop") + b"\r\n\r\n"
        b"data: [DONE]\n\n"
    )
    server.handler = stream_handler(body)
    async with make_client(server.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        texts = [piece.text async for piece in stream]
    assert texts == ["A", "B", "C", "D", "E"]
    assert stream.finish_reason == "stop"


async def test_crlf_split_between_writes(server: LocalServer) -> None:
    """A CRLF whose CR and LF arrive in different reads is one line end, not an extra blank line."""
    server.handler = stream_handler(
        b"data: " + _data("one") + b"\r",
        b"\n\r",
        b"\ndata: " + _data("two", "stop") + b"\r",
        b"\n\r\n",
        delay=0.01,
    )
    async with make_client(server.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        texts = [piece.text async for piece in stream]
    assert texts == ["one", "two"]


async def test_done_in_its_own_late_write_after_the_final_event(server: LocalServer) -> None:
    """A [DONE] that trails the final event by a few ms is accepted and the stream ends normally."""
    server.handler = stream_handler(events("a", "b"), b"data: [DONE]\n\n", delay=0.03)
    async with make_client(server.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        texts = [piece.text async for piece in stream]
    assert texts == ["a", "b"]
    assert stream.finish_reason == "stop"


async def test_events_written_byte_by_byte() -> None:
    """Events written one byte at a time, each flushed, give exactly the events written whole."""
    payload = b": hi\r\n\r\n" + events("Hé", "l", "lo 😀") + b"data: [DONE]\n\n"

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_HEAD_UNTIL_CLOSE)
        await conn.send(*(payload[i : i + 1] for i in range(len(payload))), pause=0.0005)

    async with RawServer(handle) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        texts = [piece.text async for piece in stream]
    assert texts == ["Hé", "l", "lo 😀"]
    assert stream.text == "Héllo 😀"
    assert stream.finish_reason == "stop"
    assert stream.request_id == "req_raw"


async def test_multibyte_utf8_split_across_reads() -> None:
    """A 2-byte and a 4-byte UTF-8 character cut across separate network reads decode intact."""
    line = b"data: " + _data("caf\u00e9 \U0001f600!", "stop") + b"\n\n"
    e_acute = line.index("é".encode())
    emoji = line.index("😀".encode())
    pieces = [
        line[: e_acute + 1],
        line[e_acute + 1 : emoji + 1],
        line[emoji + 1 : emoji + 3],
        line[emoji + 3 :],
    ]
    assert b"".join(pieces) == line

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_HEAD_UNTIL_CLOSE)
        await conn.send(*pieces, pause=0.01)

    async with RawServer(handle) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        texts = [piece.text async for piece in client.stream_text(model="m", prompt="p")]
    assert texts == ["café 😀!"]


async def test_eof_before_finish_reason_is_a_connection_error(server: LocalServer) -> None:
    """A stream ending without a finish_reason raises APIConnectionError, then RuntimeError if read again."""
    server.handler = stream_handler(sse(chunk("partial")), sse(chunk(" answer")), delay=0.01)
    received: list[str] = []
    async with make_client(server.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        with pytest.raises(APIConnectionError, match="before its final event") as first:
            await collect(stream, received)
        # Regression (6705a48): a failed stream could be iterated again, and re-sent its request.
        with pytest.raises(RuntimeError, match=r"failed earlier \(APIConnectionError\)") as again:
            await collect(stream, received)
    assert again.value.__cause__ is first.value
    assert received == ["partial", " answer"]
    assert stream.text == "partial answer"
    assert first.value.request_id is None
    assert len(server.requests) == 1  # text reached the caller: a retry would repeat it


async def test_eof_inside_an_event_is_a_connection_error(server: LocalServer) -> None:
    """A stream cut inside its final event (no blank line after it) raises APIConnectionError."""
    server.handler = stream_handler(sse(chunk("a")), b"data: " + _data("b", "stop") + b"\n", delay=0.01)
    received: list[str] = []
    async with make_client(server.base_url) as client:
        with pytest.raises(APIConnectionError):
            await collect(client.stream_text(model="m", prompt="p"), received)
    assert received == ["a"]


async def test_empty_stream_is_retried_then_fails(server: LocalServer) -> None:
    """A 200 event stream with no event at all is a connection error, retried since nothing was delivered."""
    server.handler = stream_handler(b": nothing to say\n\n")
    async with make_client(server.base_url, retry=RetryPolicy(max_retries=1, initial_delay=0.001)) as client:
        with pytest.raises(APIConnectionError):
            await collect(client.stream_text(model="m", prompt="p"))
    assert len(server.requests) == 2


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
async def test_drop_mid_stream_is_not_retried(framing: str) -> None:
    """A connection dropped after events reached the caller raises APIConnectionError and is never retried."""
    delivered = asyncio.Event()

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        if framing == "chunked":
            await conn.send(SSE_HEAD_CHUNKED, http_chunk(sse(chunk("Hel"))), http_chunk(sse(chunk("lo"))))
        else:
            await conn.send(SSE_HEAD_UNTIL_CLOSE, sse(chunk("Hel")), sse(chunk("lo")))
        await delivered.wait()  # the caller holds both chunks: only now cut the connection
        conn.abort()

    received: list[str] = []
    async with RawServer(handle) as raw, make_client(raw.base_url, retry=FAST_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        with pytest.raises(APIConnectionError) as info:
            await collect(stream, received, on_chunk=lambda got: _set_when(len(got) == 2, delivered))
    assert received == ["Hel", "lo"]  # never "Hel", "lo", "Hel", ...
    assert raw.connections == 1
    assert len(raw.requests) == 1
    assert info.value.request_id == "req_raw"


async def test_stream_cut_mid_chunk_says_the_connection_closed_before_the_stream_ended() -> None:
    """A chunked stream cut mid-way (as a proxy may) names the cause, not aiohttp's "400, message=..."."""

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(
            SSE_HEAD_CHUNKED, http_chunk(sse(chunk("Hel"))), b"40\r\ndata: {"
        )  # a chunk cut short
        await asyncio.sleep(0.05)
        conn.writer.close()

    received: list[str] = []
    async with RawServer(handle) as raw, make_client(raw.base_url, retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError) as info:
            await collect(client.stream_text(model="m", prompt="p"), received)
    assert received == ["Hel"]
    assert str(info.value).startswith(
        "connection to the API failed: the connection closed before the stream ended"
    )
    assert "400" not in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)


@pytest.mark.parametrize("when", ["before-headers", "after-headers"])
async def test_drop_before_any_event_is_retried(fake: FakeNebulaServer, when: str) -> None:
    """A connection dropped before the first event is retried and the next attempt's stream is delivered."""
    if when == "after-headers":
        fake.drop_stream_after(events=0)  # a 200 event stream's headers, then the connection is cut
    else:
        fake.disconnect_next()
    fake.replies["p"] = "fresh start"
    async with (
        make_client(fake.base_url) as client,
        client.stream_text(model="m", prompt="p") as stream,
    ):
        texts = [piece.text async for piece in stream]
    assert texts == ["fresh", " start"]
    assert stream.retries == 1
    assert len(fake.requests) == 2
    assert fake.requests[0].status == (200 if when == "after-headers" else None)


async def test_error_event_before_first_chunk_is_retried(fake: FakeNebulaServer) -> None:
    """A rate_limit_exceeded event before any chunk is retried, and the retry's text is delivered once."""
    fake.error_event_after(events=0, code="rate_limit_exceeded", message="busy")
    fake.replies["p"] = "second try"
    async with make_client(fake.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        texts = [piece.text async for piece in stream]
    assert texts == ["second", " try"]
    assert stream.text == "second try"
    assert stream.retries == 1
    assert stream.request_id == fake.requests[1].request_id
    assert len(fake.requests) == 2


async def test_error_event_before_first_chunk_exhausts_retries(fake: FakeNebulaServer) -> None:
    """Rate-limit events on every attempt raise RateLimitError after max_retries retries."""
    fake.error_event_after(3, events=0, code="rate_limit_exceeded", message="busy")
    async with make_client(fake.base_url) as client:
        with pytest.raises(RateLimitError) as info:
            await collect(client.stream_text(model="m", prompt="p"))
    assert info.value.status_code == 200
    assert len(fake.requests) == 3


async def test_429_at_stream_open_is_retried(fake: FakeNebulaServer) -> None:
    """A 429 answering the stream request is retried before any event, then streamed normally."""
    fake.fail_next(status=429, code="rate_limit_exceeded", retry_after=0)
    fake.replies["p"] = "ok"
    async with make_client(fake.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        texts = [piece.text async for piece in stream]
    assert texts == ["ok"]
    assert stream.retries == 1


async def test_chunks_in_the_same_read_as_an_error_come_first(server: LocalServer) -> None:
    """Chunks that arrive in the same read as an error event are delivered before the error is raised."""
    server.handler = stream_handler(
        sse(chunk("one"), chunk(" two"), error_body("rate_limit_exceeded", "quota hit"))  # one write
    )
    received: list[str] = []
    async with make_client(server.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        with pytest.raises(RateLimitError):
            await collect(stream, received, enter=True)
    assert received == ["one", " two"]
    assert stream.text == "one two"
    assert len(server.requests) == 1  # text was delivered: the rate limit is not retried


async def test_final_event_in_same_read_as_trailing_garbage_events(server: LocalServer) -> None:
    """Events after the one carrying finish_reason are not delivered: the stream ends at the final event."""
    server.handler = stream_handler(sse(chunk("end", "stop"), chunk("ghost")))
    async with make_client(server.base_url) as client:
        texts = [piece.text async for piece in client.stream_text(model="m", prompt="p")]
    assert texts == ["end"]


async def test_many_events_in_one_write(fake: FakeNebulaServer) -> None:
    """Two thousand events written at once arrive complete and in order."""
    texts = [f" w{i}" for i in range(2000)]  # one token, so one event, each
    fake.replies["p"] = "".join(texts)  # with no token_delay the fake writes the whole stream at once
    async with make_client(fake.base_url) as client:
        got = [piece.text async for piece in client.stream_text(model="m", prompt="p", max_tokens=2000)]
    assert got == texts


async def test_stream_can_be_iterated_after_it_ended(fake: FakeNebulaServer) -> None:
    """Iterating a finished stream again yields nothing and raises nothing."""
    async with make_client(fake.base_url) as client, client.stream_text(model="m", prompt="p") as stream:
        first = [piece.text async for piece in stream]
        again = [piece.text async for piece in stream]
    assert first == ["Hello", ",", " World", "!"]
    assert again == []


async def test_keep_alive_comments_between_events_are_ignored(server: LocalServer) -> None:
    """Keep-alive comments between events do not produce chunks."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        for i in range(3):
            await response.write(b": keep-alive\n\n")
            await response.write(sse(chunk(str(i))))
        await response.write(b": keep-alive\n\n" + sse(chunk("!", "stop")))
        await response.write_eof()
        return response

    server.handler = handler
    async with make_client(server.base_url) as client:
        texts = [piece.text async for piece in client.stream_text(model="m", prompt="p")]
    assert texts == ["0", "1", "2", "!"]


def _set_when(condition: bool, event: asyncio.Event) -> None:
    if condition:
        event.set()


async def test_one_large_event_across_many_reads(fake: FakeNebulaServer) -> None:
    """A single 3 MB event, necessarily split over many reads, arrives whole and quickly."""
    big = "z" * 3_000_000
    fake.replies["p"] = big  # one word: one token, one event
    async with make_client(fake.base_url, retry=NO_RETRY) as client:
        started = time.monotonic()
        texts = await collect(client.stream_text(model="m", prompt="p"))
    assert texts == [big]
    assert time.monotonic() - started < 1.0


async def test_endless_line_is_rejected_not_buffered(server: LocalServer) -> None:
    """A stream line longer than the decoder's limit fails with ServerError instead of growing memory."""
    server.handler = stream_handler(b"data: " + b"x" * (MAX_LINE_BYTES + 1024))
    async with make_client(server.base_url) as client:
        with pytest.raises(ServerError, match="longer than"):
            await collect(client.stream_text(model="m", prompt="p"))
    assert len(server.requests) == 1  # a malformed stream will not get better by asking again


# --- a stream that failed, was cancelled or closed is over for good ------------------------------


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


@pytest.mark.parametrize("delivered", [[], ["Hello"]], ids=["before-first-chunk", "after-a-chunk"])
async def test_cancelled_read_makes_the_stream_fail_without_resending(
    server: LocalServer, delivered: list[str]
) -> None:
    """A read cancelled by wait_for leaves a stream that raises RuntimeError and never sends again."""
    # Regression (6705a48): a cancelled read left the stream usable, and the next read re-sent it.
    server.handler = _stream_then_json(*(sse(chunk(text)) for text in delivered))
    async with make_client(server.base_url, max_connections=1) as client:
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


async def test_stream_cancelled_while_sleeping_before_a_retry_is_failed(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream cancelled at the 429 gate before its retry raises RuntimeError if used again; one request."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    fake.fail_next(status=429, code="rate_limit_exceeded", message="slow down", retry_after=0.5)
    fake.replies["p"] = "next call"
    async with make_client(fake.base_url, max_connections=1) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream))
        await wait_until(lambda: any("rate limited" in r.getMessage() for r in caplog.records))
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


async def test_aclose_from_another_task_during_the_first_read(fake: FakeNebulaServer) -> None:
    """aclose() while another task awaits the first event makes it raise RuntimeError; one request."""
    # Regression (6705a48, close-aware retries): a stream closed under its reader must not retry.
    fake.time_to_first_token = STALL  # headers at once, then no event for STALL s
    received: list[str] = []
    async with make_client(fake.base_url) as client:
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
    async with make_client(fake.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream, received))
        await wait_until(lambda: len(fake.requests) == 1)  # sent; the headers are 0.2 s away
        await stream.aclose()
        [outcome] = await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), 2)
    assert received == []  # nothing may be delivered by a stream closed before it
    assert isinstance(outcome, RuntimeError)
    assert "closed" in str(outcome)
    assert len(fake.requests) == 1


async def test_aclose_while_waiting_for_headers_then_a_drop_is_not_retried(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream closed while its request waits, whose connection then drops, raises RuntimeError at once."""
    # Regression: the drop went through the retry loop (logged, slept) for a stream its caller closed.
    caplog.set_level(logging.WARNING, logger="nebula_async")

    async def drop_later(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        assert request.transport is not None
        request.transport.close()
        return web.Response(text="never sent")

    server.handler = drop_later
    async with make_client(server.base_url, retry=RetryPolicy(max_retries=2, initial_delay=1.0)) as client:
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream))
        await wait_until(lambda: len(server.requests) == 1)
        await stream.aclose()
        with pytest.raises(RuntimeError, match="closed while it was being read"):
            await asyncio.wait_for(reader, 0.9)  # well before the 1 s back-off a retry would sleep
    assert len(server.requests) == 1
    assert [r.getMessage() for r in caplog.records] == []


@CALLS
async def test_client_closed_during_a_retry_sleep_says_so(
    fake: FakeNebulaServer, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    """client.aclose() during a call's sleep before a retry ends it: "closed while the call was running"."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    fake.fail_next(status=503, code="overloaded", retry_after=0.3)
    client = make_client(fake.base_url)
    caller = asyncio.ensure_future(call(client))
    await wait_until(lambda: any("retrying in" in r.getMessage() for r in caplog.records))
    await client.aclose()
    with pytest.raises(RuntimeError, match="this client was closed while the call was running"):
        await asyncio.wait_for(caller, 2)
    assert len(fake.requests) == 1


async def test_aclose_before_every_read_chunk_was_delivered_stops_the_stream(server: LocalServer) -> None:
    """Closing after the final event was read but before its chunks were delivered: iterating raises."""
    # Regression: such a stream counted as ended, so it stopped silently with part of the text.
    server.handler = stream_handler(events("a", "b", "c"))  # one read: the final event is read with the first
    async with make_client(server.base_url, max_connections=1) as client:
        stream = client.stream_text(model="m", prompt="p")
        first = await anext(stream)
        await stream.aclose()
        with pytest.raises(RuntimeError, match="closed before its end"):
            await anext(stream)
        again = client.stream_text(model="m", prompt="p")  # the only connection went back to the pool
        assert await asyncio.wait_for(collect(again), 2) == ["a", "b", "c"]
    assert first.text == "a"
    assert (stream.text, stream.finish_reason) == ("a", None)


# --- SSE edges: a byte order mark, "error": null (how streams end: test_stream_endings.py) ---


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
    # Regression (review of 6705a48): ``"error": null`` is not an error.

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
