"""The fake server's request checks: decode_body and check_body, every field and every fault named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nebula_async.testing._validate import InvalidJSON, Params, Rejection, check_body, decode_body

BASE: dict[str, Any] = {"model": "m", "prompt": "p"}


def _check(raw: bytes) -> Params | Rejection:
    """Run a raw body through both steps, as the server does."""
    return check_body(decode_body(raw))


def _with(**fields: Any) -> bytes:
    """Encode the minimal valid body with ``fields`` replaced (a value of ... drops the field)."""
    body = {**BASE, **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _rejection(result: Params | Rejection) -> Rejection:
    assert isinstance(result, Rejection), result
    assert (result.status, result.code) == (400, "invalid_request")
    return result


@pytest.mark.parametrize(
    ("raw", "field", "detail"),
    [
        (_with(model=...), "model", "is required"),
        (_with(model=None), "model", "is required"),
        (_with(model=5), "model", "must be a string, got an integer"),
        (_with(model=""), "model", "must not be empty"),
        (_with(prompt=...), "prompt", "is required"),
        (_with(prompt=None), "prompt", "is required"),
        (_with(prompt=["p"]), "prompt", "must be a string, got an array"),
        (_with(prompt={"text": "p"}), "prompt", "must be a string, got an object"),
        (_with(prompt=""), "prompt", "must not be empty"),
        (_with(max_tokens=True), "max_tokens", "must be an integer, got a boolean"),
        (_with(max_tokens=1.0), "max_tokens", "must be an integer, got a number"),
        (_with(max_tokens="5"), "max_tokens", "must be an integer, got a string"),
        (_with(max_tokens=0), "max_tokens", "must be at least 1, got 0"),
        (_with(max_tokens=-3), "max_tokens", "must be at least 1, got -3"),
        (
            b'{"model": "m", "prompt": "p", "max_tokens": 1e400}',
            "max_tokens",
            "must be an integer, got a non-finite number",
        ),
        (_with(temperature="0.7"), "temperature", "must be a number, got a string"),
        (_with(temperature=False), "temperature", "must be a number, got a boolean"),
        (_with(temperature=2.01), "temperature", "must be between 0 and 2, got 2.01"),
        (_with(temperature=-0.1), "temperature", "must be between 0 and 2, got -0.1"),
        (_with(temperature=3), "temperature", "must be between 0 and 2, got 3"),
        (
            b'{"model": "m", "prompt": "p", "temperature": 1e400}',
            "temperature",
            "must be between 0 and 2, got inf",
        ),
        (_with(top_p=-0.1), "top_p", "must be between 0 and 1, got -0.1"),
        (_with(top_p=1.01), "top_p", "must be between 0 and 1, got 1.01"),
        (_with(top_p=[1]), "top_p", "must be a number, got an array"),
        (_with(stop="\n"), "stop", "must be an array of strings, got a string"),
        (_with(stop={"a": 1}), "stop", "must be an array of strings, got an object"),
        (_with(stop=["a", 1]), "stop", "item 1 must be a non-empty string, got an integer"),
        (_with(stop=["a", None]), "stop", "item 1 must be a non-empty string, got null"),
        (_with(stop=[""]), "stop", "item 0 must be a non-empty string, got an empty string"),
        (_with(stop=[["a"]]), "stop", "item 0 must be a non-empty string, got an array"),
        (_with(stream="true"), "stream", "must be a boolean, got a string"),
        (_with(stream=1), "stream", "must be a boolean, got an integer"),
        (_with(stream=0), "stream", "must be a boolean, got an integer"),
    ],
)
def test_each_bad_field_is_rejected_by_name(raw: bytes, field: str, detail: str) -> None:
    """Each invalid field gives a 400 invalid_request naming only it, and why, in details and message."""
    rejection = _rejection(_check(raw))
    assert rejection.details == {field: detail}
    assert rejection.message == f"Invalid parameters in the request: {field}"


def test_every_bad_field_is_named_at_once() -> None:
    """Several invalid fields are all named in details and in the message, not just the first."""
    raw = _with(model=..., prompt=3, max_tokens=0, temperature="hot", top_p=2, stop="x", stream="yes")
    rejection = _rejection(_check(raw))
    names = ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream"]
    assert sorted(rejection.details) == sorted(names)
    for name in names:
        assert name in rejection.message


def test_minimal_body_gives_defaults() -> None:
    """A body with only model and prompt is valid; the optional fields are None, no stops, not streaming."""
    assert _check(_with()) == Params("m", "p", None, None, None, (), False)


def test_null_optional_fields_count_as_absent() -> None:
    """null for every optional field is the same as leaving it out."""
    raw = _with(max_tokens=None, temperature=None, top_p=None, stop=None, stream=None)
    assert _check(raw) == Params("m", "p", None, None, None, (), False)


def test_every_field_read() -> None:
    """Every documented field is read into Params, stop as a tuple."""
    raw = _with(max_tokens=7, temperature=0.5, top_p=0.9, stop=["\n", "END"], stream=True)
    assert _check(raw) == Params("m", "p", 7, 0.5, 0.9, ("\n", "END"), True)


@pytest.mark.parametrize(
    ("fields", "attr", "value"),
    [
        ({"temperature": 2.0}, "temperature", 2.0),
        ({"temperature": 0}, "temperature", 0.0),
        ({"temperature": 2}, "temperature", 2.0),
        ({"top_p": 0}, "top_p", 0.0),
        ({"top_p": 1}, "top_p", 1.0),
        ({"max_tokens": 1}, "max_tokens", 1),
        ({"max_tokens": 10**12}, "max_tokens", 10**12),
        ({"stop": []}, "stop", ()),
        ({"stream": False}, "stream", False),
    ],
)
def test_boundary_values_are_accepted(fields: dict[str, Any], attr: str, value: object) -> None:
    """Values at the documented bounds are valid, and JSON integers for float fields come back as floats."""
    params = _check(_with(**fields))
    assert isinstance(params, Params), params
    got = getattr(params, attr)
    assert got == value
    assert type(got) is type(value)


def test_unknown_fields_are_accepted() -> None:
    """Fields the reference does not list are ignored, as a forward-compatible API does."""
    raw = _with(n=2, user="me", logprobs=None, extra={"nested": [1]})
    assert _check(raw) == Params("m", "p", None, None, None, (), False)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "prompt": "p", "temperature": NaN}',
        b'{"model": "m", "prompt": "p", "temperature": Infinity}',
        b'{"model": "m", "prompt": "p", "top_p": -Infinity}',
        b'{"model": "m", "prompt": "\xff"}',
        b'{"model": "m", "prompt": "\xc3"}',
        b'{"model": "m", "prompt": "p"',
        b"{'model': 'm', 'prompt': 'p'}",
        b"",
        b"   ",
    ],
)
def test_bodies_that_are_not_json_are_rejected(raw: bytes) -> None:
    """NaN and Infinity literals, invalid UTF-8, truncated or empty bodies are 400 'not valid JSON'."""
    decoded = decode_body(raw)
    assert isinstance(decoded, InvalidJSON)
    assert decoded.why
    rejection = _rejection(check_body(decoded))
    assert rejection.message == "The request body is not valid JSON"
    assert rejection.details == {"body": decoded.why}


def test_encoded_surrogate_is_invalid_utf8() -> None:
    """The bytes ED A0 80 (a UTF-8-encoded surrogate, which UTF-8 forbids) make the body invalid."""
    assert isinstance(decode_body(b'{"model": "m", "prompt": "\xed\xa0\x80"}'), InvalidJSON)


@pytest.mark.parametrize(
    "raw", [b"[]", b'[{"model": "m", "prompt": "p"}]', b'"text"', b"1", b"true", b"null"]
)
def test_json_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    """A JSON array, string, number, boolean or null is 400 naming the body."""
    rejection = _rejection(_check(raw))
    assert rejection.message == "The request body must be a JSON object"
    assert rejection.details == {"body": "must be a JSON object"}


def test_unicode_text_is_kept() -> None:
    """Non-ASCII model and prompt text, raw or escaped, comes back unchanged."""
    raw = '{"model": "模型", "prompt": "héllo \\u00e9 😀", "stop": ["。"]}'.encode()
    assert _check(raw) == Params("模型", "héllo é 😀", None, None, None, ("。",), False)
