"""Regression tests for the review fixes of 6705a48 needing no socket: checks, mapping, SSE decoding."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from multidict import CIMultiDict

from nebula_async import APIError, AsyncNebulaClient, RetryPolicy, ServerError, Timeout
from nebula_async._errors import error_from_response
from nebula_async._sse import ServerSentEvent, SSEDecoder
from tests.conftest import MockAPI
from tests.helpers import success_body
from tests.unit._support import ENDPOINT, SECRET_KEY, make_client

NO_HEADERS: CIMultiDict[str] = CIMultiDict()
BOM = b"\xef\xbb\xbf"
HTML_PAGE = b"<html><head><title>{0}</title></head><body><h1>{0}</h1><hr>nginx</body></html>"


def _headers_named(sent: dict[str, Any], name: str) -> list[str]:
    """Return every value sent for header ``name``, compared case-insensitively."""
    return [value for key, value in sent["headers"].items() if key.lower() == name.lower()]


# --- default_headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nX-Evil: 1", "a\rb", "a\x00b"])
def test_default_header_value_with_a_line_break_is_rejected(value: str) -> None:
    """A default_headers value holding CR, LF or NUL is rejected at construction, naming the header."""
    with pytest.raises(ValueError, match="X-Team"):
        make_client(default_headers={"X-Team": value})


@pytest.mark.parametrize("name", ["X Team", "X-Team:", "", "X-Tëam"])
def test_default_header_with_an_invalid_name_is_rejected(name: str) -> None:
    """A default_headers name that is not an HTTP token (a space, a colon, empty, non-ASCII) is rejected."""
    with pytest.raises(ValueError, match="not a valid header name"):
        make_client(default_headers={name: "a"})


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"])
def test_default_headers_may_not_set_authorization(name: str) -> None:
    """Authorization in default_headers, in any case, is rejected with a message pointing to api_key=."""
    with pytest.raises(ValueError, match="api_key=") as info:
        make_client(default_headers={name: "Bearer OTHER"})
    assert "OTHER" not in str(info.value)


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_lower_case_user_agent_replaces_ours(mock_api: MockAPI, stream: bool) -> None:
    """A lower-case 'user-agent' in default_headers is the only User-Agent sent, not one beside ours."""
    if stream:
        mock_api.post(
            ENDPOINT,
            body=b'data: {"text": "x", "finish_reason": "stop"}\n\n',
            content_type="text/event-stream",
        )
    else:
        mock_api.post(ENDPOINT, payload=success_body())
    async with make_client(default_headers={"user-agent": "my-app/2.0"}) as client:
        if stream:
            async with client.stream_text(model="m", prompt="p") as s:
                assert [c.text async for c in s] == ["x"]
        else:
            await client.generate_text(model="m", prompt="p")
    [sent] = mock_api.sent()
    assert _headers_named(sent, "User-Agent") == ["my-app/2.0"]
    assert _headers_named(sent, "Authorization") == [f"Bearer {SECRET_KEY}"]


# --- api_key --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-ключ-1234", "sk-caf\u00e9-1234", "sk-\u00a0nbsp-1234", "sk-tab\t1234"])
def test_key_that_http_cannot_carry_is_rejected_without_echoing_it(key: str) -> None:
    """A non-ASCII or whitespace-holding api_key raises ValueError whose message does not contain the key."""
    with pytest.raises(ValueError, match="api_key") as info:
        AsyncNebulaClient(key)
    error = info.value
    assert key not in str(error)
    assert key not in repr(error)
    assert error.__cause__ is None
    assert error.__context__ is None or key not in repr(error.__context__)


# --- base_url -------------------------------------------------------------------------------------


def test_bad_base_url_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unusable NEBULA_BASE_URL raises ValueError naming NEBULA_BASE_URL, not the base_url= argument."""
    monkeypatch.setenv("NEBULA_BASE_URL", "ftp://api.example/v1")
    with pytest.raises(ValueError, match="NEBULA_BASE_URL"):
        AsyncNebulaClient(SECRET_KEY)


def test_bad_base_url_argument_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unusable base_url= names base_url, even with a valid NEBULA_BASE_URL set."""
    monkeypatch.setenv("NEBULA_BASE_URL", "https://api.example/v1")
    with pytest.raises(ValueError, match=r"^base_url"):
        AsyncNebulaClient(SECRET_KEY, base_url="ftp://api.example/v1")


@pytest.mark.parametrize("source", ["argument", "environment"])
@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2-pw@api.example/v1",
        "https://:hunter2-pw@api.example/v1",
        "ftp://user:hunter2-pw@api.example/v1",
        "https://user:hunter2-pw@api.example:99999/v1",
    ],
)
def test_base_url_with_credentials_is_rejected_without_echoing_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, source: str
) -> None:
    """A base_url holding user:password@ is rejected, pointing to api_key=, never showing the password."""
    if source == "environment":
        monkeypatch.setenv("NEBULA_BASE_URL", url)
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {"base_url": url}
    with pytest.raises(ValueError, match=r"(?i)base_url") as info:
        AsyncNebulaClient(SECRET_KEY, **kwargs)
    if ":99999" not in url:  # a bad port is reported first, as itself
        assert "pass the key as api_key=" in str(info.value)
    assert "hunter2-pw" not in str(info.value)
    assert "hunter2-pw" not in repr(info.value.__cause__)
    assert "hunter2-pw" not in repr(info.value.__context__)


def test_base_url_with_only_a_user_name_is_rejected() -> None:
    """A base_url with ``user@`` is rejected like one with a password, suggesting api_key=."""
    with pytest.raises(ValueError, match=r"credentials.*api_key="):
        AsyncNebulaClient(SECRET_KEY, base_url="https://user@api.example/v1")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1:-1/v1",
        "http://127.0.0.1:abc/v1",
        "http://[::1/v1",
        "http://::1:8080/v1",
        "http://[::1]:99999/v1",
        "http:///v1",
        "http://api example/v1",
    ],
)
def test_base_url_with_a_bad_port_or_host_is_rejected_at_construction(url: str) -> None:
    """A port out of range or not a number, or a malformed IPv6 host, is a ValueError naming base_url."""
    with pytest.raises(ValueError, match=r"^base_url"):
        AsyncNebulaClient(SECRET_KEY, base_url=url)


@pytest.mark.parametrize("url", ["http://[::1]:8080/v1", "http://[::1]/v1", "https://api.example:443/v1/"])
def test_base_url_with_ipv6_or_explicit_port_is_accepted(url: str) -> None:
    """A bracketed IPv6 host and an explicit in-range port are accepted; the trailing slash is dropped."""
    assert AsyncNebulaClient(SECRET_KEY, base_url=url).base_url == url.rstrip("/")


# --- timeout, retry and extra_body ----------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, -1, float("inf"), float("nan")])
def test_timeout_number_that_is_not_positive_names_timeout(value: float) -> None:
    """Timeout.coerce and timeout= reject 0, negatives and non-finite numbers, naming 'timeout'."""
    with pytest.raises(ValueError, match=r"^timeout must be"):
        Timeout.coerce(value)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        AsyncNebulaClient(SECRET_KEY, timeout=value)


def test_retry_policy_initial_delay_above_max_delay_is_rejected() -> None:
    """RetryPolicy(initial_delay=5, max_delay=1) is a ValueError naming both; equal delays are fine."""
    with pytest.raises(ValueError, match=r"initial_delay.*max_delay"):
        RetryPolicy(initial_delay=5, max_delay=1)
    assert RetryPolicy(initial_delay=1, max_delay=1).initial_delay == 1


@pytest.mark.parametrize(
    ("extra_body", "error"),
    [
        (["x"], TypeError),
        ("x", TypeError),
        ({"x": float("nan")}, ValueError),
        ({"x": float("inf")}, ValueError),
    ],
)
async def test_bad_extra_body_is_rejected_before_sending(
    mock_api: MockAPI, extra_body: Any, error: type[Exception]
) -> None:
    """extra_body not a dict is a TypeError, a NaN or infinity a ValueError; nothing is sent."""
    async with make_client() as client:
        with pytest.raises(error, match="extra_body"):
            client.stream_text(model="m", prompt="p", extra_body=extra_body)
        with pytest.raises(error, match="extra_body"):
            await client.generate_text(model="m", prompt="p", extra_body=extra_body)
    assert mock_api.sent() == []


# --- error_from_response --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [405, 409, 413, 402, 418])
def test_html_page_with_an_unmapped_4xx_is_an_api_error_not_a_server_error(status: int) -> None:
    """A proxy's HTML page with an unmapped 4xx status is a plain APIError, as the same envelope would be."""
    page = error_from_response(status, HTML_PAGE.replace(b"{0}", str(status).encode()), NO_HEADERS)
    envelope = error_from_response(status, {"status": "error", "error": {"message": "no"}}, NO_HEADERS)
    assert type(page) is APIError
    assert type(envelope) is APIError
    assert page.status_code == status


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_html_page_with_a_5xx_is_a_server_error(status: int) -> None:
    """A proxy's HTML page with a 5xx status is a ServerError carrying the status."""
    error = error_from_response(status, HTML_PAGE.replace(b"{0}", b"Bad Gateway"), NO_HEADERS)
    assert isinstance(error, ServerError)
    assert error.status_code == status
    assert "Bad Gateway" in error.message


@pytest.mark.parametrize(
    "body", [b"<html>ok</html>", {"hello": "world"}, [1, 2], b""], ids=["html", "dict", "list", "empty"]
)
def test_200_that_is_not_an_envelope_is_a_server_error(body: object) -> None:
    """A 200 whose body is not the API's envelope is a ServerError: the API is broken, not the request."""
    error = error_from_response(200, body, NO_HEADERS)
    assert type(error) is ServerError
    assert error.status_code == 200


def test_redirect_error_names_the_location_and_base_url() -> None:
    """A 3xx without an envelope gives an APIError naming the Location and suggesting base_url."""
    error = error_from_response(301, b"", CIMultiDict({"Location": "https://new.example/v1/text/generate"}))
    assert type(error) is APIError
    assert error.status_code == 301
    assert "https://new.example/v1/text/generate" in error.message
    assert "base_url" in error.message


# --- SSEDecoder -----------------------------------------------------------------------------------


def _event(text: str, finish_reason: str | None = "stop") -> bytes:
    return b"data: " + json.dumps({"text": text, "finish_reason": finish_reason}).encode() + b"\n\n"


def _feed(decoder: SSEDecoder, *parts: bytes) -> list[ServerSentEvent]:
    return [event for part in parts for event in decoder.feed(part)]


@pytest.mark.parametrize("cut", range(1, len(BOM) + 3))
def test_bom_split_anywhere_across_reads_is_dropped(cut: int) -> None:
    """A UTF-8 BOM opening the stream is dropped wherever a read boundary cuts it (or the event after it)."""
    body = BOM + _event("Hi")
    split = _feed(SSEDecoder(), body[:cut], body[cut:])
    assert split == _feed(SSEDecoder(), _event("Hi"))
    assert [e.data for e in split] == ['{"text": "Hi", "finish_reason": "stop"}']


def test_bom_in_byte_sized_reads_and_after_an_empty_read_is_dropped() -> None:
    """A BOM sent one byte per read, after an empty read, is still recognised and dropped."""
    body = BOM + _event("Hi")
    decoder = SSEDecoder()
    events = _feed(decoder, b"", *(body[i : i + 1] for i in range(len(body))))
    assert events == _feed(SSEDecoder(), _event("Hi"))
    assert not decoder.pending()


def test_bom_is_dropped_only_at_the_start() -> None:
    """Only the stream's first bytes may be a BOM: one later on stays part of the line it opens."""
    decoder = SSEDecoder()
    events = _feed(decoder, BOM + _event("a", None), BOM + _event("b"))
    assert [json.loads(e.data)["text"] for e in events] == ["a"]  # "\ufeffdata" is an unknown field


def test_long_line_in_small_reads_is_decoded_in_linear_time() -> None:
    """A 3 MiB line fed in 1 KiB reads decodes in well under a second (quadratic re-joining took seconds)."""
    payload = _event("x" * (3 * 1024 * 1024))
    decoder = SSEDecoder()
    started = time.perf_counter()
    events = _feed(decoder, *(payload[i : i + 1024] for i in range(0, len(payload), 1024)))
    elapsed = time.perf_counter() - started
    assert len(events) == 1
    assert len(json.loads(events[0].data)["text"]) == 3 * 1024 * 1024
    assert elapsed < 1.0
