"""Fuzz the JSON envelope, stream events and Retry-After: only the SDK's errors come out, and only text.

Short in CI; NEBULA_FUZZ_EXAMPLES=20000 runs the long form (see tests/property/_support.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nebula_async import APIError, TextChunk, Usage, _parse
from nebula_async._errors import parse_retry_after
from tests.property._support import fuzz

# Any character, lone surrogates included: json.dumps escapes them, or writes them raw for the
# surrogatepass encoding below, both of which a server could send.
_TEXT = st.text(st.characters(codec=None), max_size=8) | st.sampled_from(["\ud800", "a\udfff", "\U0001f600"])
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)
)
_COUNT = st.integers(-2, 2**70) | _SCALARS
_USAGE = st.fixed_dictionaries(
    {}, optional={"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT}
)
_ERROR = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from(["rate_limit_exceeded", "server_error", "invalid_request", ""]) | _JSON,
        "message": _TEXT | _JSON,
        "details": _JSON,
    },
)
# Shaped like the API's answers, so that examples reach past the first check.
_ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["success", "error"]) | _JSON,
        "data": st.fixed_dictionaries({}, optional={"text": _TEXT | _JSON, "usage": _USAGE | _JSON}) | _JSON,
        "error": _ERROR | _JSON,
    },
)
# Well-formed but for what their text may hold: the examples that reach the end of the parsers, where
# an answer's text is returned (a lone surrogate must not be). Without them, few examples get there.
_COUNTS = st.integers(0, 10**6)
_SUCCESS = st.fixed_dictionaries(
    {
        "status": st.just("success"),
        "data": st.fixed_dictionaries(
            {
                "text": _TEXT,
                "usage": st.fixed_dictionaries(
                    {"prompt_tokens": _COUNTS, "completion_tokens": _COUNTS, "total_tokens": _COUNTS}
                ),
            }
        ),
    }
)
_CHUNK = st.fixed_dictionaries({"text": _TEXT}, optional={"finish_reason": st.none() | st.just("stop")})
_EVENT = st.fixed_dictionaries(
    {},
    optional={
        "text": _TEXT | _JSON,
        "finish_reason": st.none() | st.just("stop") | _JSON,
        "usage": _USAGE | _JSON,
        "error": _ERROR | _JSON,
        "status": st.just("error") | _JSON,
    },
)


def _nested(depth: int) -> bytes:
    return b'{"status": "success", "data": ' + b"[" * depth + b"]" * depth + b"}"


@st.composite
def _raw(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """A value as a server might write it: JSON (escaped, or raw UTF-8), mangled, or arbitrary bytes."""
    kind = draw(st.sampled_from(["json", "raw-utf8", "mangled", "bytes", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        return _nested(draw(st.integers(0, 5000)))
    value = draw(values)
    text = json.dumps(value, ensure_ascii=kind == "json")
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "mangled" and raw:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + draw(st.integers(0, 3)) :]
    return raw


_DECODERS = st.sampled_from(["orjson", "stdlib"])


def _using(decoder: str) -> Any:
    """Return what _parse._fast_loads should be for ``decoder`` (orjson's loads, or None)."""
    if decoder == "stdlib":
        return None
    try:
        from orjson import loads
    except ImportError:  # pragma: no cover - depends on what is installed
        return None
    return loads


@fuzz(150)
@given(
    _raw(_SUCCESS | _ENVELOPE | _JSON), st.sampled_from([200, 200, 400, 429, 500, 502, 301, 204]), _DECODERS
)
def test_fuzz_parse_generation_gives_text_or_an_api_error(raw: bytes, status: int, decoder: str) -> None:
    """Any body, any status: text (encodable) and usage, or an APIError with a short message."""
    saved, _parse._fast_loads = _parse._fast_loads, _using(decoder)
    try:
        try:
            text, usage = _parse.parse_generation(status, raw, {"x-request-id": "req_f"})
        except APIError as err:
            error: APIError | None = err
        else:
            error = None
            assert status == 200
            text.encode("utf-8")
            assert isinstance(usage, Usage)
    finally:
        _parse._fast_loads = saved
    if error is not None:
        assert len(str(error)) < 1500
        assert error.__context__ is None or len(repr(error.__context__)) < 1500


@fuzz(150)
@given(_raw(_CHUNK | _EVENT | _JSON), _DECODERS)
def test_fuzz_parse_event_gives_a_chunk_or_an_api_error(raw: bytes, decoder: str) -> None:
    """Any event data (decoded as the SSE decoder would) gives a chunk of text, or an APIError."""
    try:
        data = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # the decoder refuses such a line before it is an event
    saved, _parse._fast_loads = _parse._fast_loads, _using(decoder)
    try:
        try:
            chunk = _parse.parse_event(data, {})
        except APIError as err:
            error: APIError | None = err
        else:
            error = None
            assert isinstance(chunk, TextChunk)
            chunk.text.encode("utf-8")
            assert chunk.finish_reason is None or isinstance(chunk.finish_reason, str)
    finally:
        _parse._fast_loads = saved
    assert error is None or len(str(error)) < 1500


_HEADER_VALUES = st.text(max_size=40) | st.sampled_from(
    ["inf", "nan", "-1", "1e400", "0x10", "1_000", " 5 ", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo"]
)


@fuzz(300)
@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), _HEADER_VALUES), st.floats(0, 4e9))
def test_fuzz_parse_retry_after_is_none_or_a_finite_delay(headers: dict[str, str], now: float) -> None:
    """Any Retry-After header, at any Unix time: None or a finite delay >= 0, never an exception."""
    delay = parse_retry_after(headers, now=now)
    assert delay is None or (math.isfinite(delay) and delay >= 0)
