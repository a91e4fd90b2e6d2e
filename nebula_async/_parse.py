"""Pure decoding of API answers: the JSON envelope and stream events, into models or errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import cattrs

from ._errors import APIError, ServerError, error_from_response
from ._models import TextChunk, Usage, structure_chunk, structure_success

__all__ = ["DONE", "parse_event", "parse_generation", "parse_json"]

DONE = "[DONE]"


def parse_json(raw: bytes | str, status: int, headers: Mapping[str, str]) -> object:
    """Decode JSON, or raise ServerError quoting the start of what came instead."""
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise error_from_response(status, _as_bytes(raw), headers) from None


def _as_bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")


def parse_generation(status: int, raw: bytes, headers: Mapping[str, str]) -> tuple[str, Usage]:
    """Return text and usage from a non-streaming answer, or raise the APIError it stands for."""
    body = parse_json(raw, status, headers)
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise _error(status, body, headers)
    data = body.get("data")
    if not isinstance(data, dict):
        raise _malformed(status, headers, "the success envelope has no 'data' object")
    try:
        return structure_success(data)
    except cattrs.ClassValidationError as exc:
        raise _malformed(status, headers, "; ".join(cattrs.transform_error(exc, path="data"))) from None


def parse_event(data: str, headers: Mapping[str, str]) -> TextChunk:
    """Return the chunk one stream event carries, or raise the APIError of an error event."""
    payload = parse_json(data, 200, headers)
    if not isinstance(payload, dict):
        raise _malformed(200, headers, f"a stream event is not a JSON object: {data[:200]!r}")
    if isinstance(payload.get("error"), dict) or payload.get("status") == "error":
        raise _error(200, payload, headers)
    try:
        return structure_chunk(payload)
    except cattrs.ClassValidationError as exc:
        raise _malformed(200, headers, "; ".join(cattrs.transform_error(exc, path="event"))) from None


def _error(status: int, body: Any, headers: Mapping[str, str]) -> APIError:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_response(status, body, headers)
    if status == 200:
        # A 200 that is neither success nor an error envelope is a broken answer, not a success.
        return _malformed(status, headers, f"unexpected response from the API: {str(body)[:200]}")
    return error_from_response(status, body, headers)


def _malformed(status: int, headers: Mapping[str, str], why: str) -> ServerError:
    return ServerError(
        f"malformed response: {why}", status_code=status, request_id=headers.get("x-request-id")
    )
