"""FakeNebulaServer's streams on real sockets: the SSE bytes, one event per token, usage, pacing."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nebula_async import APITimeoutError, TextChunk, Timeout
from nebula_async.testing import FakeModel, FakeNebulaServer, tokenize
from tests.helpers import NO_RETRY
from tests.testing._support import (
    FAKE_KEY,
    FIVE_WORDS,
    MODEL,
    REPLIES,
    UNICODE_REPLY,
    body,
    both,
    data_line_times,
    drain,
    finish_reasons,
    joined,
    parse_events,
    read_broken_stream,
    sdk,
    send,
)

# --- events ---------------------------------------------------------------------------------------


async def test_stream_bytes_are_exactly_the_reference_shape(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """A stream is text/event-stream, one `data: {"text": ..., "finish_reason": ...}` event per token.

    Without stream_usage (the default) the final event has those two keys only, as in the reference.
    """
    answer = await send(http, fake, body(stream=True))
    assert answer.status == 200
    assert answer.content_type == "text/event-stream"
    assert answer.headers["x-request-id"]
    assert answer.raw == (
        b'data: {"text": "Hello", "finish_reason": null}\n\n'
        b'data: {"text": ",", "finish_reason": null}\n\n'
        b'data: {"text": " World", "finish_reason": null}\n\n'
        b'data: {"text": "!", "finish_reason": "stop"}\n\n'
    )


@pytest.mark.parametrize("prompt", ["five", "long", "unicode", "Say hi"])
async def test_stream_sends_one_event_per_token_and_finish_reason_only_last(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, prompt: str
) -> None:
    """With replies=, the events are tokenize(reply) and only the last carries finish_reason."""
    reply = fake.replies[prompt]
    events = (await send(http, fake, body(prompt=prompt, max_tokens=1000, stream=True))).events()
    assert [e["text"] for e in events] == tokenize(reply)
    assert finish_reasons(events) == [None] * (len(events) - 1) + ["stop"]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt": "An unscripted prompt"},
        {"prompt": "An unscripted prompt", "max_tokens": 7},
        {"prompt": "An unscripted prompt", "temperature": 0.0, "top_p": 0.5},
        {"prompt": "An unscripted prompt", "stop": ["."]},
        {"prompt": "five", "stop": [" three"]},
        {"prompt": "five", "stop": ["o th"]},  # spans two tokens
        {"prompt": "five", "stop": ["one"]},  # nothing before it: an empty text
        {"prompt": "five", "stop": ["four", " tw"], "max_tokens": 4},
        {"prompt": "five", "stop": ["five"], "max_tokens": 2},  # max_tokens comes first
        {"prompt": "long", "max_tokens": 40},
        {"prompt": "unicode"},
        {"prompt": "unicode", "stop": ["é"]},
        {"prompt": "unicode", "max_tokens": 4},
    ],
)
async def test_stream_concatenates_to_the_non_streamed_text(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, request_fields: dict[str, Any]
) -> None:
    """A stream's chunks join to exactly the text of the same request without streaming."""
    data, events = await both(http, fake, body(**request_fields))
    assert joined(events) == data["text"]
    assert finish_reasons(events)[:-1] == [None] * (len(events) - 1)
    assert finish_reasons(events)[-1] in ("stop", "length")
    if "stop" not in request_fields:
        assert len(events) == max(1, data["usage"]["completion_tokens"])


async def test_stream_error_answers_are_json_envelopes(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """A stream request that fails is answered with the JSON error envelope, not an event stream."""
    answer = await send(http, fake, body(model="gpt-5", stream=True))
    assert answer.status == 404
    assert answer.error()["code"] == "model_not_found"
    assert answer.headers["x-request-id"]


async def test_sdk_stream_yields_one_chunk_per_token(fake: FakeNebulaServer) -> None:
    """The SDK's TextStream yields tokenize(reply) as TextChunks, the last with the finish_reason."""
    async with sdk(fake) as client, client.stream_text(model=MODEL, prompt="unicode") as stream:
        chunks = [chunk async for chunk in stream]
    tokens = tokenize(UNICODE_REPLY)
    assert chunks == [TextChunk(t) for t in tokens[:-1]] + [TextChunk(tokens[-1], "stop")]
    assert stream.text == UNICODE_REPLY
    assert stream.request_id == fake.requests[-1].request_id


# --- usage in the final event ---------------------------------------------------------------------


@pytest.fixture
async def counting() -> AsyncIterator[FakeNebulaServer]:
    """Like ``fake``, with stream_usage=True."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], replies=REPLIES, stream_usage=True) as server:
        yield server


async def test_stream_usage_bytes_are_the_final_event_plus_usage(
    http: aiohttp.ClientSession, counting: FakeNebulaServer
) -> None:
    """stream_usage=True adds exactly `"usage": {...}` to the final event; the others keep two keys."""
    answer = await send(http, counting, body(stream=True))
    assert answer.raw == (
        b'data: {"text": "Hello", "finish_reason": null}\n\n'
        b'data: {"text": ",", "finish_reason": null}\n\n'
        b'data: {"text": " World", "finish_reason": null}\n\n'
        b'data: {"text": "!", "finish_reason": "stop", '
        b'"usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}}\n\n'
    )


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt": "An unscripted prompt"},
        {"prompt": "long"},  # cut at the default 256 tokens
        {"prompt": "five", "max_tokens": 3},
        {"prompt": "five", "stop": ["o th"]},  # the stop string's token counts, its text is cut
        {"prompt": "five", "stop": ["one"]},  # an empty text, one token
        {"prompt": "unicode", "temperature": 0.1},
    ],
)
async def test_stream_usage_equals_the_non_streamed_usage(
    http: aiohttp.ClientSession, counting: FakeNebulaServer, request_fields: dict[str, Any]
) -> None:
    """The final event's usage has the counts of the same request's non-streamed answer."""
    data, events = await both(http, counting, body(**request_fields))
    assert events[-1]["usage"] == data["usage"]
    assert all("usage" not in e for e in events[:-1])
    assert joined(events) == data["text"]


async def test_stream_usage_with_no_room_left_counts_zero_completion_tokens(
    http: aiohttp.ClientSession,
) -> None:
    """A prompt that fills the context gets one empty final event with completion_tokens 0."""
    async with FakeNebulaServer(models=[FakeModel("tiny", context_length=5)], stream_usage=True) as server:
        events = (await send(http, server, body(model="tiny", prompt=FIVE_WORDS, stream=True))).events()
    usage = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    assert events == [{"text": "", "finish_reason": "length", "usage": usage}]


async def test_stream_usage_is_sent_by_a_paced_stream_and_can_be_switched(
    http: aiohttp.ClientSession,
) -> None:
    """A paced stream's final event carries usage too; stream_usage set on a running server applies."""
    async with FakeNebulaServer(replies={"p": "a b c"}, token_delay=0.001, stream_usage=True) as server:
        paced = (await send(http, server, body(prompt="p", stream=True))).events()
        server.stream_usage = False
        plain = (await send(http, server, body(prompt="p", stream=True))).events()
    assert paced[-1] == {
        "text": " c",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
    assert plain[-1] == {"text": " c", "finish_reason": "stop"}


async def test_stream_usage_never_comes_with_a_stream_fault(
    http: aiohttp.ClientSession, counting: FakeNebulaServer
) -> None:
    """A dropped stream or one ended by an error event stops before the final event: no usage is sent."""
    counting.drop_stream_after(events=2)
    counting.error_event_after(events=2)
    request = body(prompt="five", stream=True)
    dropped = parse_events(await read_broken_stream(http, counting, request))
    errored = parse_events((await send(http, counting, request)).raw)
    assert [list(e) for e in dropped] == [["text", "finish_reason"]] * 2
    assert [list(e) for e in errored] == [["text", "finish_reason"]] * 2 + [["status", "error"]]


# --- timing ---------------------------------------------------------------------------------------


async def test_time_to_first_token_delays_the_first_event_and_the_answer(
    http: aiohttp.ClientSession,
) -> None:
    """time_to_first_token=0.2 holds back a stream's first event and a plain answer by at least that."""
    async with FakeNebulaServer(time_to_first_token=0.2) as server:
        started, arrivals = await data_line_times(http, server, body())
        assert arrivals
        assert arrivals[0] - started >= 0.18
        started = time.perf_counter()
        assert (await send(http, server, body(max_tokens=1))).status == 200
        assert time.perf_counter() - started >= 0.18


async def test_token_delay_spaces_the_events(http: aiohttp.ClientSession) -> None:
    """token_delay=0.05 spaces the events by at least that; a plain answer takes the whole stream's time."""
    async with FakeNebulaServer(token_delay=0.05, replies={"p": "a b c d"}) as server:
        _, arrivals = await data_line_times(http, server, body(prompt="p"))
        assert len(arrivals) == 4
        assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(arrivals))
        started = time.perf_counter()
        assert (await send(http, server, body(prompt="p"))).status == 200
        assert time.perf_counter() - started >= 0.14


async def test_changing_the_delays_while_running_takes_effect(http: aiohttp.ClientSession) -> None:
    """Setting time_to_first_token and token_delay on a running server changes its next answers."""
    async with FakeNebulaServer(replies={"p": "a b c"}) as server:
        server.time_to_first_token = 0.1
        server.token_delay = 0.05
        started, arrivals = await data_line_times(http, server, body(prompt="p"))
    assert arrivals[0] - started >= 0.09
    assert arrivals[2] - arrivals[0] >= 0.09


async def test_sdk_read_timeout_shorter_than_the_first_token_times_out() -> None:
    """An SDK call whose read timeout is shorter than time_to_first_token raises APITimeoutError."""
    async with (
        FakeNebulaServer(time_to_first_token=0.5) as server,
        sdk(server, timeout=Timeout(read=0.1), retry=NO_RETRY) as client,
    ):
        with pytest.raises(APITimeoutError):
            await client.generate_text(model=MODEL, prompt="hi")
        with pytest.raises(APITimeoutError):
            await drain(client.stream_text(model=MODEL, prompt="hi"), [])


async def test_sdk_stream_idle_shorter_than_the_token_delay_times_out() -> None:
    """An SDK stream whose stream_idle is shorter than token_delay raises APITimeoutError after one chunk."""
    seen: list[TextChunk] = []
    async with (
        FakeNebulaServer(token_delay=0.5, replies={"p": "a b c"}) as server,
        sdk(server, timeout=Timeout(stream_idle=0.1), retry=NO_RETRY) as client,
    ):
        with pytest.raises(APITimeoutError):
            await drain(client.stream_text(model=MODEL, prompt="p"), seen)
    assert seen == [TextChunk("a")]
