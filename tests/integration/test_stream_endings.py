"""How a stream ends, over real sockets: [DONE], keep-alive events with empty data, and usage.

Servers end streams in more ways than the API reference shows: a ``data: [DONE]`` line with or
without a ``finish_reason`` before it, keep-alive events whose data is empty, token counts in the
final event. Each is written byte for byte by a hand-rolled aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from nebula_async import APIConnectionError, APITimeoutError, TextChunk, Timeout, Usage
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import NO_RETRY, sse
from tests.integration._support import (
    chunk,
    collect,
    events,
    make_client,
    open_stream,
    stream_handler,
)

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_done_without_a_finish_reason_ends_the_stream_cleanly(server: LocalServer) -> None:
    """``data: [DONE]`` after events without a finish_reason ends iteration; finish_reason stays None."""
    server.handler = stream_handler(sse(chunk("Hel"), chunk("lo")) + b"data: [DONE]\n\n")
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        received = await collect(stream, enter=True)
    assert received == ["Hel", "lo"]
    assert stream.text == "Hello"
    assert stream.finish_reason is None
    assert stream.usage is None
    assert len(server.requests) == 1


async def test_done_split_from_the_text_across_reads_ends_the_stream(server: LocalServer) -> None:
    """A [DONE] that arrives in a later network read than the text still ends the stream cleanly."""
    server.handler = stream_handler(sse(chunk("a")), b"data: [DO", b"NE]\n\n", delay=0.02)
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream) == ["a"]
    assert stream.finish_reason is None


async def test_done_as_the_only_event_is_an_empty_stream(server: LocalServer) -> None:
    """A stream whose first event is [DONE] yields nothing and raises nothing."""
    server.handler = stream_handler(b": comment\n\ndata: [DONE]\n\n")
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream, enter=True) == []
        assert await stream.next_chunks() == []
    assert stream.text == ""
    assert stream.finish_reason is None


async def test_done_hands_the_connection_back_to_the_pool(server: LocalServer) -> None:
    """After a [DONE]-ended stream, a second call reuses the only pooled connection at once."""
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        response = await open_stream(request)
        await response.write(sse(chunk("x")) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    server.handler = handler
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        for _ in range(3):
            assert await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p")), 2) == ["x"]
    assert len(peers) == 3
    assert len(set(peers)) == 1


async def test_eof_without_done_or_final_event_still_raises(server: LocalServer) -> None:
    """A body that ends with neither [DONE] nor a finish_reason raises APIConnectionError."""
    server.handler = stream_handler(sse(chunk("Hel")))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        received: list[str] = []
        with pytest.raises(APIConnectionError, match="before its final event"):
            await collect(client.stream_text(model="m", prompt="p"), received)
    assert received == ["Hel"]


@pytest.mark.parametrize(
    "keep_alive",
    [b"data:\n\n", b"data\n\n", b"data: \n\n", b"data:\r\n\r\n", b"event: message\ndata:\n\n"],
    ids=["data-colon", "bare-data", "data-space", "crlf", "typed"],
)
async def test_an_event_with_empty_data_is_a_keep_alive(server: LocalServer, keep_alive: bytes) -> None:
    """An event whose data is empty is skipped, as a comment is, before, between and after chunks."""
    body = keep_alive + sse(chunk("a")) + keep_alive + keep_alive + events("b")
    server.handler = stream_handler(body[:7], body[7:])
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream) == ["a", "b"]
    assert stream.finish_reason == "stop"


async def test_empty_data_keep_alives_do_not_reset_stream_idle(server: LocalServer) -> None:
    """A stream that only sends empty-data keep-alives still times out after stream_idle."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(sse(chunk("a")))
        for _ in range(100):  # bounded: about 2 s, far past the limit
            await asyncio.sleep(0.02)
            await response.write(b"data:\n\n")
        return response

    server.handler = handler
    timeout = Timeout(stream_idle=0.3)
    async with make_client(server.base_url, retry=NO_RETRY, timeout=timeout) as client:
        received: list[str] = []
        started = asyncio.get_running_loop().time()
        with pytest.raises(APITimeoutError, match=r"no data event in the stream for 0\.3 s"):
            await collect(client.stream_text(model="m", prompt="p"), received)
        elapsed = asyncio.get_running_loop().time() - started
    assert received == ["a"]
    assert elapsed < 1.5


async def test_usage_in_the_final_event_is_the_streams_usage(server: LocalServer) -> None:
    """Token counts in the final event become stream.usage and the last chunk's usage."""
    final = {"text": "!", "finish_reason": "stop", "usage": USAGE}
    server.handler = stream_handler(sse(chunk("Hi"), final))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        async with stream:
            pieces = [piece async for piece in stream]
            assert stream.usage == Usage(3, 2, 5)
    assert pieces == [TextChunk("Hi"), TextChunk("!", "stop", Usage(3, 2, 5))]


async def test_usage_is_known_only_once_its_chunk_is_delivered(server: LocalServer) -> None:
    """stream.usage is None until the chunk that carried it was delivered, like finish_reason."""
    final = {"text": "!", "finish_reason": "stop", "usage": USAGE}
    server.handler = stream_handler(sse(chunk("Hi"), final))  # both arrive in one read
    async with (
        make_client(server.base_url, retry=NO_RETRY) as client,
        client.stream_text(model="m", prompt="p") as stream,
    ):
        await stream.__anext__()
        assert (stream.usage, stream.finish_reason) == (None, None)
        await stream.__anext__()
        assert (stream.usage, stream.finish_reason) == (Usage(3, 2, 5), "stop")


async def test_usage_null_is_no_usage(server: LocalServer) -> None:
    """``"usage": null`` in an event is the same as no usage."""
    server.handler = stream_handler(sse({"text": "a", "finish_reason": "stop", "usage": None}))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream) == ["a"]
    assert stream.usage is None


@pytest.mark.parametrize(
    "usage",
    [{"prompt_tokens": 3, "completion_tokens": 2}, {**USAGE, "total_tokens": "5"}, [1, 2, 3], "five"],
    ids=["missing-field", "string-count", "list", "string"],
)
@pytest.mark.parametrize("extra", [{}, {"error": None}], ids=["plain", "error-null"])
async def test_malformed_usage_is_dropped_and_the_text_kept(
    server: LocalServer, usage: object, extra: dict[str, object]
) -> None:
    """A usage that is not three integer counts leaves usage None and costs no text or finish_reason."""
    # "error": null takes the general converter's path, which must drop a bad usage just the same.
    final = {"text": "lo", "finish_reason": "stop", "usage": usage, **extra}
    server.handler = stream_handler(sse(chunk("Hel"), final))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream) == ["Hel", "lo"]
    assert (stream.finish_reason, stream.usage) == ("stop", None)


async def test_usage_beside_error_null_is_kept(server: LocalServer) -> None:
    """Token counts in an event that also says "error": null become the stream's usage."""
    final = {"text": "a", "finish_reason": "stop", "usage": USAGE, "error": None}
    server.handler = stream_handler(sse(final))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert await collect(stream) == ["a"]
    assert stream.usage == Usage(3, 2, 5)


async def test_stream_usage_equals_the_non_streamed_usage(fake: FakeNebulaServer) -> None:
    """Against a server that sends usage in its final event, stream.usage equals generate_text's usage."""
    fake.stream_usage = True
    async with make_client(fake.base_url) as client:
        whole = await client.generate_text(model="m", prompt="Tell me a story", max_tokens=12)
        stream = client.stream_text(model="m", prompt="Tell me a story", max_tokens=12)
        text = "".join(await collect(stream, enter=True))
    assert text == whole.text
    assert stream.usage == whole.usage
    assert whole.usage.completion_tokens == 12
