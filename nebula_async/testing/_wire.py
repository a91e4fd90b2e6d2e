"""What the fake server puts on the wire: envelopes, events, error pages and their defaults.

The success envelope and the events are written as strings in exactly the bytes ``json.dumps``
gives (its default separators and ASCII escapes), without a ``json.dumps`` call: they are made
for every request and every token. Errors are rare and use ``json.dumps``.
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping

# json.dumps(a_str) with its defaults, minus the call overhead (the C function json.dumps ends in).
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from aiohttp import web

from ._generate import Generation

__all__ = [
    "MAX_BODY",
    "PATH",
    "bearer",
    "default_code",
    "default_message",
    "envelope",
    "error",
    "error_event",
    "html_error",
    "status_for",
    "stream_events",
    "success",
]

PATH = "/v1/text/generate"
MAX_BODY = 32 * 1024 * 1024  # a 131,072-token prompt fits many times over

_DEFAULT_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    429: "rate_limit_exceeded",
}
_STATUS_BY_CODE = {
    "invalid_request": 400,
    "invalid_api_key": 401,
    "not_found": 404,
    "model_not_found": 404,
    "context_length_exceeded": 400,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
}
_DEFAULT_MESSAGES = {
    "invalid_request": "Invalid parameters in the request",
    "invalid_api_key": "Invalid API key",
    "model_not_found": "Specified model doesn't exist",
    "context_length_exceeded": "Input prompt is too long",
    "rate_limit_exceeded": "Too many requests",
    "insufficient_quota": "Not enough credits or quota",
    "server_error": "The server had an error while processing the request",
}
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def status_for(code: str | None) -> int:
    """Return the HTTP status the API answers ``code`` with (500 for server_error, None or unknown)."""
    return _STATUS_BY_CODE.get(code or "server_error", 500)


def default_code(status: int) -> str:
    """Return the code the API sends with ``status`` when none is given."""
    return _DEFAULT_CODES.get(status) or ("server_error" if status >= 500 else "invalid_request")


def default_message(code: str) -> str:
    """Return the API's message for ``code`` (the code itself for one it does not document)."""
    return _DEFAULT_MESSAGES.get(code, code)


def _usage(prompt_tokens: int, completion_tokens: int) -> str:
    return (
        f'{{"prompt_tokens": {prompt_tokens}, "completion_tokens": {completion_tokens}, '
        f'"total_tokens": {prompt_tokens + completion_tokens}}}'
    )


def success(rid: str, result: Generation, prompt_tokens: int) -> web.Response:
    """Return the success envelope for ``result``, with its usage."""
    usage = _usage(prompt_tokens, result.completion_tokens)
    body = f'{{"status": "success", "data": {{"text": {_json_str(result.text)}, "usage": {usage}}}}}'
    return web.Response(body=body.encode(), content_type="application/json", headers={"x-request-id": rid})


def stream_events(result: Generation, *, usage_of: int | None = None) -> list[str]:
    """Encode each chunk as an event, exactly in the reference's shape; the last carries finish_reason.

    ``usage_of``: the prompt's tokens, to put ``usage`` in the final event (as the non-streamed
    answer has it), or None for the reference's two-key events.
    """
    chunks = result.chunks or ("",)
    events = [f'data: {{"text": {_json_str(text)}, "finish_reason": null}}\n\n' for text in chunks]
    last = f'"text": {_json_str(chunks[-1])}, "finish_reason": {_json_str(result.finish_reason)}'
    if usage_of is not None:
        last += f', "usage": {_usage(usage_of, result.completion_tokens)}'
    events[-1] = f"data: {{{last}}}\n\n"
    return events


def envelope(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the error envelope; ``details`` only when there are some."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"status": "error", "error": error}


def error_event(code: str, message: str, details: Mapping[str, Any] | None = None) -> bytes:
    """Return the error envelope as a stream event, as the API ends a stream that failed."""
    return b"data: " + json.dumps(envelope(code, message, details)).encode() + b"\n\n"


def error(
    rid: str,
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return a JSON error answer with the envelope, ``x-request-id`` and any extra ``headers``."""
    return web.Response(
        status=status,
        body=json.dumps(envelope(code, message, details)).encode(),
        content_type="application/json",
        headers={"x-request-id": rid, **(headers or {})},
    )


def html_error(rid: str, status: int) -> web.Response:
    """Return an nginx-style HTML error page, as a proxy in front of an API answers."""
    page = _HTML_PAGE.format(status=status, reason=_reason(status))
    return web.Response(status=status, text=page, content_type="text/html", headers={"x-request-id": rid})


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status with no standard phrase, such as 599
        return "Error"


def bearer(header: str | None) -> str | None:
    """Return the key of an ``Authorization: Bearer KEY`` header (any case of "Bearer"), else None."""
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None
