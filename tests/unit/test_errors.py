"""Error mapping: one class per code on every path, readable one-line messages, no leaked key."""

from __future__ import annotations

import asyncio
import pickle
import re
import traceback
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import nebula_async
from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ContextLengthExceededError,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NebulaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from nebula_async._errors import error_from_response
from tests.conftest import MockAPI
from tests.helpers import KNOWN_CODES, SECRET_KEY, error_body, sse
from tests.unit._support import ENDPOINT, consume, mock_client

NO_HEADERS: CIMultiDict[str] = CIMultiDict()
README = Path(__file__).resolve().parents[2] / "README.md"

CODES = {code: cls for code, _, cls in KNOWN_CODES}
TYPICAL_STATUS = {code: status for code, status, _ in KNOWN_CODES}
STATUSES: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidRequestError,
    429: RateLimitError,
    500: ServerError,
    502: ServerError,
    503: ServerError,
    504: ServerError,
}


# --- the class tree ------------------------------------------------------------------------------


def _readme_error_tree() -> dict[str, str]:
    """Return each error class of the README's tree, mapped to the class it sits under."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index("```\nNebulaError\n") + 4 : text.index("```", text.index("NebulaError\n"))]
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (the column of a name, the name)
    for line in block.splitlines():
        match = re.search(r"[A-Z][A-Za-z]*Error\b", line)
        if match is None:
            continue
        while stack and stack[-1][0] >= match.start():
            stack.pop()
        if stack:
            parents[match.group()] = stack[-1][1]
        stack.append((match.start(), match.group()))
    return parents


def test_errors_subclass_what_the_readme_tree_says() -> None:
    """Every error class's direct base is its parent in the README's tree, and the tree names every error."""
    tree = _readme_error_tree()
    # BatchInputError is bad input (a ValueError, raised before anything is sent), not an API error.
    exported = {name for name in nebula_async.__all__ if name.endswith("Error")} - {"BatchInputError"}
    assert set(tree) | {"NebulaError"} == exported
    for name, parent in tree.items():
        assert getattr(nebula_async, name).__bases__ == (getattr(nebula_async, parent),), name


def test_quota_is_not_a_rate_limit_and_connection_is_not_api() -> None:
    """InsufficientQuotaError is not a RateLimitError, and transport errors are not APIErrors."""
    assert not issubclass(InsufficientQuotaError, RateLimitError)
    assert not issubclass(APIConnectionError, APIError)


# --- error_from_response: the mapping table ------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("invalid_request", 400, InvalidRequestError),
        ("invalid_request", 422, InvalidRequestError),
        ("invalid_request", 500, InvalidRequestError),
        ("model_not_found", 404, ModelNotFoundError),
        ("model_not_found", 400, ModelNotFoundError),
        ("context_length_exceeded", 400, ContextLengthExceededError),
        ("context_length_exceeded", 413, ContextLengthExceededError),
        ("rate_limit_exceeded", 429, RateLimitError),
        ("rate_limit_exceeded", 503, RateLimitError),
        ("insufficient_quota", 429, InsufficientQuotaError),
        ("insufficient_quota", 402, InsufficientQuotaError),
        ("insufficient_quota", 403, InsufficientQuotaError),
        ("insufficient_quota", 200, InsufficientQuotaError),
    ],
)
def test_code_decides_first(code: str, status: int, expected: type[APIError]) -> None:
    """The envelope's code picks the class whatever the HTTP status."""
    err = error_from_response(status, error_body(code, "msg"), NO_HEADERS)
    assert type(err) is expected
    assert err.code == code
    assert err.status_code == status


def test_context_length_is_an_invalid_request() -> None:
    """context_length_exceeded is caught by `except InvalidRequestError`."""
    err = error_from_response(400, error_body("context_length_exceeded", "too long"), NO_HEADERS)
    assert isinstance(err, InvalidRequestError)
    assert isinstance(err, ContextLengthExceededError)


def test_insufficient_quota_429_is_not_a_rate_limit() -> None:
    """A 429 saying insufficient_quota is an InsufficientQuotaError, not caught as RateLimitError."""
    err = error_from_response(429, error_body("insufficient_quota", "no credits"), NO_HEADERS)
    assert isinstance(err, InsufficientQuotaError)
    assert not isinstance(err, RateLimitError)


@pytest.mark.parametrize("status", sorted(STATUSES))
@pytest.mark.parametrize(
    "body",
    [
        error_body("some_future_code", "m"),
        {"status": "error", "error": {"message": "m"}},
        {"status": "error", "error": {"code": None, "message": "m"}},
        {"status": "error", "error": {"code": "", "message": "m"}},
        {"detail": "not our envelope"},
        {},
        [],
        b"",
        b"plain text error",
    ],
    ids=[
        "unknown-code",
        "no-code",
        "null-code",
        "empty-code",
        "foreign-json",
        "empty-object",
        "json-list",
        "empty-body",
        "text-body",
    ],
)
def test_status_decides_when_code_is_unknown_or_absent(status: int, body: Any) -> None:
    """Without a known code the HTTP status picks the class."""
    err = error_from_response(status, body, NO_HEADERS)
    assert type(err) is STATUSES[status]
    assert err.status_code == status


@pytest.mark.parametrize("status", [418, 409])
def test_unmapped_4xx_is_still_an_api_error(status: int) -> None:
    """A 4xx with no mapping of its own still raises an APIError carrying the status."""
    err = error_from_response(status, error_body("teapot", "m"), NO_HEADERS)
    assert isinstance(err, APIError)
    assert err.status_code == status


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_html_5xx_page_is_a_server_error_on_one_line(status: int) -> None:
    """A proxy's HTML 5xx page is a ServerError whose one-line message quotes the start of the page."""
    page = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>" + b"x" * 5000 + b"</body></html>"
    err = error_from_response(status, page, NO_HEADERS)
    assert type(err) is ServerError
    assert err.status_code == status
    assert err.code is None
    assert "502 Bad Gateway" in str(err)
    assert "\n" not in str(err)
    assert len(str(err)) < 600  # a whole page must not land in a log line


@pytest.mark.parametrize("status", [405, 409, 413, 402, 418])
def test_html_page_with_an_unmapped_4xx_is_an_api_error_not_a_server_error(status: int) -> None:
    """A proxy's HTML page with an unmapped 4xx status is a plain APIError, as the same envelope would be."""
    # Regression (review of 6705a48): such a page was taken for a ServerError.
    page = b"<html><head><title>%d</title></head><body><h1>%d</h1><hr>nginx</body></html>" % (status, status)
    envelope = error_from_response(status, {"status": "error", "error": {"message": "no"}}, NO_HEADERS)
    err = error_from_response(status, page, NO_HEADERS)
    assert type(err) is APIError
    assert type(envelope) is APIError
    assert err.status_code == status


@pytest.mark.parametrize(
    "body", [b"<html>ok</html>", {"hello": "world"}, [1, 2], b""], ids=["html", "dict", "list", "empty"]
)
def test_200_that_is_not_an_envelope_is_a_server_error(body: object) -> None:
    """A 200 whose body is not the API's envelope is a ServerError: the API is broken, not the request."""
    err = error_from_response(200, body, NO_HEADERS)
    assert type(err) is ServerError
    assert err.status_code == 200


def test_redirect_error_names_the_location_and_base_url() -> None:
    """A 3xx without an envelope gives an APIError naming the Location and suggesting base_url."""
    err = error_from_response(301, b"", CIMultiDict({"Location": "https://new.example/v1/text/generate"}))
    assert type(err) is APIError
    assert err.status_code == 301
    assert "https://new.example/v1/text/generate" in err.message
    assert "base_url" in err.message


@pytest.mark.parametrize(("code", "expected"), list(CODES.items()))
def test_200_error_envelope_maps_like_an_http_error(code: str, expected: type[APIError]) -> None:
    """A 200 whose envelope says error maps to the same class as the HTTP error with that code."""
    err = error_from_response(200, error_body(code, "m"), NO_HEADERS)
    assert type(err) is expected
    assert err.status_code == 200


def test_error_attributes() -> None:
    """An APIError carries code, message, details, status, request id and Retry-After seconds."""
    headers = CIMultiDict({"X-Request-Id": "req_9", "Retry-After": "7"})
    err = error_from_response(429, error_body("rate_limit_exceeded", "Slow down", tier="free"), headers)
    assert isinstance(err, RateLimitError)
    assert err.code == "rate_limit_exceeded"
    assert err.message == "Slow down"
    assert dict(err.details) == {"tier": "free"}
    assert err.status_code == 429
    assert err.request_id == "req_9"
    assert err.retry_after == 7.0


def test_missing_details_and_request_id() -> None:
    """Without details or x-request-id, details is an empty mapping and request_id is None."""
    err = error_from_response(
        400, {"status": "error", "error": {"code": "invalid_request", "message": "m"}}, {}
    )
    assert dict(err.details) == {}
    assert err.request_id is None
    assert err.retry_after is None


def test_str_is_one_readable_line() -> None:
    """str(err) reads `code: message (HTTP status, request_id=...)`."""
    headers = CIMultiDict({"x-request-id": "req_1"})
    err = error_from_response(429, error_body("rate_limit_exceeded", "Too many requests"), headers)
    assert str(err) == "rate_limit_exceeded: Too many requests (HTTP 429, request_id=req_1)"


def test_str_without_request_id() -> None:
    """str(err) leaves out the request id when there is none."""
    err = error_from_response(404, error_body("model_not_found", "No such model"), NO_HEADERS)
    assert str(err) == "model_not_found: No such model (HTTP 404)"


def test_str_stays_one_line_for_a_multiline_message() -> None:
    """A server message with line breaks still gives a one-line str(err), so a log line cannot be forged."""
    err = error_from_response(
        400, error_body("invalid_request", "bad\nINFO fake log line\r\nend"), NO_HEADERS
    )
    assert "\n" not in str(err)
    assert "\r" not in str(err)


def test_long_message_is_bounded() -> None:
    """A huge server message is cut so str(err) stays a readable size."""
    err = error_from_response(400, error_body("invalid_request", "y" * 100_000), NO_HEADERS)
    assert len(str(err)) < 1_000


@pytest.mark.parametrize(
    "err",
    [
        RateLimitError(
            "Too many",
            code="rate_limit_exceeded",
            details={"a": 1},
            status_code=429,
            request_id="r1",
            retry_after=2.5,
        ),
        ContextLengthExceededError("long", code="context_length_exceeded", status_code=400),
        ServerError("down", status_code=503, request_id="r2"),
        InsufficientQuotaError("broke", code="insufficient_quota", status_code=429),
        APIConnectionError("refused", request_id="r3"),
        APITimeoutError("slow", request_id="r4"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_pickle_round_trip_keeps_attributes(err: NebulaError) -> None:
    """An error survives pickling (multiprocessing, checkpoints) with its class, attributes and str."""
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)
    assert vars(copy) == vars(err)
    if isinstance(err, APIError):
        assert isinstance(copy, APIError)
        assert (
            copy.code,
            copy.message,
            dict(copy.details),
            copy.status_code,
            copy.request_id,
            copy.retry_after,
        ) == (
            err.code,
            err.message,
            dict(err.details),
            err.status_code,
            err.request_id,
            err.retry_after,
        )


# --- through the client: the same class for the same code on every path --------------------------


async def _http_error(mock_api: MockAPI, code: str) -> APIError:
    mock_api.post(
        ENDPOINT,
        status=TYPICAL_STATUS[code],
        payload=error_body(code, "msg"),
        headers={"x-request-id": "req_h"},
    )
    async with mock_client() as client:
        with pytest.raises(APIError) as info:
            await client.generate_text(model="m", prompt="p")
    return info.value


async def _envelope_200(mock_api: MockAPI, code: str) -> APIError:
    mock_api.post(ENDPOINT, status=200, payload=error_body(code, "msg"), headers={"x-request-id": "req_e"})
    async with mock_client() as client:
        with pytest.raises(APIError) as info:
            await client.generate_text(model="m", prompt="p")
    return info.value


async def _stream_http_error(mock_api: MockAPI, code: str) -> APIError:
    mock_api.post(
        ENDPOINT,
        status=TYPICAL_STATUS[code],
        payload=error_body(code, "msg"),
        headers={"x-request-id": "req_s"},
    )
    async with mock_client() as client:
        with pytest.raises(APIError) as info:
            await consume(client, model="m", prompt="p")
    return info.value


async def _mid_stream(mock_api: MockAPI, code: str) -> APIError:
    body = sse({"text": "partial", "finish_reason": None}, error_body(code, "msg"))
    mock_api.post(ENDPOINT, body=body, content_type="text/event-stream", headers={"x-request-id": "req_m"})
    received: list[str] = []
    async with mock_client() as client:
        with pytest.raises(APIError) as info:
            await consume(client, received, model="m", prompt="p")
    assert received == ["partial"]  # the text before the error event was delivered first
    return info.value


PATHS = {
    "http-error": _http_error,
    "200-envelope": _envelope_200,
    "stream-http-error": _stream_http_error,
    "mid-stream-event": _mid_stream,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("code", "expected"), list(CODES.items()))
async def test_same_class_for_same_code_on_every_path(
    mock_api: MockAPI, path: str, code: str, expected: type[APIError]
) -> None:
    """An error code raises the same class, with its code and message, whichever way it arrives."""
    err = await PATHS[path](mock_api, code)
    assert type(err) is expected
    assert err.code == code
    assert err.message == "msg"
    assert err.request_id is not None
    assert len(mock_api.sent()) == 1


async def test_html_502_through_the_client(mock_api: MockAPI) -> None:
    """An HTML 502 from a proxy raises ServerError with the status and the request id."""
    mock_api.post(
        ENDPOINT,
        status=502,
        body="<html><body><h1>502 Bad Gateway</h1></body></html>",
        content_type="text/html",
        headers={"x-request-id": "req_gw"},
    )
    async with mock_client() as client:
        with pytest.raises(ServerError) as info:
            await client.generate_text(model="m", prompt="p")
    assert info.value.status_code == 502
    assert info.value.request_id == "req_gw"
    assert "\n" not in str(info.value)
    assert len(mock_api.sent()) == 1


@pytest.mark.parametrize(
    "body", [b"not json", b'{"status": "success"}', b'{"unexpected": 1}', b"[1, 2]", b'{"status": "error"}']
)
async def test_broken_200_is_a_server_error(mock_api: MockAPI, body: bytes) -> None:
    """A 200 that is neither a success nor an error envelope raises ServerError, never a silent success."""
    mock_api.post(ENDPOINT, status=200, body=body)
    async with mock_client() as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")


async def test_stream_answered_with_json_200_is_a_server_error(mock_api: MockAPI) -> None:
    """A stream request answered by a JSON success instead of an event stream raises ServerError."""
    mock_api.post(ENDPOINT, status=200, payload={"status": "success", "data": {"text": "x"}})
    async with mock_client() as client:
        with pytest.raises(ServerError):
            await consume(client, model="m", prompt="p")


async def test_stream_eof_before_finish_is_a_connection_error(mock_api: MockAPI) -> None:
    """A stream whose body ends before an event with finish_reason raises APIConnectionError."""
    body = sse({"text": "a", "finish_reason": None})
    mock_api.post(ENDPOINT, body=body, content_type="text/event-stream")
    chunks: list[str] = []
    async with mock_client() as client:
        with pytest.raises(APIConnectionError):
            await consume(client, chunks, model="m", prompt="p")
    assert chunks == ["a"]


async def test_connection_refused_is_a_connection_error(mock_api: MockAPI) -> None:
    """A refused connection raises APIConnectionError, not APITimeoutError."""
    mock_api.post(ENDPOINT, exception=aiohttp.ClientConnectionError("Connection refused"))
    async with mock_client() as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert type(info.value) is APIConnectionError


async def test_timeout_is_a_timeout_error(mock_api: MockAPI) -> None:
    """A timeout raised by the transport becomes APITimeoutError."""
    mock_api.post(ENDPOINT, exception=asyncio.TimeoutError())
    async with mock_client() as client:
        with pytest.raises(APITimeoutError):
            await client.generate_text(model="m", prompt="p")


# --- the key never leaks -------------------------------------------------------------------------


def _leaks(err: BaseException) -> list[str]:
    """Return every rendering of ``err`` a user might print or log that contains the key."""
    renderings = {
        "str": str(err),
        "repr": repr(err),
        "args": repr(err.args),
        "vars": repr(vars(err)),
        "traceback": "".join(traceback.format_exception(err)),
    }
    return [name for name, text in renderings.items() if SECRET_KEY in text]


ERROR_ANSWERS: list[dict[str, Any]] = [
    {"status": 401, "payload": error_body("invalid_api_key", "Invalid API key")},
    {"status": 403, "payload": error_body("forbidden", "nope")},
    {"status": 429, "payload": error_body("rate_limit_exceeded", "slow"), "headers": {"Retry-After": "999"}},
    {"status": 429, "payload": error_body("insufficient_quota", "broke")},
    {"status": 400, "payload": error_body("invalid_request", "bad", model="x")},
    {"status": 200, "payload": error_body("model_not_found", "gone")},
    {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
    {"status": 200, "body": "garbage"},
    {"exception": aiohttp.ClientConnectionError("Connection refused")},
    {"exception": asyncio.TimeoutError()},
]


@pytest.mark.parametrize("answer", ERROR_ANSWERS)
async def test_api_key_never_in_a_raised_error(mock_api: MockAPI, answer: dict[str, Any]) -> None:
    """No error raised by a call shows the API key in its str, repr, args, attributes or traceback."""
    mock_api.post(ENDPOINT, **answer)
    async with mock_client(SECRET_KEY) as client:
        with pytest.raises(NebulaError) as info:
            await client.generate_text(model="m", prompt="p")
    assert _leaks(info.value) == []
    assert len(mock_api.sent()) == 1


async def test_api_key_never_in_a_raised_stream_error(mock_api: MockAPI) -> None:
    """A mid-stream error event raised from a stream does not show the API key either."""
    body = sse({"text": "a", "finish_reason": None}, error_body("rate_limit_exceeded", "slow"))
    mock_api.post(ENDPOINT, body=body, content_type="text/event-stream")
    async with mock_client(SECRET_KEY) as client:
        with pytest.raises(RateLimitError) as info:
            await consume(client, model="m", prompt="p")
    assert _leaks(info.value) == []


async def test_api_key_never_in_a_transport_error_that_carries_request_headers(mock_api: MockAPI) -> None:
    """An aiohttp error holding the request headers (TooManyRedirects) is wrapped without the key."""
    sent_headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {SECRET_KEY}"}))
    # What aiohttp raises after following too many redirects: request_info holds the sent headers.
    request_info = aiohttp.RequestInfo(URL(ENDPOINT), "POST", sent_headers, URL(ENDPOINT))
    mock_api.post(ENDPOINT, exception=aiohttp.TooManyRedirects(request_info, (), status=307, message="loop"))
    async with mock_client(SECRET_KEY) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    assert _leaks(info.value) == []
