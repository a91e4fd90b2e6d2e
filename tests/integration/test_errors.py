"""Error answers over a real socket: the same class for the same code on every path.

The FakeNebulaServer (``fake``) sends the documented errors; the hand-rolled ``server`` sends what it
never does: error envelopes in a 200, answers without x-request-id, bodies that aren't the envelope,
redirects.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from nebula_async import (
    APIError,
    AsyncNebulaClient,
    AuthenticationError,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import KNOWN_CODES, NO_RETRY, error_body, success_body
from tests.integration._support import CALLS, HELLO, Call, catch_all, collect, json_handler, make_client


def _client(server: LocalServer | FakeNebulaServer) -> AsyncNebulaClient:
    return make_client(server.base_url, retry=NO_RETRY)


def _check(err: APIError, cls: type[APIError], code: str | None, status: int, request_id: str) -> None:
    assert type(err) is cls
    assert err.code == code
    assert err.status_code == status
    assert err.request_id == request_id
    text = str(err)
    assert "\n" not in text
    assert f"HTTP {status}" in text
    assert request_id in text
    if code is not None:
        assert code in text


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_over_http(
    fake: FakeNebulaServer, code: str, status: int, cls: type[APIError]
) -> None:
    """An HTTP error with a known code raises its class with code, message, details, status, id."""
    fake.fail_next(status=status, code=code, message="explained", details={"model": "gpt-9"})
    async with _client(fake) as client:
        with pytest.raises(cls) as info:
            await client.generate_text(model="m", prompt="p")
    _check(info.value, cls, code, status, fake.requests[0].request_id)
    assert info.value.message == "explained"
    assert info.value.details == {"model": "gpt-9"}
    assert "explained" in str(info.value)


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_in_a_200_envelope(
    server: LocalServer, code: str, status: int, cls: type[APIError]
) -> None:
    """A 200 whose envelope says "status": "error" raises the same class as the HTTP error would."""
    server.handler = json_handler(error_body(code, "in a 200"), headers={"x-request-id": "req_e2"})
    async with _client(server) as client:
        with pytest.raises(cls) as info:
            await client.generate_text(model="m", prompt="p")
    _check(info.value, cls, code, 200, "req_e2")


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_as_a_stream_event(
    fake: FakeNebulaServer, code: str, status: int, cls: type[APIError]
) -> None:
    """An error envelope arriving as a stream event raises the same class as the HTTP error would."""
    fake.error_event_after(events=0, code=code, message="mid-stream")
    async with _client(fake) as client:
        with pytest.raises(cls) as info:
            await collect(client.stream_text(model="m", prompt="p"), enter=True)
    _check(info.value, cls, code, 200, fake.requests[0].request_id)
    assert info.value.message == "mid-stream"


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_after_some_chunks(
    fake: FakeNebulaServer, code: str, status: int, cls: type[APIError]
) -> None:
    """An error event after text has been delivered raises the mapped class, after that text."""
    fake.token_delay = 0.01  # each chunk in a write of its own
    fake.error_event_after(events=2, code=code, message="later")  # after "Hello" and ","
    received: list[str] = []
    async with _client(fake) as client:
        with pytest.raises(cls):
            await collect(client.stream_text(model="m", prompt="p"), received, enter=True)
    assert received == ["Hello", ","]
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_at_stream_open(
    fake: FakeNebulaServer, code: str, status: int, cls: type[APIError]
) -> None:
    """An HTTP error answering a stream request raises the mapped class on entering the stream."""
    fake.fail_next(status=status, code=code)
    async with _client(fake) as client:
        stream = client.stream_text(model="m", prompt="p")
        with pytest.raises(cls) as info:
            async with stream:
                pass
    _check(info.value, cls, code, status, fake.requests[0].request_id)


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES)
async def test_known_code_in_a_200_envelope_at_stream_open(
    server: LocalServer, code: str, status: int, cls: type[APIError]
) -> None:
    """A stream request answered by a 200 JSON error envelope raises the same class as the HTTP error."""
    server.handler = json_handler(error_body(code), headers={"x-request-id": "req_e5"})
    async with _client(server) as client:
        with pytest.raises(cls) as info:
            await collect(client.stream_text(model="m", prompt="p"))
    _check(info.value, cls, code, 200, "req_e5")


async def test_server_error_event_before_the_first_chunk_is_retried(fake: FakeNebulaServer) -> None:
    """A server_error event before any text is a ServerError, retried like a 500, and the retry succeeds."""
    # Regression: it was a plain APIError (status 200, a code not in the table) and was never retried.
    fake.error_event_after(events=0, code="server_error")
    async with make_client(fake.base_url) as client:
        received: list[str] = []
        await collect(client.stream_text(model="m", prompt="p"), received, enter=True)
    assert "".join(received) == HELLO
    assert len(fake.requests) == 2


@pytest.mark.parametrize("events", [0, 2])
async def test_unknown_code_in_a_stream_is_a_plain_api_error(fake: FakeNebulaServer, events: int) -> None:
    """An error event with an unknown code is a plain APIError, not retried, before or after text."""
    fake.token_delay = 0.01  # each chunk in a write of its own
    fake.error_event_after(events=events, code="brand_new_code")
    async with make_client(fake.base_url) as client:
        with pytest.raises(APIError) as info:
            await collect(client.stream_text(model="m", prompt="p"), enter=True)
    assert type(info.value) is APIError
    assert info.value.code == "brand_new_code"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
async def test_html_error_page_maps_by_status(
    fake: FakeNebulaServer, status: int, cls: type[APIError]
) -> None:
    """An HTML error page (a proxy's, not the JSON envelope) maps by status, with no code."""
    fake.html_error_next(status=status)
    async with _client(fake) as client:
        with pytest.raises(cls) as info:
            await client.generate_text(model="m", prompt="p")
    _check(info.value, cls, None, status, fake.requests[0].request_id)
    assert f"<title>{status} " in info.value.message  # the start of the page says what went wrong


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (422, InvalidRequestError),
    ],
)
async def test_unknown_code_falls_back_to_status(
    server: LocalServer, status: int, cls: type[APIError]
) -> None:
    """An envelope with an undocumented code maps by HTTP status and keeps the code."""
    server.handler = json_handler(error_body("brand_new_code", "new"), status=status)
    async with _client(server) as client:
        with pytest.raises(cls) as info:
            await client.generate_text(model="m", prompt="p")
    assert type(info.value) is cls
    assert info.value.code == "brand_new_code"
    assert info.value.request_id is None


async def test_code_decides_before_status(fake: FakeNebulaServer) -> None:
    """model_not_found sent with HTTP 400 is a ModelNotFoundError, not a plain InvalidRequestError."""
    fake.fail_next(status=400, code="model_not_found")
    async with _client(fake) as client:
        with pytest.raises(ModelNotFoundError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.status_code == 400


async def test_insufficient_quota_with_402(fake: FakeNebulaServer) -> None:
    """insufficient_quota maps to InsufficientQuotaError whatever the status, here 402."""
    fake.fail_next(status=402, code="insufficient_quota")
    async with _client(fake) as client:
        with pytest.raises(InsufficientQuotaError):
            await client.generate_text(model="m", prompt="p")


async def test_rate_limit_error_carries_retry_after(server: LocalServer) -> None:
    """A 429 that is not retried keeps the server's Retry-After seconds on the error."""
    server.handler = json_handler(error_body("rate_limit_exceeded"), status=429, headers={"Retry-After": "7"})
    async with _client(server) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.retry_after == 7.0


async def test_non_json_200_is_a_server_error(server: LocalServer) -> None:
    """A 200 whose body is not JSON is a ServerError, never a success with empty text."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    server.handler = handler
    async with _client(server) as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")


async def test_success_envelope_missing_fields_is_a_server_error(server: LocalServer) -> None:
    """A success envelope without usage is a ServerError naming what is missing."""
    server.handler = json_handler({"status": "success", "data": {"text": "hi"}})
    async with _client(server) as client:
        with pytest.raises(ServerError, match="usage"):
            await client.generate_text(model="m", prompt="p")


async def test_stream_answered_with_json_success_is_a_server_error(server: LocalServer) -> None:
    """A stream request answered with a plain JSON success (not an event stream) is a ServerError."""
    server.handler = json_handler(success_body("hi"))
    async with _client(server) as client:
        with pytest.raises(ServerError):
            await collect(client.stream_text(model="m", prompt="p"))


@CALLS
async def test_caller_session_with_raise_for_status_still_gets_mapped_errors(
    fake: FakeNebulaServer, call: Call
) -> None:
    """A caller's ClientSession(raise_for_status=True) still gets InsufficientQuotaError, in one request."""
    # Regression (6705a48): a caller's raise_for_status=True must not bypass the error mapping.
    fake.fail_next(3, status=429, code="insufficient_quota", message="no credits")
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        make_client(fake.base_url, session=session) as client,
    ):
        with pytest.raises(InsufficientQuotaError) as info:
            await call(client)
    assert info.value.code == "insufficient_quota"
    assert info.value.status_code == 429
    assert info.value.request_id == fake.requests[0].request_id
    assert len(fake.requests) == 1


@CALLS
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_not_followed(status: int, call: Call) -> None:
    """A 3xx is not followed: one request is sent, and the APIError names the Location and base_url."""
    # Regression (6705a48, "no redirects"): a 3xx was followed, as aiohttp does by default.

    async def moved(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/text/generate":
            return web.Response(status=status, headers={"Location": "/v2/text/generate"})
        return web.json_response(success_body("followed"))  # reached only if the redirect was followed

    async with catch_all(moved) as (base_url, seen), make_client(base_url) as client:
        with pytest.raises(APIError) as info:
            await call(client)
    assert seen == [("POST", "/v1/text/generate")]
    assert type(info.value) is APIError
    assert info.value.status_code == status
    assert "/v2/text/generate" in info.value.message
    assert "base_url" in info.value.message
