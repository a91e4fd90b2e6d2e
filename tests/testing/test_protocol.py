"""FakeNebulaServer's protocol on real sockets: envelopes, request ids, usage, validation, routes, auth."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import aiohttp
import pytest

from nebula_async import AuthenticationError, GenerateRequest, Usage
from nebula_async.testing import DEFAULT_API_KEY, FakeModel, FakeNebulaServer, count_tokens, default_reply
from tests.testing._support import FAKE_KEY, MODEL, WAIT, body, post, sdk, send

# --- envelopes and headers ------------------------------------------------------------------------


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
            await send(http, main, body(model="gpt-5")),
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


# --- validation over HTTP -------------------------------------------------------------------------


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


def test_a_body_over_32_mib_gets_413_naming_the_body() -> None:
    """A body one byte over 32 MiB gets 413 invalid_request with details naming "body", and x-request-id."""
    # Regression: the 413 carried no details naming the body, unlike every other invalid_request.
    with FakeNebulaServer(api_keys=[FAKE_KEY]).run_in_thread() as server:
        status, headers, answer = post(server.base_url, data=b" " * (32 * 1024 * 1024 + 1))
    assert status == 413
    assert answer["error"]["code"] == "invalid_request"
    assert set(answer["error"]["details"]) == {"body"}
    assert headers["x-request-id"].startswith("req_")


# --- routes ---------------------------------------------------------------------------------------


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


# --- auth -----------------------------------------------------------------------------------------


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
        for key in ("key-c", "FAKE_KEY-A", "key-a2"):
            answer = await send(http, server, body(), key=key)
            assert answer.status == 401
            assert answer.error()["code"] == "invalid_api_key"


async def test_any_non_empty_key_is_accepted_by_default(http: aiohttp.ClientSession) -> None:
    """Without api_keys any non-empty Bearer key works, server.api_key included."""
    async with FakeNebulaServer() as server:
        assert server.api_key == DEFAULT_API_KEY
        for key in (server.api_key, "x", "sk-anything-at-all"):
            assert (await send(http, server, body(), key=key)).status == 200
        answer = await send(http, server, body(), key=None, headers={"Authorization": f"bearer {FAKE_KEY}"})
        assert answer.status == 200  # the scheme is case-insensitive


async def test_sdk_raises_authentication_error_for_a_wrong_key() -> None:
    """The SDK maps the 401 to AuthenticationError with code invalid_api_key, without retrying."""
    async with FakeNebulaServer(api_keys=["right"]) as server, sdk(server, api_key="wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate_text(model=MODEL, prompt="hi")
    assert (caught.value.code, caught.value.status_code) == ("invalid_api_key", 401)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "header_line",
    [
        b"Authorization: Bearer %s\x01",  # a control character in the value
        b"Authorization Bearer %s",  # no colon
    ],
    ids=["control-char", "no-colon"],
)
def test_malformed_request_log_hides_the_key(caplog: pytest.LogCaptureFixture, header_line: bytes) -> None:
    """aiohttp's log of a malformed Authorization line says what went wrong with the key redacted."""
    # Regression: aiohttp's log of a malformed request showed the Authorization header's key.
    caplog.set_level(logging.DEBUG, logger="nebula_async.testing.server")
    raw = b"POST /v1/text/generate HTTP/1.1\r\nHost: x\r\n" + header_line % FAKE_KEY.encode() + b"\r\n\r\n"
    with (
        FakeNebulaServer(api_keys=[FAKE_KEY]).run_in_thread() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock,
    ):
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert [r.name for r in caplog.records] == ["nebula_async.testing.server"]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert FAKE_KEY not in logged
    assert FAKE_KEY not in caplog.text
    assert "Error handling request" in logged
    assert "Bearer <redacted>" in logged


# --- concurrency ----------------------------------------------------------------------------------


async def test_200_concurrent_sdk_calls_all_succeed(fake: FakeNebulaServer) -> None:
    """200 concurrent calls on one SDK client all succeed, each with its own prompt's text."""
    prompts = [f"prompt number {i}" for i in range(200)]
    async with sdk(fake) as client:
        results = await asyncio.gather(*(client.generate_text(model=MODEL, prompt=p) for p in prompts))
    assert [r.text for r in results] == [default_reply(MODEL, p, 0.7, 1.0) for p in prompts]
    assert all(r.retries == 0 for r in results)
    assert len({r.request_id for r in results}) == 200
    assert len(fake.requests) == 200
