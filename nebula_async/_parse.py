"""Pure decoding of API answers: the JSON envelope and stream events, into models or errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import APIError, ServerError, error_from_response
from ._models import MalformedPayloadError, TextChunk, Usage, structure_chunk, structure_success

__all__ = ["DONE", "loads", "parse_event", "parse_generation", "parse_json"]

DONE = "[DONE]"


def _first_loads(raw: bytes | str) -> Any:
    """Look for orjson on the first decoding, not at import (it costs a tenth of the package's import)."""
    global _fast_loads
    try:  # the [speed] extra: about 5x faster on stream events, measured in benchmarks/RESULTS.md
        from orjson import loads as found
    except ImportError:  # pragma: no cover - depends on what is installed
        _fast_loads = None
    else:
        _fast_loads = found
    return loads(raw)


# orjson's loads, None without it, or _first_loads until the first call: no cost per call for laziness.
_fast_loads: Callable[[bytes | str], Any] | None = _first_loads


def loads(raw: bytes | str) -> Any:
    """json.loads, through orjson when it is installed; raises ValueError exactly when json.loads does.

    The values are json.loads' too, but for integers beyond 64 bits, which orjson reads as floats
    (a token count never comes near; one that did would fail the integer check as malformed).
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:  # orjson is stricter (big integers, lone surrogates): the stdlib decides
            pass
    return json.loads(raw)


def parse_json(raw: bytes | str, status: int, headers: Mapping[str, str]) -> object:
    """Decode JSON, or raise ServerError quoting the start of what came instead."""
    try:
        return loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise error_from_response(status, _as_bytes(raw), headers) from None


def _as_bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")


def parse_generation(status: int, raw: bytes, headers: Mapping[str, str]) -> tuple[str, Usage]:
    """Return text and usage from a non-streaming answer, or raise the APIError it stands for."""
    body = parse_json(raw, status, headers)
    if status == 200 and type(body) is dict and body.get("status") == "success":
        # The well-formed answer, checked field by field as the converter would; anything else takes
        # the converter's path below, which names what is wrong. This runs once per call.
        data = body.get("data")
        if type(data) is dict:
            text = data.get("text")
            if type(text) is str:
                usage = _plain_usage(data.get("usage"))
                if usage is not None:
                    return text, usage
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise _error(status, body, headers)
    data = body.get("data")
    if not isinstance(data, dict):
        raise _malformed(status, headers, "the success envelope has no 'data' object")
    try:
        return structure_success(data)
    except MalformedPayloadError as exc:
        raise _malformed(status, headers, str(exc)) from None


def _plain_usage(usage: object) -> Usage | None:
    """Return well-formed token counts as the converter would, or None to let the converter say why."""
    if type(usage) is dict:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if type(prompt) is int and type(completion) is int and type(total) is int:
            return Usage(prompt, completion, total)
    return None


def parse_event(data: str, headers: Mapping[str, str]) -> TextChunk:
    """Return the chunk one stream event carries, or raise the APIError of an error event."""
    if _fast_loads is not None and _fast_loads is not _first_loads:
        # parse_json's work, one call shallower: this runs once per event.
        try:
            payload = _fast_loads(data)
        except ValueError:
            payload = parse_json(data, 200, headers)
    else:
        payload = parse_json(data, 200, headers)
    if type(payload) is dict and "error" not in payload and "status" not in payload:
        # A plain chunk, checked as the converter would (it runs once per event, the converter costs
        # more than the JSON decoding); anything else takes the converter's path below.
        text, finish, usage = payload.get("text"), payload.get("finish_reason"), payload.get("usage")
        if type(text) is str and (finish is None or type(finish) is str):
            return TextChunk(text, finish, None if usage is None else _plain_usage(usage))
    if not isinstance(payload, dict):
        raise _malformed(200, headers, f"a stream event is not a JSON object: {data[:200]!r}")
    if isinstance(payload.get("error"), dict) or payload.get("status") == "error":
        raise _error(200, payload, headers)
    # usage is optional metadata in an event: counts that are not three integers are dropped, on this
    # path as on the one above, rather than cost the caller the stream's text.
    usage = _plain_usage(payload.get("usage"))
    try:
        chunk = structure_chunk({**payload, "usage": None})
    except MalformedPayloadError as exc:
        raise _malformed(200, headers, str(exc)) from None
    return chunk if usage is None else TextChunk(chunk.text, chunk.finish_reason, usage)


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
