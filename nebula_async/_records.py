"""The batch output's record format: one JSON object per line. Pure: no I/O, no event loop.

A success: ``{"id": ..., "text": ..., "usage": {"prompt_tokens", "completion_tokens",
"total_tokens"}, "request_id": ..., "retries": ...}``. A failure: ``{"id": ..., "error": {"code",
"message", "status_code", "request_id"}}``. ``id`` is the input's id as given (a string or an int).

An API error's code is the API's own (``context_length_exceeded``...), or ``api_error`` when the
answer had none. Errors that are not the API's answer have these codes (``status_code`` null):
``timeout`` (APITimeoutError), ``connection_error`` (APIConnectionError), ``sdk_error`` (another
NebulaError) and ``invalid_request`` (a ValueError or TypeError raised before sending).

Lines are encoded with orjson when it is installed, the standard library's json otherwise: the same
bytes either way (compact separators, UTF-8 not escaped, keys in the order above).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._errors import APIConnectionError, APIError, APITimeoutError, NebulaError
from ._models import TextGeneration
from ._parse import loads

__all__ = [
    "BatchId",
    "ParsedRecord",
    "dumps",
    "error_code",
    "error_record",
    "is_batch_id",
    "is_text",
    "loads",
    "parse_record",
    "success_record",
]

BatchId = str | int
"""An input line's id: a string, or an int (the 1-based line number by default)."""


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _first_dumps(value: Any) -> bytes:
    """Look for orjson on the first record, not at import (it costs a tenth of the package's import)."""
    global _dumps
    try:
        from orjson import dumps as found
    except ImportError:  # pragma: no cover - the checks install [speed]; test_records compares both
        _dumps = _json_dumps
    else:
        _dumps = found
    return _dumps(value)


_dumps: Callable[[Any], bytes] = _first_dumps


def dumps(value: Any) -> bytes:
    """Encode a record's dict: orjson when installed, else json with the same bytes (up to key order).

    A lone surrogate (in a text the API sent as ``"\\ud800"``) can't be written as UTF-8: that
    record is written with every non-ASCII character escaped, which reads back as the same text.
    """
    try:
        return _dumps(value)
    except (TypeError, ValueError):  # orjson's JSONEncodeError is a TypeError; encode() raises a ValueError
        return json.dumps(value, separators=(",", ":")).encode()  # a real bug raises here again


def is_batch_id(value: object) -> bool:
    """Say whether ``value`` can be an id: a non-empty string (valid text) or an int (not a bool)."""
    if isinstance(value, str):
        return bool(value) and is_text(value)
    return isinstance(value, int) and not isinstance(value, bool)


def is_text(value: str) -> bool:
    """Say whether ``value`` can be written as UTF-8: no lone surrogate (JSON's ``"\\ud800"`` gives one)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def success_record(batch_id: BatchId, generation: TextGeneration) -> bytes:
    """Return the success line (with its newline) for ``generation``."""
    usage = generation.usage
    return (
        dumps(
            {
                "id": batch_id,
                "text": generation.text,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
                "request_id": generation.request_id,
                "retries": generation.retries,
            }
        )
        + b"\n"
    )


def error_code(error: Exception) -> str:
    """Return the record's ``error.code`` for ``error`` (see the module's docstring)."""
    if isinstance(error, APIError):
        return error.code or "api_error"
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "connection_error"
    if isinstance(error, NebulaError):
        return "sdk_error"
    return "invalid_request"


def error_record(batch_id: BatchId, error: Exception) -> bytes:
    """Return the failure line (with its newline) for ``error``."""
    message = error.message if isinstance(error, APIError) else str(error)
    return (
        dumps(
            {
                "id": batch_id,
                "error": {
                    "code": error_code(error),
                    "message": message,
                    "status_code": error.status_code if isinstance(error, APIError) else None,
                    "request_id": getattr(error, "request_id", None),
                },
            }
        )
        + b"\n"
    )


ParsedRecord = tuple[BatchId, bool]
"""A record's id, and whether it is a failure."""


def parse_record(line: bytes) -> ParsedRecord:
    """Return the id of a record line and whether it is a failure; ValueError if it is not a record."""
    try:
        value = loads(line)
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    batch_id = value.get("id")
    if not isinstance(batch_id, (str, int)) or not is_batch_id(batch_id):
        raise ValueError("no valid id (a non-empty string or an integer)")
    if "error" in value:
        if not isinstance(value["error"], dict):
            raise ValueError("its error is not an object")
        return batch_id, True
    if not isinstance(value.get("text"), str):
        raise ValueError('neither a "text" string nor an "error" object')
    return batch_id, False
