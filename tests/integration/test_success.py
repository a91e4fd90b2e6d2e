"""Successful calls over a real socket: the result, and exactly what reached the wire.

They run against the FakeNebulaServer (``fake``); the hand-rolled ``server`` only for answers it never gives.
"""

from __future__ import annotations

import platform

from nebula_async import GenerateRequest, TextGeneration, Usage, __version__
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import SECRET_KEY, success_body
from tests.integration._support import json_handler, make_client


async def test_success_returns_text_usage_request_id_and_no_retries(fake: FakeNebulaServer) -> None:
    """A 200 success envelope becomes a TextGeneration with text, usage, x-request-id and retries=0."""
    fake.replies["Say hi, please"] = "Bonjour le monde"  # 4 prompt tokens, 3 completion tokens
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="Say hi, please")
    [request] = fake.requests
    assert result == TextGeneration("Bonjour le monde", Usage(4, 3, 7), request.request_id, 0)
    assert request.request_id.startswith("req_")


async def test_request_id_is_none_without_the_header(server: LocalServer) -> None:
    """A response without x-request-id gives request_id None, not an empty string or a made-up id."""
    server.handler = json_handler(success_body("ok"))
    async with make_client(server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "ok"
    assert result.request_id is None


async def test_headers_on_the_wire(fake: FakeNebulaServer) -> None:
    """The request carries the bearer key, a JSON content type and a User-Agent naming SDK and Python."""
    async with make_client(fake.base_url, default_headers={"X-Team": "blue"}) as client:
        await client.generate_text(model="m", prompt="p")
    headers = fake.requests[0].headers
    assert headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert f"nebula-sdk/{__version__}" in headers["User-Agent"]
    assert platform.python_version() in headers["User-Agent"]
    assert headers["X-Team"] == "blue"


async def test_only_passed_fields_are_sent(fake: FakeNebulaServer) -> None:
    """Only model and prompt are sent when nothing else is passed, and never "stream" for generate_text."""
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    assert fake.requests[0].json == {"model": "m", "prompt": "p"}


async def test_all_optional_fields_reach_the_wire_including_falsy_ones(fake: FakeNebulaServer) -> None:
    """Every passed option is sent as given, including temperature=0 and top_p=0, which are not 'unset'."""
    async with make_client(fake.base_url) as client:
        await client.generate_text(
            model="m",
            prompt="p",
            max_tokens=1,
            temperature=0,
            top_p=0.0,
            stop=["\n", "END"],
            extra_body={"seed": 7},
        )
    assert fake.requests[0].json == {
        "model": "m",
        "prompt": "p",
        "max_tokens": 1,
        "temperature": 0,
        "top_p": 0.0,
        "stop": ["\n", "END"],
        "seed": 7,
    }


async def test_stream_request_shape(fake: FakeNebulaServer) -> None:
    """A stream sends "stream": true with the caller's fields, and asks for an event stream."""
    async with (
        make_client(fake.base_url) as client,
        client.stream_text(model="m", prompt="p", max_tokens=5) as stream,
    ):
        async for _ in stream:
            pass
    request = fake.requests[0]
    assert request.json == {"model": "m", "prompt": "p", "max_tokens": 5, "stream": True}
    assert request.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert "text/event-stream" in request.headers["Accept"]


async def test_stream_sends_nothing_before_it_is_entered(fake: FakeNebulaServer) -> None:
    """stream_text() returns without sending; the request goes out on the first iteration."""
    async with make_client(fake.base_url) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert fake.requests == []
        first = await stream.__anext__()
        assert len(fake.requests) == 1
        assert first.text == "Hello"
        await stream.aclose()


async def test_non_ascii_prompt_and_text_round_trip(fake: FakeNebulaServer) -> None:
    """A non-ASCII prompt is sent as UTF-8 JSON and non-ASCII text comes back intact."""
    fake.reply = lambda request: request.prompt[::-1]
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="héllo 😀 世界")
    assert fake.requests[0].json["prompt"] == "héllo 😀 世界"
    assert result.text == "界世 😀 olléh"


async def test_large_bodies_both_ways(fake: FakeNebulaServer) -> None:
    """A 300 KB prompt and a 1 MB generated text travel intact over a real socket."""
    prompt = "p" * 300_000
    big = "x" * 1_000_000
    fake.replies[prompt] = big
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt=prompt)
    assert fake.requests[0].json["prompt"] == prompt
    assert result.text == big


async def test_unknown_response_fields_are_ignored(server: LocalServer) -> None:
    """Extra fields in the envelope, data and usage are ignored (forward compatible)."""
    body = success_body("ok")
    body["meta"] = {"region": "eu"}
    body["data"]["model"] = "m-2025"
    body["data"]["usage"]["cached_tokens"] = 3
    server.handler = json_handler(body)
    async with make_client(server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "ok"
    assert result.usage == Usage(8, 12, 20)


async def test_generate_request_fields_are_what_generate_many_sends(fake: FakeNebulaServer) -> None:
    """A GenerateRequest item reaches the wire with exactly the fields it was given."""
    async with make_client(fake.base_url) as client:
        await client.generate_many([GenerateRequest("m", "p", max_tokens=3, stop=["x"])])
    assert fake.requests[0].json == {"model": "m", "prompt": "p", "max_tokens": 3, "stop": ["x"]}
