"""What the client puts on the wire: URL, headers and JSON body, and what it refuses to send."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

import nebula_async
import nebula_sync
from nebula_async import (
    GenerateRequest,
    RateLimitError,
    ServerError,
    TextGeneration,
    Timeout,
)
from tests.conftest import MockAPI
from tests.helpers import SECRET_KEY, error_body, sse, success_body
from tests.unit._support import BASE_URL, ENDPOINT, consume, header, mock_client

SSE_BODY = sse({"text": "Hel", "finish_reason": None}, {"text": "lo", "finish_reason": "stop"})


def mock_stream(mock_api: MockAPI, body: bytes = SSE_BODY, **kwargs: Any) -> None:
    """Queue one event-stream answer."""
    mock_api.post(ENDPOINT, body=body, content_type="text/event-stream", **kwargs)


# --- body ----------------------------------------------------------------------------------------


async def test_minimal_body_has_only_model_and_prompt(mock_api: MockAPI) -> None:
    """generate_text with only model and prompt sends exactly those two fields."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="Llama3.3-70B", prompt="Say hi")
    [sent] = mock_api.sent()
    assert sent["method"] == "POST"
    assert sent["url"] == ENDPOINT
    assert sent["body"] == {"model": "Llama3.3-70B", "prompt": "Say hi"}


async def test_full_body_has_every_passed_field(mock_api: MockAPI) -> None:
    """Every optional field that is passed is sent with its value, stop as a JSON array."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(
            model="m", prompt="p", max_tokens=100, temperature=0.7, top_p=0.9, stop=["\n\n", "END"]
        )
    [sent] = mock_api.sent()
    assert sent["body"] == {
        "model": "m",
        "prompt": "p",
        "max_tokens": 100,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
    }


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"temperature": 0}, {"temperature": 0}),
        ({"top_p": 0.0}, {"top_p": 0.0}),
        ({"max_tokens": 1}, {"max_tokens": 1}),
        ({"stop": ("a", "b")}, {"stop": ["a", "b"]}),
        ({"stop": []}, {"stop": []}),
        ({"temperature": None, "top_p": None, "max_tokens": None, "stop": None}, {}),
    ],
)
async def test_only_passed_fields_are_sent(
    mock_api: MockAPI, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    """A falsy value that was passed (0, empty stop) is sent; a None is left out."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="m", prompt="p", **kwargs)
    [sent] = mock_api.sent()
    assert sent["body"] == {"model": "m", "prompt": "p", **expected}


async def test_generate_text_never_sends_stream(mock_api: MockAPI) -> None:
    """A non-streaming call has no "stream" key in its body."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="m", prompt="p", max_tokens=5)
    [sent] = mock_api.sent()
    assert "stream" not in sent["body"]


async def test_stream_text_sends_stream_true(mock_api: MockAPI) -> None:
    """stream_text sends the passed fields plus "stream": true."""
    mock_stream(mock_api)
    async with mock_client() as client:
        text = await consume(client, model="m", prompt="p", temperature=1.5)
    assert text == "Hello"
    [sent] = mock_api.sent()
    assert sent["body"] == {"model": "m", "prompt": "p", "temperature": 1.5, "stream": True}


async def test_stream_is_not_sent_before_it_is_used(mock_api: MockAPI) -> None:
    """stream_text() itself sends nothing; entering the stream sends the one request."""
    mock_stream(mock_api)
    async with mock_client() as client:
        stream = client.stream_text(model="m", prompt="p")
        assert mock_api.sent() == []
        async with stream:
            assert len(mock_api.sent()) == 1
            chunks = [chunk.text async for chunk in stream]
    assert chunks == ["Hel", "lo"]
    assert len(mock_api.sent()) == 1


async def test_non_ascii_prompt_is_utf8_on_the_wire(mock_api: MockAPI) -> None:
    """A non-ASCII prompt and model reach the wire as UTF-8 bytes of the same text."""
    prompt = "Grüße, 世界! 🚀 — naïve café"
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="modèle", prompt=prompt)
    [sent] = mock_api.sent()
    raw = sent["raw"]
    assert isinstance(raw, bytes)
    assert prompt.encode("utf-8") in raw
    assert json.loads(raw.decode("utf-8")) == {"model": "modèle", "prompt": prompt}


async def test_lone_surrogate_prompt_is_refused_naming_prompt(mock_api: MockAPI) -> None:
    """A prompt that cannot be encoded as UTF-8 raises before sending, naming prompt (not extra_body)."""
    async with mock_client() as client:
        with pytest.raises((ValueError, TypeError)) as info:
            await client.generate_text(model="m", prompt="bad \ud800 text")
    assert mock_api.requests == {}
    assert "prompt" in str(info.value)


# --- headers -------------------------------------------------------------------------------------


async def test_standard_headers(mock_api: MockAPI) -> None:
    """A call carries the bearer key, a JSON content type and a User-Agent naming the SDK and Python."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="m", prompt="p")
    [sent] = mock_api.sent()
    assert header(sent, "Authorization") == [f"Bearer {SECRET_KEY}"]
    assert header(sent, "Content-Type") == ["application/json"]
    [user_agent] = header(sent, "User-Agent")
    assert f"nebula-sdk/{nebula_async.__version__}" in user_agent
    assert "Python" in user_agent
    assert "text/event-stream" not in " ".join(header(sent, "Accept"))


async def test_stream_accepts_event_stream(mock_api: MockAPI) -> None:
    """A streaming call asks for text/event-stream and carries the same auth and User-Agent."""
    mock_stream(mock_api)
    async with mock_client() as client:
        await consume(client, model="m", prompt="p")
    [sent] = mock_api.sent()
    assert header(sent, "Accept") == ["text/event-stream"]
    assert header(sent, "Authorization") == [f"Bearer {SECRET_KEY}"]
    assert header(sent, "Content-Type") == ["application/json"]
    assert f"nebula-sdk/{nebula_async.__version__}" in header(sent, "User-Agent")[0]


async def test_default_headers_are_merged(mock_api: MockAPI) -> None:
    """default_headers are added to every call, streaming or not, beside the SDK's own headers."""
    mock_api.post(ENDPOINT, payload=success_body())
    mock_stream(mock_api)
    async with mock_client(default_headers={"X-Team": "search", "X-Trace": "t1"}) as client:
        await client.generate_text(model="m", prompt="p")
        await consume(client, model="m", prompt="p")
    sent = mock_api.sent()
    assert len(sent) == 2
    for request in sent:
        assert header(request, "X-Team") == ["search"]
        assert header(request, "X-Trace") == ["t1"]
        assert header(request, "Authorization") == [f"Bearer {SECRET_KEY}"]


@pytest.mark.parametrize("path", ["generate", "stream"])
@pytest.mark.parametrize("name", ["User-Agent", "user-agent"])
async def test_default_headers_can_replace_the_user_agent(mock_api: MockAPI, name: str, path: str) -> None:
    """A User-Agent in default_headers, in any case, is the only one sent, not one beside the SDK's."""
    # Regression (review of 6705a48): a lower-case "user-agent" was sent beside ours, not instead.
    async with mock_client(default_headers={name: "my-app/2.0"}) as client:
        if path == "stream":
            mock_stream(mock_api)
            await consume(client, model="m", prompt="p")
        else:
            mock_api.post(ENDPOINT, payload=success_body())
            await client.generate_text(model="m", prompt="p")
    [sent] = mock_api.sent()
    assert header(sent, "User-Agent") == ["my-app/2.0"]
    assert header(sent, "Authorization") == [f"Bearer {SECRET_KEY}"]


# --- extra_body ----------------------------------------------------------------------------------


async def test_extra_body_is_merged(mock_api: MockAPI) -> None:
    """extra_body fields are sent beside the typed ones, nested values intact."""
    mock_api.post(ENDPOINT, payload=success_body())
    mock_stream(mock_api)
    extra = {"presence_penalty": 0.5, "metadata": {"user": "u1", "tags": ["a"]}}
    async with mock_client() as client:
        await client.generate_text(model="m", prompt="p", extra_body=extra)
        await consume(client, model="m", prompt="p", extra_body=extra)
    plain, streamed = mock_api.sent()
    assert plain["body"] == {"model": "m", "prompt": "p", **extra}
    assert streamed["body"] == {"model": "m", "prompt": "p", **extra, "stream": True}


@pytest.mark.parametrize("key", ["max_tokens", "stream", "model", "prompt", "temperature", "top_p", "stop"])
async def test_extra_body_clashing_with_a_parameter_is_refused(mock_api: MockAPI, key: str) -> None:
    """extra_body may not set a typed parameter: ValueError naming it, and nothing is sent."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        with pytest.raises(ValueError, match=key):
            await client.generate_text(model="m", prompt="p", extra_body={key: 5})
        with pytest.raises(ValueError, match=key):
            client.stream_text(model="m", prompt="p", extra_body={key: 5})
    assert mock_api.requests == {}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (object(), TypeError),
        ({1, 2}, TypeError),
        (b"bytes", TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
    ],
)
async def test_extra_body_non_json_value_is_refused(
    mock_api: MockAPI, value: object, error: type[Exception]
) -> None:
    """An extra_body value JSON cannot carry (a wrong type, or NaN/inf) raises before anything is sent."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        with pytest.raises(error, match="extra_body"):
            await client.generate_text(model="m", prompt="p", extra_body={"x": value})
        with pytest.raises(error, match="extra_body"):
            client.stream_text(model="m", prompt="p", extra_body={"x": value})
    assert mock_api.requests == {}


@pytest.mark.parametrize("extra_body", [["seed"], "seed"], ids=["list", "str"])
async def test_extra_body_that_is_not_a_dict_is_refused(mock_api: MockAPI, extra_body: Any) -> None:
    """extra_body that is not a dict is a TypeError on both paths, and nothing is sent."""
    async with mock_client() as client:
        with pytest.raises(TypeError, match="extra_body must be a dict"):
            await client.generate_text(model="m", prompt="p", extra_body=extra_body)
        with pytest.raises(TypeError, match="extra_body must be a dict"):
            client.stream_text(model="m", prompt="p", extra_body=extra_body)
    assert mock_api.sent() == []


# --- arguments refused before sending ------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"model": ""}, ValueError, "model"),
    ({"model": None}, TypeError, "model"),
    ({"prompt": ""}, ValueError, "prompt"),
    ({"max_tokens": 0}, ValueError, "max_tokens"),
    ({"max_tokens": True}, TypeError, "max_tokens"),
    ({"temperature": 2.5}, ValueError, "temperature"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"stop": "END"}, TypeError, "stop"),
    ({"stop": ["a", 1]}, TypeError, "stop"),
    ({"timeout": "10"}, TypeError, "timeout"),
    ({"max_retries": -1}, ValueError, "max_retries"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD_ARGUMENTS)
async def test_bad_argument_raises_before_any_request(
    mock_api: MockAPI, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """generate_text with a bad argument raises, naming it, and sends nothing."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        with pytest.raises(error, match=name):
            await client.generate_text(**{"model": "m", "prompt": "p", **kwargs})
    assert mock_api.requests == {}


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD_ARGUMENTS)
async def test_bad_stream_argument_raises_at_stream_text(
    mock_api: MockAPI, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """stream_text with a bad argument raises when called, before any stream exists or is sent."""
    mock_stream(mock_api)
    async with mock_client() as client:
        with pytest.raises(error, match=name):
            client.stream_text(**{"model": "m", "prompt": "p", **kwargs})
    assert mock_api.requests == {}


async def test_missing_required_argument_sends_nothing(mock_api: MockAPI) -> None:
    """Leaving out prompt is a TypeError from the call itself, with nothing sent."""
    async with mock_client() as client:
        with pytest.raises(TypeError, match="prompt"):
            await client.generate_text(model="m")  # type: ignore[call-arg]  # the mistake under test
    assert mock_api.requests == {}


# --- retries and timeouts per call ---------------------------------------------------------------


async def test_per_call_max_retries_enables_retry(mock_api: MockAPI) -> None:
    """max_retries=1 on a call retries it once even though the client's policy has no retries."""
    mock_api.post(
        ENDPOINT, status=429, payload=error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}
    )
    mock_api.post(ENDPOINT, payload=success_body("second"))
    async with mock_client(max_retries=0) as client:
        result = await client.generate_text(model="m", prompt="p", max_retries=1)
    assert result.text == "second"
    assert result.retries == 1
    sent = mock_api.sent()
    assert len(sent) == 2
    assert sent[0]["raw"] == sent[1]["raw"]


async def test_per_call_max_retries_zero_disables_retry(mock_api: MockAPI) -> None:
    """max_retries=0 on a call sends it once even though the client would retry."""
    mock_api.post(ENDPOINT, status=503, payload=error_body("overloaded"), headers={"Retry-After": "0"})
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(max_retries=3) as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p", max_retries=0)
    assert len(mock_api.sent()) == 1


async def test_per_call_max_retries_applies_to_streams(mock_api: MockAPI) -> None:
    """stream_text(max_retries=1) retries a 429 before the stream starts."""
    mock_api.post(
        ENDPOINT, status=429, payload=error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}
    )
    mock_stream(mock_api)
    client = mock_client(max_retries=0)
    async with client, client.stream_text(model="m", prompt="p", max_retries=1) as stream:
        text = "".join([chunk.text async for chunk in stream])
    assert text == "Hello"
    assert stream.retries == 1
    assert len(mock_api.sent()) == 2


async def test_per_call_max_retries_does_not_change_the_client(mock_api: MockAPI) -> None:
    """A per-call override applies to that call only; the next call uses the client's policy."""
    mock_api.post(
        ENDPOINT, status=429, payload=error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}
    )
    mock_api.post(ENDPOINT, payload=success_body())
    mock_api.post(
        ENDPOINT, status=429, payload=error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}
    )
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(max_retries=0) as client:
        await client.generate_text(model="m", prompt="p", max_retries=1)
        with pytest.raises(RateLimitError):
            await client.generate_text(model="m", prompt="p")
    assert len(mock_api.sent()) == 3


def _timeouts(mock_api: MockAPI) -> list[aiohttp.ClientTimeout]:
    return [call.kwargs["timeout"] for call in mock_api.requests[("POST", URL(ENDPOINT))]]


async def test_default_timeouts_reach_aiohttp(mock_api: MockAPI) -> None:
    """A plain call is bounded by the default connect timeout (no read limit by default).

    Its total is not aiohttp's (whose timer could swallow a cancel): a Deadline of the SDK's runs it.
    """
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        await client.generate_text(model="m", prompt="p")
    [timeout] = _timeouts(mock_api)
    assert (timeout.sock_connect, timeout.sock_read, timeout.total) == (10.0, None, None)


async def test_per_call_timeout_reaches_aiohttp(mock_api: MockAPI) -> None:
    """timeout=2.5 on a call reaches that request's aiohttp timeouts; the next call gets the client's."""
    mock_api.post(ENDPOINT, payload=success_body(), repeat=True)
    async with mock_client(timeout=Timeout(connect=1.0, read=4.0, total=9.0)) as client:
        await client.generate_text(model="m", prompt="p", timeout=2.5)
        await client.generate_text(model="m", prompt="p")
    first, second = _timeouts(mock_api)
    # total: the SDK's own Deadline, never aiohttp's
    assert (first.sock_connect, first.sock_read, first.total) == (2.5, 2.5, None)
    assert (second.sock_connect, second.sock_read, second.total) == (1.0, 4.0, None)


async def test_stream_has_no_total_timeout(mock_api: MockAPI) -> None:
    """A stream keeps connect and a read bound (stream_idle's) but no total: that would cut a long one."""
    mock_stream(mock_api)
    async with mock_client() as client:
        await consume(client, model="m", prompt="p")
    [timeout] = _timeouts(mock_api)
    assert timeout.total is None
    assert (timeout.sock_connect, timeout.sock_read) == (10.0, 120.0)


# --- responses -----------------------------------------------------------------------------------


async def test_result_carries_text_usage_and_request_id(mock_api: MockAPI) -> None:
    """The result holds the envelope's text and usage and the x-request-id header."""
    mock_api.post(ENDPOINT, payload=success_body("hi", 3, 4), headers={"x-request-id": "req_42"})
    async with mock_client() as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "hi"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        3,
        4,
        7,
    )
    assert result.request_id == "req_42"
    assert result.retries == 0


async def test_request_id_is_none_when_absent(mock_api: MockAPI) -> None:
    """Without an x-request-id header the result's request_id is None."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client() as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.request_id is None


async def test_unknown_response_fields_are_ignored(mock_api: MockAPI) -> None:
    """Extra fields anywhere in a success envelope or a stream event do not break parsing."""
    body = success_body("ok")
    body["model_version"] = "2025-01"
    body["data"]["logprobs"] = [0.1]
    body["data"]["usage"]["cached_tokens"] = 2
    mock_api.post(ENDPOINT, payload=body)
    mock_stream(mock_api, sse({"text": "x", "finish_reason": "stop", "index": 0, "new": {"a": 1}}))
    async with mock_client() as client:
        result = await client.generate_text(model="m", prompt="p")
        text = await consume(client, model="m", prompt="p")
    assert result.text == "ok"
    assert text == "x"


@pytest.mark.parametrize(
    "data",
    [
        {"text": None, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        {"text": "t", "usage": {"prompt_tokens": "1", "completion_tokens": 1, "total_tokens": 2}},
        {"text": "t"},
        None,
    ],
)
async def test_malformed_success_is_a_server_error(mock_api: MockAPI, data: Any) -> None:
    """A success envelope whose data does not fit the model raises ServerError instead of guessing."""
    mock_api.post(ENDPOINT, payload={"status": "success", "data": data})
    async with mock_client() as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")
    assert len(mock_api.sent()) == 1


# --- generate_many and the sync client share the same request building ---------------------------


async def test_generate_many_sends_each_request_as_generate_text_would(mock_api: MockAPI) -> None:
    """generate_many sends a GenerateRequest and an equivalent dict as the same body, results in order."""
    mock_api.post(ENDPOINT, payload=success_body("a"))
    mock_api.post(ENDPOINT, payload=success_body("b"))
    requests: list[Any] = [
        GenerateRequest(model="m", prompt="p", max_tokens=5, stop=["x"]),
        {"model": "m", "prompt": "p", "max_tokens": 5, "stop": ["x"]},
    ]
    async with mock_client() as client:
        results = await client.generate_many(requests, concurrency=1)
    assert [r.text for r in results] == ["a", "b"]
    bodies = [s["body"] for s in mock_api.sent()]
    assert bodies == [{"model": "m", "prompt": "p", "max_tokens": 5, "stop": ["x"]}] * 2


async def test_generate_many_bad_item_sends_nothing_for_it(mock_api: MockAPI) -> None:
    """A dict item with a bad argument fails alone with return_exceptions=True; only the good one is sent."""
    mock_api.post(ENDPOINT, payload=success_body("ok"))
    async with mock_client() as client:
        results = await client.generate_many(
            [{"model": "m", "prompt": ""}, {"model": "m", "prompt": "p"}],
            concurrency=1,
            return_exceptions=True,
        )
    assert isinstance(results[0], ValueError)
    assert isinstance(results[1], TextGeneration)
    assert results[1].text == "ok"
    assert [s["body"] for s in mock_api.sent()] == [{"model": "m", "prompt": "p"}]


def test_sync_client_sends_the_same_request(mock_api: MockAPI) -> None:
    """nebula_sync.NebulaClient puts the same URL, headers and body on the wire as the async client."""
    mock_api.post(ENDPOINT, payload=success_body("sync"))
    with nebula_sync.NebulaClient(SECRET_KEY, base_url=BASE_URL, max_retries=0) as client:
        result = client.generate_text(model="m", prompt="p", max_tokens=3)
    assert result.text == "sync"
    [sent] = mock_api.sent()
    assert sent["url"] == ENDPOINT
    assert sent["body"] == {"model": "m", "prompt": "p", "max_tokens": 3}
    assert header(sent, "Authorization") == [f"Bearer {SECRET_KEY}"]
    assert f"nebula-sdk/{nebula_async.__version__}" in header(sent, "User-Agent")[0]
