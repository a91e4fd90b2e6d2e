"""The pure decoding of answers: what loads() refuses, and errors that quote a head and keep nothing large."""

from __future__ import annotations

import json
import sys

import pytest

from nebula_async import RateLimitError, ServerError, _parse
from nebula_async._errors import APIError, _preview, error_from_response

HEADERS = {"x-request-id": "req_1"}
USAGE = b'{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}'


@pytest.fixture(params=["orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with orjson (when installed) and with the stdlib's json."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
        _parse.loads("0")  # past _first_loads: the fast path is the one in use
    else:
        monkeypatch.setattr(_parse, "_fast_loads", None)
    return str(request.param)


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_loads_refuses_nesting_too_deep_with_value_error(decoder: str, depth: int) -> None:
    """Nesting past what json can recurse into is a ValueError, not RecursionError."""
    raw = "[" * depth + "]" * depth
    try:
        value = _parse.loads(raw)
    except ValueError:
        return
    assert isinstance(value, list)  # orjson reads 1000 deep, and so may json: nothing escapes
    assert depth < 100_000  # but neither reads 100000 deep: that one must be refused


@pytest.mark.parametrize(
    "raw",
    [
        b'"a\xed\xa0\x80"',
        b'"\xed\xbf\xbf"',
        '"a\\ud800"',
        '"\\udfff"',
        '{"\\ud800": 1}',
        '["x", ["\\udc00"]]',
    ],
)
def test_loads_text_refuses_lone_surrogates(decoder: str, raw: bytes | str) -> None:
    """A lone surrogate, as UTF-8 bytes or as an escape, in a value or a key, is a ValueError."""
    with pytest.raises(ValueError, match=r"surrogate|invalid continuation|can't decode|not UTF-8|invalid"):
        _parse.loads_text(raw)
    if isinstance(raw, str):
        with pytest.raises(ValueError, match="surrogate"):
            _parse.loads_text(raw.encode())
    # loads() is json.loads: a batch file's reader, which names a surrogate in its own words, uses it.
    assert isinstance(_parse.loads(raw), (str, dict, list))


def test_the_first_loads_text_of_a_process_is_as_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first decoding, which looks for orjson, refuses a lone surrogate like every later one."""
    # Regression: _first_loads answered with loads(), so a process's first answer let one through.
    monkeypatch.setattr(_parse, "_fast_loads", _parse._first_loads)
    with pytest.raises(ValueError, match=r"surrogate|can't decode|invalid"):
        _parse.loads_text(b'"a\xed\xa0\x80"')
    monkeypatch.setattr(_parse, "_fast_loads", _parse._first_loads)
    assert _parse.loads(b'"a\xed\xa0\x80"') == "a\ud800"  # loads() stays json.loads


@pytest.mark.parametrize(
    ("raw", "text"),
    [('"\\ud83d\\ude00"', "\U0001f600"), (b'"\xf0\x9f\x98\x80"', "\U0001f600"), ('"\\\\ud800"', "\\ud800")],
)
def test_loads_text_accepts_pairs_and_escaped_backslashes(decoder: str, raw: bytes | str, text: str) -> None:
    """A surrogate pair is one character, and an escaped backslash before "ud800" is text."""
    assert _parse.loads_text(raw) == text


@pytest.mark.parametrize("status", [200, 500])
def test_parse_generation_of_deep_nesting_is_a_server_error(decoder: str, status: int) -> None:
    """A nested list as the body is a ServerError whatever its depth, with no context kept."""
    for depth in (999, 1000, 100_000):
        with pytest.raises(ServerError) as info:
            _parse.parse_generation(status, b"[" * depth + b"]" * depth, HEADERS)
        assert info.value.__context__ is None
        assert len(str(info.value)) < 400


def test_parse_event_of_a_deep_error_envelope_is_a_server_error(decoder: str) -> None:
    """A stream event '{"status": "error", "x": [[[...]]]}' quotes a bounded preview, not str() of it."""
    data = '{"status": "error", "x": ' + "[" * 990 + "]" * 990 + "}"
    with pytest.raises(ServerError, match="malformed response: "):
        _parse.parse_event(data, HEADERS)


def test_a_lone_surrogate_gives_the_same_error_on_both_paths(decoder: str) -> None:
    """The non-streaming answer and the stream event with "\\ud800" fail with the same message."""
    answer = b'{"status": "success", "data": {"text": "a\\ud800", "usage": %s}}' % USAGE
    with pytest.raises(ServerError) as plain:
        _parse.parse_generation(200, answer, HEADERS)
    with pytest.raises(ServerError) as event:
        _parse.parse_event('{"text": "a\\ud800", "finish_reason": null}', HEADERS)
    why = "the answer is not JSON (a JSON string holds a lone surrogate, which is not text)"
    assert str(plain.value).startswith(f"malformed response: {why}")
    assert str(event.value).startswith(f"malformed response: {why}")


def test_a_body_that_is_not_json_keeps_no_context(decoder: str) -> None:
    """The error for a large non-JSON body has no context: a JSONDecodeError would hold the whole text."""
    raw = b"<html>" + b"x" * 1_000_000
    for status in (200, 502):
        with pytest.raises(ServerError) as info:
            _parse.parse_generation(status, raw, HEADERS)
        assert info.value.__context__ is None
        assert info.value.__cause__ is None
        assert sum(sys.getsizeof(v) for v in vars(info.value).values()) < 4096


def test_preview_reads_only_the_head() -> None:
    """A preview is 200 characters of the head, whatever the body's size or shape."""
    assert _preview(b"  a \n b  " + b"c" * 10_000) == "a b " + "c" * 196 + "..."
    assert _preview(b"") == "empty body"
    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    assert _preview(nested).startswith("[[")  # no RecursionError
    assert len(_preview({"k": "v" * 100_000})) <= 203


def test_preview_of_a_blank_head_says_it_was_cut() -> None:
    """A body whose first kilobyte is blank is previewed as cut, not as an empty body."""
    assert _preview(b" " * 5000 + b"late") == "blank for 1024 bytes..."


@pytest.mark.parametrize(
    ("status", "cls"), [(200, ServerError), (429, RateLimitError), (502, ServerError), (418, APIError)]
)
def test_too_large_keeps_the_status_class(status: int, cls: type[APIError]) -> None:
    """An answer past its cap has the status's class (ServerError for a 200), its Retry-After, the cap."""
    headers = {"x-request-id": "req_9", "retry-after": "3"}  # lower case: aiohttp's are case-insensitive
    error = _parse.too_large(status, b"<h1>busy</h1>", headers, 65536)
    assert type(error) is cls
    assert (error.status_code, error.request_id, error.retry_after) == (status, "req_9", 3.0)
    assert str(error).startswith("the answer exceeded 65536 bytes, and was not read further: <h1>busy</h1>")


def test_error_from_response_previews_a_decoded_value_boundedly() -> None:
    """A decoded body without an error object is quoted through a bounded repr."""
    body = {"detail": "x" * 100_000, "deep": json.loads("[" * 900 + "]" * 900)}
    error = error_from_response(500, body, HEADERS)
    assert type(error) is ServerError
    assert len(error.message) < 300
