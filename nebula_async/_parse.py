"""Pure decoding of API answers: the JSON envelope and stream events, into models or errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import APIError, ServerError, _preview, error_from_response
from ._models import MalformedPayloadError, TextChunk, Usage, structure_chunk, structure_success

__all__ = [
    "DONE",
    "chunk_or_error",
    "generation_or_error",
    "loads",
    "loads_text",
    "parse_event",
    "parse_generation",
    "parse_json",
    "too_large",
]

DONE = "[DONE]"
_REFUSED = object()  # what orjson or json refused (a sentinel: an exception would become a context)
_HEAD_CHARS = 1024  # of a text, what an error message may quote from (it shows 200 characters)


def _first_loads(raw: bytes | str) -> Any:
    """Look for orjson on the first decoding, not at import (it costs a tenth of the package's import)."""
    global _fast_loads
    try:  # the [speed] extra: about 5x faster on stream events, measured in benchmarks/RESULTS.md
        from orjson import loads as found
    except ImportError:  # pragma: no cover - depends on what is installed
        _fast_loads = None
    else:
        _fast_loads = found
        return found(raw)
    # No fast path: the caller's own stdlib path decides, as it will from now on. (Calling loads()
    # here made the first loads_text() of a process as lenient as loads(): a lone surrogate passed.)
    raise ValueError("no orjson")  # pragma: no cover - depends on what is installed


# orjson's loads, None without it, or _first_loads until the first call: no cost per call for laziness.
_fast_loads: Callable[[bytes | str], Any] | None = _first_loads


def loads(raw: bytes | str) -> Any:
    """json.loads, through orjson when it is installed; raises ValueError exactly when json.loads does.

    And for nesting too deep for json, which raises RecursionError. The values are json.loads'
    too, but for integers beyond 64 bits, which orjson reads as floats (a token count never comes
    near; one that did would fail the integer check as malformed).
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:  # orjson is stricter (big integers, lone surrogates): the stdlib decides
            pass
    try:
        return json.loads(raw)
    except RecursionError:
        pass  # raised below, outside this block: no RecursionError as __context__
    raise ValueError(_TOO_DEEP)


def loads_text(raw: bytes | str) -> Any:
    """loads(), refusing also strings that are not text: what an answer must hold.

    A lone surrogate, encoded in UTF-8 bytes or written as a ``\\ud800`` escape, is a ValueError
    here (json.loads lets both through; orjson refuses both): the caller's ``.encode()`` would fail.
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    if isinstance(raw, bytes):
        # Strictly (json.loads uses "surrogatepass"): a surrogate's bytes are refused here. UTF-8,
        # unless a BOM or NULs in the first bytes say otherwise, as json's detect_encoding would.
        plain = b"\x00" not in raw[:4] and not raw.startswith(_BOMS)
        doc = raw.decode("utf-8" if plain else json.detect_encoding(raw))
    else:
        doc = raw
        if not doc.isascii():  # a str from a caller may hold one as it is (the SSE decoder's cannot)
            doc.encode("utf-8")  # UnicodeEncodeError is a ValueError too
    try:
        value = json.loads(doc)
    except RecursionError:
        value = _REFUSED
    if value is _REFUSED:  # raised here, outside the except block: no RecursionError as __context__
        raise ValueError(_TOO_DEEP)
    # A backslash first: a one-character search is far cheaper than the regex over every character.
    if "\\" in doc and _SURROGATE_ESCAPE.search(doc) is not None:
        _check_text(value)  # rare: a pair of escapes for one emoji, say
    return value


_TOO_DEEP = "JSON nested too deeply"
# An error envelope is a few hundred bytes; one longer than an error body may be (64 KiB, as
# _http.MAX_ERROR_BODY_BYTES) keeps its class, code and message, not its details.
_MAX_DETAILS_SOURCE = 64 * 1024
# A \\uD800-\\uDFFF escape: how a lone surrogate is written in JSON text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # UTF-8's, UTF-16's and (their start) UTF-32's


def _check_text(value: Any) -> None:
    """Raise ValueError if a string in ``value`` (a key too) cannot be encoded as UTF-8."""
    todo = [value]  # a loop, not recursion: the value may nest as deeply as json allowed
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a JSON string holds a lone surrogate, which is not text") from None
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def parse_json(raw: bytes | str, status: int, headers: Mapping[str, str]) -> object:
    """Decode JSON, or raise the error ``status`` stands for, quoting the start of what came instead.

    That is ServerError("malformed response: ...") for a 200, the status's class for an error status.
    """
    value = _json_or_error(raw, status, headers)
    if isinstance(value, APIError):
        raise value
    return value


def _json_or_error(raw: bytes | str, status: int, headers: Mapping[str, str]) -> object:
    """parse_json's work, returning its error: JSON never decodes to an APIError."""
    try:
        return loads_text(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        why = _why_not_json(exc)
    # Built here, not in the except block: the JSONDecodeError would be its __context__ once raised,
    # and that holds the whole text it was given.
    if status == 200:
        return _malformed(status, headers, f"the answer is not JSON ({why}): {_preview(_as_bytes(raw))}")
    return error_from_response(status, _as_bytes(raw), headers)


def _why_not_json(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}, character {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}: {exc.reason}"
    return str(exc)[:200]  # ours (nesting, surrogates), or orjson's: short, and never the document


def _as_bytes(raw: bytes | str) -> bytes:
    # Only the head is ever shown: encoding the whole of a large answer would be wasted.
    return raw if isinstance(raw, bytes) else raw[:_HEAD_CHARS].encode("utf-8", "replace")


def too_large(status: int, head: bytes, headers: Mapping[str, str], limit: int) -> APIError:
    """Return the error for an answer longer than ``limit`` bytes, of which ``head`` is the start.

    An error status keeps its class (a huge 502 page is still a retried ServerError, a 429 still a
    RateLimitError, with its Retry-After); any other answer is a ServerError.
    """
    model = error_from_response(status if status >= 300 else 200, head, headers)
    return type(model)(
        f"the answer exceeded {limit} bytes, and was not read further: {_preview(head)}",
        status_code=status,
        request_id=model.request_id,
        retry_after=model.retry_after,
    )


def parse_generation(status: int, raw: bytes, headers: Mapping[str, str]) -> tuple[str, Usage]:
    """Return text and usage from a non-streaming answer, or raise the APIError it stands for."""
    result = generation_or_error(status, raw, headers)
    if isinstance(result, APIError):
        raise result
    return result


def generation_or_error(status: int, raw: bytes, headers: Mapping[str, str]) -> tuple[str, Usage] | APIError:
    """Return text and usage from a non-streaming answer, or the APIError it stands for, unraised.

    For a caller that drops ``raw`` before it raises: the frames of a raised error's traceback
    keep their locals, and an error kept (logged, stored per item) must not keep a 64 MiB body.
    """
    body = _json_or_error(raw, status, headers)
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
    if isinstance(body, APIError):  # not JSON
        return body
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        return _error(status, body, headers, raw, size=len(raw))
    data = body.get("data")
    if not isinstance(data, dict):
        return _malformed(status, headers, "the success envelope has no 'data' object")
    try:
        return structure_success(data)
    except MalformedPayloadError as exc:  # returned, not raised here: it would be the context
        return _malformed(status, headers, str(exc))


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
    chunk = chunk_or_error(data, headers)
    if isinstance(chunk, APIError):
        raise chunk
    return chunk


def chunk_or_error(data: str, headers: Mapping[str, str]) -> TextChunk | APIError:
    """Return the chunk one stream event carries, or the APIError of an error event, unraised.

    As generation_or_error: the caller raises it once nothing holds the event's data.
    """
    if _fast_loads is not None and _fast_loads is not _first_loads:
        # _json_or_error's work, one call shallower: this runs once per event.
        try:
            payload = _fast_loads(data)
        except ValueError:
            payload = _REFUSED
        if payload is _REFUSED:  # out of the except block: orjson's error would be the context
            payload = _json_or_error(data, 200, headers)
    else:
        payload = _json_or_error(data, 200, headers)
    if type(payload) is dict and "error" not in payload and "status" not in payload:
        # A plain chunk, checked as the converter would (it runs once per event, the converter costs
        # more than the JSON decoding); anything else takes the converter's path below.
        text, finish, usage = payload.get("text"), payload.get("finish_reason"), payload.get("usage")
        if type(text) is str and (finish is None or type(finish) is str):
            return TextChunk(text, finish, None if usage is None else _plain_usage(usage))
    if isinstance(payload, APIError):
        return payload
    if not isinstance(payload, dict):
        return _malformed(200, headers, f"a stream event is not a JSON object: {data[:200]!r}")
    if isinstance(payload.get("error"), dict) or payload.get("status") == "error":
        return _error(200, payload, headers, size=len(data))
    # usage is optional metadata in an event: counts that are not three integers are dropped, on this
    # path as on the one above, rather than cost the caller the stream's text.
    usage = _plain_usage(payload.get("usage"))
    try:
        chunk = structure_chunk({**payload, "usage": None})
    except MalformedPayloadError as exc:  # returned, not raised here: it would be the context
        return _malformed(200, headers, str(exc))
    return chunk if usage is None else TextChunk(chunk.text, chunk.finish_reason, usage)


def _error(
    status: int, body: Any, headers: Mapping[str, str], raw: bytes | None = None, *, size: int
) -> APIError:
    """Return the error ``body`` stands for; quote ``raw``, the text it was decoded from, if given.

    ``size`` is the length of that text: an envelope past _MAX_DETAILS_SOURCE loses its details.
    """
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = error_from_response(status, body, headers)
        if size > _MAX_DETAILS_SOURCE:
            error.details = {}  # kept as long as the error is: megabytes of it would be too
        return error
    # Quote the text, not the value: str() of a value nested a thousand deep raises RecursionError.
    shown = body if raw is None else raw
    if status == 200:
        # A 200 that is neither success nor an error envelope is a broken answer, not a success.
        return _malformed(status, headers, f"unexpected response from the API: {_preview(shown)}")
    return error_from_response(status, shown, headers)


def _malformed(status: int, headers: Mapping[str, str], why: str) -> ServerError:
    return ServerError(
        f"malformed response: {why}", status_code=status, request_id=headers.get("x-request-id")
    )
