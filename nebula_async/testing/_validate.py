"""The fake server's request checks: every documented field, every wrong field named (pure, no I/O).

Unlike the SDK's own checks, which stop at the first bad argument, these collect every offending
field into ``details``, as a real API's validation layer does.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

__all__ = ["InvalidJSON", "Params", "Rejection", "check_body", "decode_body"]


@attrs.frozen
class Rejection:
    """An error answer: HTTP status, the envelope's code, message and details."""

    status: int
    code: str
    message: str
    details: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Params:
    """A valid request's fields; None where the caller left a field out (or sent null)."""

    model: str
    prompt: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    stream: bool


def _reject_constant(name: str) -> Any:
    # json.loads takes NaN and Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


class InvalidJSON:
    """What decode_body returns for a body that is not JSON: ``why`` says what is wrong."""

    def __init__(self, why: str) -> None:
        self.why = why


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # built once: json.loads(**kw) makes one a call


def decode_body(raw: bytes) -> object:
    """Decode a request body; a body that is not JSON gives an InvalidJSON."""
    try:
        # Strict UTF-8 first: json.loads(bytes) would also take UTF-16 and a BOM.
        return _DECODER.decode(raw.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return InvalidJSON(str(exc))


def check_body(body: object) -> Params | Rejection:
    """Check a decoded request body; return its fields, or the invalid_request answer naming each fault."""
    if isinstance(body, InvalidJSON):
        return Rejection(400, "invalid_request", "The request body is not valid JSON", {"body": body.why})
    if not isinstance(body, dict):
        return Rejection(
            400,
            "invalid_request",
            "The request body must be a JSON object",
            {"body": "must be a JSON object"},
        )
    details: dict[str, str] = {}
    model = _text(body, "model", details)
    prompt = _text(body, "prompt", details)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        details["max_tokens"] = f"must be an integer, got {_json_type(max_tokens)}"
    elif max_tokens is not None and max_tokens < 1:
        details["max_tokens"] = f"must be at least 1, got {max_tokens}"
    temperature = _number(body, "temperature", 0.0, 2.0, details)
    top_p = _number(body, "top_p", 0.0, 1.0, details)
    stop = _stop(body.get("stop"), details)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        details["stream"] = f"must be a boolean, got {_json_type(stream)}"
    if details:
        names = ", ".join(details)
        return Rejection(400, "invalid_request", f"Invalid parameters in the request: {names}", details)
    assert model is not None  # no details: both were read
    assert prompt is not None
    return Params(model, prompt, max_tokens, temperature, top_p, stop, bool(stream))


def _text(body: dict[str, Any], name: str, details: dict[str, str]) -> str | None:
    value = body.get(name)
    if value is None:
        details[name] = "is required"
    elif not isinstance(value, str):
        details[name] = f"must be a string, got {_json_type(value)}"
    elif not value:
        details[name] = "must not be empty"
    elif not _is_unicode(value):
        details[name] = "must be valid Unicode: it holds a lone surrogate escape such as \\ud800"
    else:
        return value
    return None


def _is_unicode(text: str) -> bool:
    # JSON lets "\ud800" through; such a string is not text and cannot be encoded.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(
    body: dict[str, Any], name: str, low: float, high: float, details: dict[str, str]
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        details[name] = f"must be a number, got {_json_type(value)}"
        return None
    if not low <= value <= high:
        details[name] = f"must be between {low:g} and {high:g}, got {value!r}"
        return None
    return float(value)


def _stop(value: object, details: dict[str, str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        details["stop"] = f"must be an array of strings, got {_json_type(value)}"
        return ()
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            got = "an empty string" if item == "" else _json_type(item)
            details["stop"] = f"item {i} must be a non-empty string, got {got}"
            return ()
        if not _is_unicode(item):
            details["stop"] = f"item {i} must be valid Unicode: it holds a lone surrogate escape"
            return ()
    return tuple(value)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"
