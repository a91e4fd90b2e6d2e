"""What FakeNebulaServer writes: replies= and reply=, its made-up text, max_tokens, stop, finish_reason."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from nebula_async import GenerateRequest, ServerError
from nebula_async.testing import FakeNebulaServer, default_reply, tokenize
from tests.testing._support import (
    FAKE_KEY,
    FIVE_WORDS,
    LONG_REPLY,
    MODEL,
    body,
    both,
    finish_reasons,
    joined,
    post,
    sdk,
    send,
)

# --- replies and reply functions ------------------------------------------------------------------


async def test_replies_map_prompts_and_others_are_made_up(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """A prompt in replies= gets its text; any other prompt gets the made-up default."""
    assert (await send(http, fake, body(prompt="five"))).success()["text"] == FIVE_WORDS
    other = (await send(http, fake, body(prompt="five!"))).success()["text"]
    assert other == default_reply(MODEL, "five!", 0.7, 1.0)


async def test_reply_callable_receives_the_request_fields(http: aiohttp.ClientSession) -> None:
    """reply= gets a GenerateRequest with the request's fields, None for those left out."""
    seen: list[GenerateRequest] = []

    def reply(request: GenerateRequest) -> str:
        seen.append(request)
        return f"echo {request.prompt}"

    async with FakeNebulaServer(reply=reply, replies={"scripted": "from the map"}) as server:
        full = body(prompt="full", max_tokens=5, temperature=0.3, top_p=0.9, stop=["x", "yz"], stream=True)
        events = (await send(http, server, full)).events()
        data = (await send(http, server, body(prompt="bare", temperature=1))).success()
        scripted = (await send(http, server, body(prompt="scripted"))).success()
    assert joined(events) == "echo full"
    assert data["text"] == "echo bare"
    assert scripted["text"] == "from the map"  # replies= wins; reply is not called
    assert seen == [
        GenerateRequest(MODEL, "full", max_tokens=5, temperature=0.3, top_p=0.9, stop=["x", "yz"]),
        GenerateRequest(MODEL, "bare", temperature=1.0),
    ]


async def test_reply_callable_that_fails_is_a_500_and_the_server_keeps_serving(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply function that raises (or returns a non-str) is a 500 server_error; later requests succeed."""

    def reply(request: GenerateRequest) -> Any:
        if request.prompt == "raise":
            raise ValueError("broken reply")
        if request.prompt == "bytes":
            return b"not a str"
        return "fine"

    caplog.set_level(logging.ERROR, logger="nebula_async.testing")
    async with FakeNebulaServer(reply=reply) as server:
        for prompt in ("raise", "bytes"):
            for stream in (False, True):
                answer = await send(http, server, body(prompt=prompt, stream=stream))
                assert answer.status == 500
                assert answer.error()["code"] == "server_error"
                assert answer.headers["x-request-id"]
        assert (await send(http, server, body(prompt="ok"))).success()["text"] == "fine"
        async with sdk(server, max_retries=0) as client:
            with pytest.raises(ServerError) as caught:
                await client.generate_text(model=MODEL, prompt="raise")
            assert (await client.generate_text(model=MODEL, prompt="ok")).text == "fine"
    assert (caught.value.code, caught.value.status_code) == ("server_error", 500)
    assert "ValueError: broken reply" in caught.value.message  # the user's own error, named
    assert len([r for r in caplog.records if r.name == "nebula_async.testing"]) == 5


def test_a_non_str_reply_raises_at_construction() -> None:
    """replies={"hi": 5} raises TypeError naming the bad entry."""
    # Regression: replies= was not checked, and a non-str reply broke the answer.
    with pytest.raises(TypeError, match="replies must map prompt strings to reply strings"):
        FakeNebulaServer(replies={"hi": 5})  # type: ignore[dict-item]  # deliberately not a str


def test_a_non_str_reply_added_later_gets_a_json_500() -> None:
    """A non-str put in server.replies later gets a JSON server_error with x-request-id, not plain text."""
    # Regression: a non-str reply was not caught: no JSON envelope, no x-request-id.
    with FakeNebulaServer(api_keys=[FAKE_KEY]).run_in_thread() as server:
        server.replies["hi"] = 5  # type: ignore[assignment]  # deliberately not a str
        status, headers, answer = post(server.base_url, {"model": MODEL, "prompt": "hi"})
    assert status == 500
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "server_error"
    assert "TypeError" in answer["error"]["message"]
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-request-id"].startswith("req_")


# --- determinism ----------------------------------------------------------------------------------


async def test_same_request_gets_the_same_text_from_two_servers(http: aiohttp.ClientSession) -> None:
    """The same request gets the same text twice, and from a second server instance too."""
    request = body(prompt="Tell me about determinism", temperature=0.9)
    async with FakeNebulaServer() as first, FakeNebulaServer() as second:
        texts = [
            (await send(http, first, request)).success()["text"],
            (await send(http, first, request)).success()["text"],
            (await send(http, second, request)).success()["text"],
        ]
    assert texts[0]
    assert texts == [texts[0]] * 3


async def test_default_text_follows_prompt_model_and_sampling(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """The made-up text is default_reply with the documented defaults; other inputs give other texts."""

    async def text(**fields: Any) -> str:
        return str((await send(http, fake, body(**fields))).success()["text"])

    base = await text(prompt="alpha")
    assert base == default_reply(MODEL, "alpha", 0.7, 1.0)
    assert await text(prompt="alpha", temperature=0.7, top_p=1) == base
    others = [
        await text(prompt="beta"),
        await text(prompt="alpha", model="Qwen-QwQ-32B"),
        await text(prompt="alpha", temperature=0.2),
        await text(prompt="alpha", top_p=0.5),
    ]
    assert base not in others
    assert len(set(others)) == len(others)


# --- max_tokens, stop and finish_reason -----------------------------------------------------------


async def test_max_tokens_cuts_with_finish_reason_length(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """max_tokens below the reply's length gives that many tokens and finish_reason "length"."""
    data, events = await both(http, fake, body(prompt="five", max_tokens=3))
    assert data["text"] == "one two three"
    assert data["usage"]["completion_tokens"] == 3
    assert finish_reasons(events) == [None, None, "length"]


@pytest.mark.parametrize(
    ("stop", "text", "completion_tokens"),
    [
        ([" three"], "one two", 3),
        (["o th"], "one tw", 3),
        (["four", "two"], "one ", 2),
        (["one"], "", 1),
        (["absent"], FIVE_WORDS, 5),
    ],
)
async def test_stop_strings_end_the_text_before_them(
    http: aiohttp.ClientSession,
    fake: FakeNebulaServer,
    stop: list[str],
    text: str,
    completion_tokens: int,
) -> None:
    """A stop string ends the text just before it, with finish_reason "stop"; it is never included."""
    data, events = await both(http, fake, body(prompt="five", stop=stop))
    assert data["text"] == text
    assert data["usage"]["completion_tokens"] == completion_tokens
    assert finish_reasons(events)[-1] == "stop"
    assert not any(s in data["text"] for s in stop)


@pytest.mark.parametrize("max_tokens", [None, 5, 6, 1000])
async def test_finish_reason_is_stop_when_the_reply_ends(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, max_tokens: int | None
) -> None:
    """A reply that ends within max_tokens (exactly at it, too) finishes with "stop"."""
    data, events = await both(http, fake, body(prompt="five", max_tokens=max_tokens))
    assert data["text"] == FIVE_WORDS
    assert data["usage"]["completion_tokens"] == 5
    assert finish_reasons(events)[-1] == "stop"


async def test_default_max_tokens_is_256(http: aiohttp.ClientSession, fake: FakeNebulaServer) -> None:
    """Without max_tokens, a 300-token reply is cut at the documented default of 256 tokens."""
    data, events = await both(http, fake, body(prompt="long"))
    assert data["text"] == "".join(tokenize(LONG_REPLY)[:256])
    assert data["usage"]["completion_tokens"] == 256
    assert len(events) == 256
    assert finish_reasons(events)[-1] == "length"
