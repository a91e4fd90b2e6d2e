"""FakeNebulaServer's protocol on real sockets: envelopes, SSE, validation, models, auth, limits, timing.

Most tests speak raw aiohttp to the server, so the server is checked independently of the SDK;
the SDK appears only where the point is that it maps the server's answer to the right class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from nebula_async import (
    APITimeoutError,
    AsyncNebulaClient,
    AuthenticationError,
    ContextLengthExceededError,
    GenerateRequest,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextChunk,
    TextStream,
    Timeout,
    Usage,
)
from nebula_async.testing import (
    DEFAULT_API_KEY,
    FakeModel,
    FakeNebulaServer,
    count_tokens,
    default_reply,
    tokenize,
)
from tests.testing._support import REFERENCE_MODELS

MODEL = "Llama3.3-70B"
KEY = "sk-protocol-test-key"
PATH = "/text/generate"
NO_RETRY = RetryPolicy(max_retries=0)
UNICODE_REPLY = "Grüße, 世界! naïve café 😀 — ok\n\tdone"
LONG_REPLY = " ".join(f"w{i}" for i in range(300))  # 300 tokens: "w0", " w1", ...
FIVE_WORDS = "one two three four five"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One raw HTTP answer: status, headers, parsed Content-Type and the body's bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    content_type: str
    raw: bytes

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.raw)

    def success(self) -> dict[str, Any]:
        """Return ``data`` after checking the success envelope's exact shape."""
        assert (self.status, self.content_type) == (200, "application/json"), self.raw
        body = self.json()
        assert set(body) == {"status", "data"}
        assert body["status"] == "success"
        data = body["data"]
        assert set(data) == {"text", "usage"}
        assert isinstance(data["text"], str)
        assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert all(type(v) is int for v in data["usage"].values())
        return dict(data)

    def error(self) -> dict[str, Any]:
        """Return ``error`` after checking the error envelope's exact shape."""
        assert self.content_type == "application/json", self.raw
        body = self.json()
        assert set(body) == {"status", "error"}
        assert body["status"] == "error"
        error = body["error"]
        assert {"code", "message"} <= set(error) <= {"code", "message", "details"}
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]
        return dict(error)

    def events(self) -> list[dict[str, Any]]:
        """Return the stream's events after checking each one's exact bytes against the reference."""
        assert (self.status, self.content_type) == (200, "text/event-stream"), self.raw
        assert self.raw.endswith(b"\n\n")
        parts = self.raw[:-2].split(b"\n\n")
        events = []
        for part in parts:
            assert part.startswith(b"data: ")
            event = json.loads(part[len(b"data: ") :])
            assert list(event) == ["text", "finish_reason"]
            # The reference's byte shape: `data: {"text": "...", "finish_reason": null}` then a blank line.
            assert part == b"data: " + json.dumps(event).encode()
            events.append(event)
        return events


def body(**fields: Any) -> dict[str, Any]:
    """Return a valid request body with ``fields`` added or replaced."""
    return {"model": MODEL, "prompt": "Say hi", **fields}


async def send(
    http: aiohttp.ClientSession,
    server: FakeNebulaServer,
    payload: object = b"",
    *,
    key: str | None = KEY,
    content_type: str | None = "application/json",
    method: str = "POST",
    path: str = PATH,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Send ``payload`` (bytes as is, anything else as JSON) and return the whole answer."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent: dict[str, str] = {}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if content_type is not None:
        sent["Content-Type"] = content_type
    sent.update(headers or {})
    skip = () if content_type is not None else ("Content-Type",)
    async with http.request(
        method, server.base_url + path, data=data, headers=sent, skip_auto_headers=skip
    ) as response:
        raw = await response.read()
        return Answer(response.status, response.headers, response.content_type, raw)


async def both(
    http: aiohttp.ClientSession, server: FakeNebulaServer, request: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send ``request`` without and then with streaming; return the success data and the events."""
    data = (await send(http, server, request)).success()
    events = (await send(http, server, {**request, "stream": True})).events()
    return data, events


def joined(events: list[dict[str, Any]]) -> str:
    """Return the events' texts concatenated."""
    return "".join(e["text"] for e in events)


def finish_reasons(events: list[dict[str, Any]]) -> list[str | None]:
    """Return each event's finish_reason, in order."""
    return [e["finish_reason"] for e in events]


def sdk(server: FakeNebulaServer, **kwargs: Any) -> AsyncNebulaClient:
    """Return an SDK client for ``server``, with its key unless one is given."""
    kwargs.setdefault("api_key", server.api_key)
    return AsyncNebulaClient(base_url=server.base_url, **kwargs)


async def data_line_times(
    http: aiohttp.ClientSession, server: FakeNebulaServer, request: dict[str, Any]
) -> tuple[float, list[float]]:
    """Stream ``request``; return when it was sent and when each ``data:`` line arrived (perf_counter)."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with http.post(
        server.base_url + PATH, data=json.dumps({**request, "stream": True}), headers=headers
    ) as response:
        assert response.status == 200
        while line := await response.content.readline():
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
    return started, arrivals


async def drain(stream: TextStream, into: list[TextChunk]) -> None:
    """Read ``stream`` to its end inside its ``async with``, appending each chunk to ``into``."""
    async with stream:
        async for chunk in stream:
            into.append(chunk)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw aiohttp session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer with default settings and four scripted replies, in the test's loop."""
    replies = {"Say hi": "Hello, World!", "five": FIVE_WORDS, "long": LONG_REPLY, "unicode": UNICODE_REPLY}
    async with FakeNebulaServer(replies=replies) as server:
        yield server


# --- envelopes and headers ---------------------------------------------------------------------------


async def test_success_envelope_is_exactly_the_reference_shape(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """A valid request gets exactly the documented success envelope, as application/json."""
    answer = await send(http, fake, body())
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.json() == {
        "status": "success",
        "data": {
            "text": "Hello, World!",
            "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
        },
    }
    assert re.fullmatch(r"req_\w+", answer.headers["x-request-id"])


async def test_every_kind_of_answer_has_a_unique_request_id(http: aiohttp.ClientSession) -> None:
    """Successes, streams, each error kind, 404 paths and 405 methods all carry distinct x-request-ids."""

    def reply(request: GenerateRequest) -> str:
        if request.prompt == "boom":
            raise RuntimeError("reply failed")
        return "fine"

    async with (
        FakeNebulaServer(models=[FakeModel("tiny", context_length=2)], reply=reply) as main,
        FakeNebulaServer(requests_per_second=1) as limited,
        FakeNebulaServer(token_quota=1) as poor,
    ):
        answers = [
            await send(http, main, body()),
            await send(http, main, body(stream=True)),
            await send(http, main, body(max_tokens=0)),
            await send(http, main, b"{not json"),
            await send(http, main, body(), content_type="text/plain"),
            await send(http, main, body(), key=None),
            await send(http, main, body(model="gpt-4")),
            await send(http, main, body(model="tiny", prompt="one two three")),
            await send(http, main, body(prompt="boom")),
            await send(http, main, body(), path="/nowhere"),
            await send(http, main, method="GET"),
            await send(http, limited, body()),
            await send(http, limited, body()),  # over requests_per_second
            await send(http, poor, body()),
            await send(http, poor, body()),  # over token_quota
        ]
    codes = [a.error()["code"] if a.status >= 400 else a.status for a in answers]
    assert codes == [
        200,
        200,
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "invalid_api_key",
        "model_not_found",
        "context_length_exceeded",
        "server_error",
        "not_found",
        "method_not_allowed",
        200,
        "rate_limit_exceeded",
        200,
        "insufficient_quota",
    ]
    ids = [a.headers.get("x-request-id") for a in answers]
    assert all(ids)
    assert len(set(ids)) == len(ids)


async def test_request_id_matches_the_recorded_request_and_the_sdk_result(fake: FakeNebulaServer) -> None:
    """The SDK's TextGeneration.request_id is the server's x-request-id for that request."""
    async with sdk(fake) as client:
        result = await client.generate_text(model=MODEL, prompt="Say hi")
    assert result.request_id == fake.requests[-1].request_id
    assert result.text == "Hello, World!"
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=4, total_tokens=6)


@pytest.mark.parametrize(
    ("prompt", "extra"),
    [
        ("Write a hello world program in Python", {}),
        ("Grüße aus 世界, ça va?", {}),
        ("   spaces   around   ", {"temperature": 1.3}),
        ("Count to ten", {"max_tokens": 3}),
        ("x", {"top_p": 0.1}),
    ],
)
async def test_usage_counts_tokens_of_prompt_and_text(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, prompt: str, extra: dict[str, Any]
) -> None:
    """usage counts the prompt's and the text's tokens with count_tokens, and total is their sum."""
    data = (await send(http, fake, body(prompt=prompt, **extra))).success()
    usage = data["usage"]
    assert usage["prompt_tokens"] == count_tokens(prompt)
    assert usage["completion_tokens"] == count_tokens(data["text"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if "max_tokens" in extra:
        assert usage["completion_tokens"] == extra["max_tokens"]


# --- streaming ---------------------------------------------------------------------------------------


async def test_stream_bytes_are_exactly_the_reference_shape(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """A stream is text/event-stream, one `data: {"text": ..., "finish_reason": ...}` event per token."""
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
    answer = await send(http, fake, body(model="gpt-4", stream=True))
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


# --- determinism -------------------------------------------------------------------------------------


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


# --- max_tokens, stop and finish_reason ---------------------------------------------------------------


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


# --- validation over HTTP -----------------------------------------------------------------------------

_MISSING = "<missing>"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", _MISSING),
        ("model", None),
        ("model", ""),
        ("model", 7),
        ("prompt", _MISSING),
        ("prompt", ""),
        ("prompt", ["Say", "hi"]),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 1.5),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("temperature", False),
        ("top_p", 1.01),
        ("top_p", -1),
        ("top_p", [0.5]),
        ("stop", "\n"),
        ("stop", [""]),
        ("stop", ["ok", 3]),
        ("stop", {"a": "b"}),
        ("stream", "yes"),
        ("stream", 1),
    ],
)
async def test_each_bad_field_is_a_400_naming_it(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, field: str, value: object
) -> None:
    """A bad or missing field is a 400 invalid_request whose details name exactly that field."""
    request = body()
    if value == _MISSING:
        del request[field]
    else:
        request[field] = value
    answer = await send(http, fake, request)
    assert answer.status == 400
    error = answer.error()
    assert error["code"] == "invalid_request"
    assert set(error["details"]) == {field}
    assert field in error["message"]


async def test_every_bad_field_is_named_at_once(http: aiohttp.ClientSession, fake: FakeNebulaServer) -> None:
    """Several bad fields are all named in one 400's details."""
    request = {"prompt": 3, "max_tokens": 0, "temperature": 9, "top_p": "x", "stop": [1], "stream": "no"}
    answer = await send(http, fake, request)
    assert answer.status == 400
    details = answer.error()["details"]
    assert set(details) == {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream"}
    assert all(isinstance(v, str) and v for v in details.values())


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"model": "Llama3.3-70B", "prompt": ',
        b"",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b'{"model": "Llama3.3-70B", "prompt": "p", "temperature": NaN}',
        b'{"model": "Llama3.3-70B", "prompt": "p", "top_p": Infinity}',
        b"\xff\xfe{}",
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_400(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, raw: bytes
) -> None:
    """A body that is not a JSON object is a 400 invalid_request naming "body"."""
    answer = await send(http, fake, raw)
    assert answer.status == 400
    error = answer.error()
    assert error["code"] == "invalid_request"
    assert set(error["details"]) == {"body"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_declared_json_is_a_415(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, content_type: str | None
) -> None:
    """A wrong or missing Content-Type is a 415 invalid_request, even with a valid JSON body."""
    answer = await send(http, fake, body(), content_type=content_type)
    assert answer.status == 415
    assert answer.error()["code"] == "invalid_request"
    assert answer.headers["x-request-id"]
    assert fake.requests[-1].headers.get("Content-Type") == content_type  # what reached the wire


async def test_json_content_type_with_charset_is_accepted(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """Content-Type parameters and case do not matter: 'Application/JSON; charset=utf-8' is JSON."""
    answer = await send(http, fake, body(), content_type="Application/JSON; charset=utf-8")
    assert answer.success()["text"] == "Hello, World!"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/text/other"), ("POST", "/text/generate/"), ("GET", "/models"), ("POST", "/../v2/x")],
)
async def test_unknown_path_is_a_404_envelope(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, method: str, path: str
) -> None:
    """Any other path is a 404 with the error envelope and an x-request-id."""
    answer = await send(http, fake, body(), method=method, path=path)
    assert answer.status == 404
    assert answer.error()["code"] == "not_found"
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_a_405_allowing_post(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, method: str
) -> None:
    """Another method on the endpoint is a 405 with Allow: POST and the error envelope."""
    answer = await send(http, fake, method=method)
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert answer.error()["code"] == "method_not_allowed"
    assert answer.headers["x-request-id"]


# --- models ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", REFERENCE_MODELS)
async def test_the_six_reference_models_are_served(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, model: str
) -> None:
    """Each model of the API reference's table answers by default."""
    assert sorted(fake.models) == sorted(REFERENCE_MODELS)
    assert (await send(http, fake, body(model=model))).success()["text"] == "Hello, World!"


async def test_unknown_model_is_a_404_model_not_found(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """An unknown model is a 404 model_not_found with details naming it; the SDK raises ModelNotFoundError."""
    answer = await send(http, fake, body(model="gpt-4"))
    assert answer.status == 404
    error = answer.error()
    assert error["code"] == "model_not_found"
    assert error["details"] == {"model": "Model 'gpt-4' not found"}
    async with sdk(fake) as client:
        with pytest.raises(ModelNotFoundError) as caught:
            await client.generate_text(model="gpt-4", prompt="hi")
    assert (caught.value.code, caught.value.status_code) == ("model_not_found", 404)
    assert caught.value.details == {"model": "Model 'gpt-4' not found"}
    assert caught.value.request_id == fake.requests[-1].request_id
    assert len(fake.requests) == 2  # not retried


async def test_models_argument_adds_to_the_reference_models(http: aiohttp.ClientSession) -> None:
    """models=["gpt-4"] serves gpt-4 and keeps the six reference models."""
    async with FakeNebulaServer(models=["gpt-4"]) as server:
        for model in ["gpt-4", *REFERENCE_MODELS]:
            assert (await send(http, server, body(model=model))).status == 200
        assert (await send(http, server, body(model="gpt-5"))).status == 404


async def test_prompt_over_the_context_length_is_rejected(http: aiohttp.ClientSession) -> None:
    """A prompt over the model's context_length is a 400 context_length_exceeded; the SDK raises its class."""
    async with FakeNebulaServer(models=[FakeModel("tiny", context_length=5)]) as server:
        prompt = "one two three four five six"
        answer = await send(http, server, body(model="tiny", prompt=prompt))
        assert answer.status == 400
        error = answer.error()
        assert error["code"] == "context_length_exceeded"
        assert set(error["details"]) == {"prompt"}
        async with sdk(server) as client:
            with pytest.raises(ContextLengthExceededError) as caught:
                await client.generate_text(model="tiny", prompt=prompt)
        assert isinstance(caught.value, InvalidRequestError)
        assert (caught.value.code, caught.value.status_code) == ("context_length_exceeded", 400)
        assert len(server.requests) == 2  # not retried


async def test_prompt_exactly_at_the_context_length_is_accepted(http: aiohttp.ClientSession) -> None:
    """A prompt of exactly context_length tokens is answered, with no room left to generate."""
    async with FakeNebulaServer(models=[FakeModel("tiny", context_length=5)]) as server:
        data, events = await both(http, server, body(model="tiny", prompt="one two three four five"))
    assert data["usage"]["prompt_tokens"] == 5
    assert data["usage"]["completion_tokens"] == 0
    assert data["text"] == ""
    assert events == [{"text": "", "finish_reason": "length"}]


async def test_generation_is_cut_to_the_context_room(http: aiohttp.ClientSession) -> None:
    """Generation stops where prompt plus completion fill the context, with finish_reason "length"."""
    model = FakeModel("tiny", context_length=7)
    async with FakeNebulaServer(models=[model], replies={"one two three": FIVE_WORDS}) as server:
        data, events = await both(http, server, body(model="tiny", prompt="one two three", max_tokens=100))
    assert data["text"] == "one two three four"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert finish_reasons(events) == [None, None, None, "length"]


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer ", "Bearer", "Bearer    ", "Basic x", "Token abc", "abc", ""]
)
async def test_missing_or_malformed_authorization_is_a_401(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, authorization: str | None
) -> None:
    """No usable Bearer key is a 401 invalid_api_key, even for a body that is also invalid."""
    headers = {} if authorization is None else {"Authorization": authorization}
    for payload in (body(), {"model": 1}):
        answer = await send(http, fake, payload, key=None, headers=headers)
        assert answer.status == 401
        assert answer.error()["code"] == "invalid_api_key"
        assert answer.headers["x-request-id"]


async def test_only_configured_keys_are_accepted(http: aiohttp.ClientSession) -> None:
    """Under api_keys={...}, another key is a 401 invalid_api_key and each listed key works."""
    async with FakeNebulaServer(api_keys={"key-a", "key-b"}) as server:
        assert server.api_key in {"key-a", "key-b"}
        for key in ("key-a", "key-b"):
            assert (await send(http, server, body(), key=key)).status == 200
        for key in ("key-c", "KEY-A", "key-a2"):
            answer = await send(http, server, body(), key=key)
            assert answer.status == 401
            assert answer.error()["code"] == "invalid_api_key"


async def test_any_non_empty_key_is_accepted_by_default(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """Without api_keys any non-empty Bearer key works, server.api_key included."""
    assert fake.api_key == DEFAULT_API_KEY
    for key in (fake.api_key, "x", "sk-anything-at-all"):
        assert (await send(http, fake, body(), key=key)).status == 200
    answer = await send(http, fake, body(), key=None, headers={"Authorization": f"bearer {KEY}"})
    assert answer.status == 200  # the scheme is case-insensitive


async def test_sdk_raises_authentication_error_for_a_wrong_key() -> None:
    """The SDK maps the 401 to AuthenticationError with code invalid_api_key, without retrying."""
    async with FakeNebulaServer(api_keys=["right"]) as server, sdk(server, api_key="wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate_text(model=MODEL, prompt="hi")
    assert (caught.value.code, caught.value.status_code) == ("invalid_api_key", 401)
    assert len(server.requests) == 1


# --- replies ---------------------------------------------------------------------------------------------


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


# --- timing -----------------------------------------------------------------------------------------------


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


# --- limits ---------------------------------------------------------------------------------------------


async def test_requests_per_second_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    """requests_per_second=2 answers a third quick request with 429 and Retry-After / retry-after-ms."""
    async with FakeNebulaServer(requests_per_second=2) as server:
        answers = [await send(http, server, body()) for _ in range(3)]
        other_key = await send(http, server, body(), key="another-key")
        async with sdk(server, api_key=KEY, retry=NO_RETRY) as client:
            with pytest.raises(RateLimitError) as caught:
                await client.generate_text(model=MODEL, prompt="hi")
    assert [a.status for a in answers] == [200, 200, 429]
    limited = answers[2]
    assert limited.error()["code"] == "rate_limit_exceeded"
    assert re.fullmatch(r"[1-9][0-9]*", limited.headers["Retry-After"])
    assert re.fullmatch(r"[0-9]+", limited.headers["retry-after-ms"])
    assert 0 < int(limited.headers["retry-after-ms"]) <= 1000
    assert int(limited.headers["Retry-After"]) == 1
    assert other_key.status == 200  # each key has its own window
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 1


async def test_token_quota_answers_insufficient_quota_once_used(http: aiohttp.ClientSession) -> None:
    """token_quota counts prompt plus completion tokens per key; then requests get 429 insufficient_quota."""
    async with FakeNebulaServer(token_quota=10, replies={"Say hi": "Hello, World!"}) as server:
        key = server.api_key
        first = (await send(http, server, body(), key=key)).success()
        assert server.tokens_used() == server.tokens_used(key) == first["usage"]["total_tokens"] == 6
        (await send(http, server, body(), key=key)).success()  # 6 < 10: still admitted
        assert server.tokens_used() == 12
        answer = await send(http, server, body(), key=key)
        assert answer.status == 429
        error = answer.error()
        assert error["code"] == "insufficient_quota"
        assert set(error["details"]) == {"quota"}
        assert server.tokens_used() == 12  # a refused request costs nothing
        assert server.tokens_used("another-key") == 0
        assert (await send(http, server, body(), key="another-key")).status == 200
        before = len(server.requests)
        async with sdk(server) as client:  # default retries: insufficient_quota must not use them
            with pytest.raises(InsufficientQuotaError) as caught:
                await client.generate_text(model=MODEL, prompt="Say hi")
        assert len(server.requests) == before + 1
    assert (caught.value.code, caught.value.status_code) == ("insufficient_quota", 429)


# --- concurrency ------------------------------------------------------------------------------------------


async def test_200_concurrent_sdk_calls_all_succeed(fake: FakeNebulaServer) -> None:
    """200 concurrent calls on one SDK client all succeed, each with its own prompt's text."""
    prompts = [f"prompt number {i}" for i in range(200)]
    async with sdk(fake) as client:
        results = await asyncio.gather(*(client.generate_text(model=MODEL, prompt=p) for p in prompts))
    assert [r.text for r in results] == [default_reply(MODEL, p, 0.7, 1.0) for p in prompts]
    assert all(r.retries == 0 for r in results)
    assert len({r.request_id for r in results}) == 200
    assert len(fake.requests) == 200
