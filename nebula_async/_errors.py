"""The exception tree, and the one function that maps an API error to its class.

::

    NebulaError
     ├─ APIError (.code, .message, .details, .status_code, .request_id, .retry_after)
     │   ├─ InvalidRequestError            invalid_request, HTTP 400/422
     │   │   └─ ContextLengthExceededError context_length_exceeded
     │   ├─ AuthenticationError            invalid_api_key, authentication_error, 401
     │   ├─ PermissionDeniedError          permission_denied, 403
     │   ├─ NotFoundError                  not_found, 404
     │   │   └─ ModelNotFoundError         model_not_found
     │   ├─ RateLimitError                 rate_limit_exceeded, 429
     │   ├─ InsufficientQuotaError         insufficient_quota, whatever the status; never retried
     │   └─ ServerError                    server_error, service_unavailable, 5xx, or a body that is
     │                                     not the JSON envelope
     └─ APIConnectionError
         └─ APITimeoutError

The envelope's ``error.code`` decides first, then the HTTP status. The same code gives the same
class on every path: an HTTP error, a 200 whose envelope says ``"status": "error"``, and an error
event in the middle of a stream. The known codes are the five the API documents, the ones it sends
beside them (``server_error``, ``invalid_api_key``, ``not_found``) and the usual names of
OpenAI-style APIs for the same failures. An unknown code keeps the status's class: in a 200 or a
stream, plain APIError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "TIMED_OUT",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ContextLengthExceededError",
    "InsufficientQuotaError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NebulaError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "class_for_code",
    "error_from_response",
    "parse_retry_after",
]

_MAX_MESSAGE_CHARS = 500  # an HTML error page must not flood a log line
_MAX_CODE_CHARS = 100  # nor a code, which str(err) shows first: the API's are about 25


class NebulaError(Exception):
    """Base class of every error this SDK raises."""


class APIError(NebulaError):
    """The API answered, and the answer is an error.

    ``code`` is the envelope's ``error.code`` (None when the body had none), ``details`` its
    ``error.details`` dict, ``status_code`` the HTTP status (200 for an error envelope in a 200 or
    in a stream), ``retry_after`` the seconds the server asked us to wait, if it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: Mapping[str, Any] = details if details is not None else {}
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = [f"HTTP {self.status_code}"] if self.status_code is not None else []
        if self.request_id is not None:
            where.append(f"request_id={self.request_id}")
        message = _one_line(self.message)  # whatever the server sent: no forged log lines, no escapes
        head = f"{self.code}: {message}" if self.code else message
        return f"{head} ({', '.join(where)})" if where else head

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"status_code={self.status_code!r}, request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__ arguments: pickling (multiprocessing, batch checkpoints) needs help.
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[APIError], message: str, state: dict[str, Any]) -> APIError:
    err = cls.__new__(cls)
    NebulaError.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidRequestError(APIError):
    """The request was rejected as invalid (``invalid_request``, HTTP 400 or 422)."""


class ContextLengthExceededError(InvalidRequestError):
    """The prompt is longer than the model's context (``context_length_exceeded``)."""


class AuthenticationError(APIError):
    """The API key is missing, wrong or revoked (``invalid_api_key``, ``authentication_error``, HTTP 401)."""


class PermissionDeniedError(APIError):
    """The API key may not do this (``permission_denied``, HTTP 403)."""


class NotFoundError(APIError):
    """The thing asked for does not exist (``not_found``, HTTP 404)."""


class ModelNotFoundError(NotFoundError):
    """The model does not exist (``model_not_found``)."""


class RateLimitError(APIError):
    """Too many requests (``rate_limit_exceeded``, HTTP 429); ``retry_after`` says how long to wait."""


class InsufficientQuotaError(APIError):
    """Not enough credits or quota (``insufficient_quota``); waiting does not help, so never retried."""


class ServerError(APIError):
    """The API failed (``server_error``, ``service_unavailable``, HTTP 5xx), or sent a malformed answer."""


class APIConnectionError(NebulaError):
    """The API could not be reached, or the connection broke before the answer was complete."""

    def __init__(self, message: str, *, request_id: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        # False for what retrying can't fix, such as a certificate that does not match.
        self.retryable = retryable

    def __str__(self) -> str:
        message = _one_line(self.message)
        return message if self.request_id is None else f"{message} (request_id={self.request_id})"


class APITimeoutError(APIConnectionError):
    """A connect, read, stream-idle or total timeout ran out."""


# The message of a call's timeout, whichever timer ran out: aiohttp's (connect, read) or our total.
TIMED_OUT = "timed out waiting for the API"


# The one table of known codes: the retry decision follows it too (_retry.is_retryable).
_BY_CODE: dict[str, type[APIError]] = {
    # documented by the API
    "invalid_request": InvalidRequestError,
    "model_not_found": ModelNotFoundError,
    "context_length_exceeded": ContextLengthExceededError,
    "rate_limit_exceeded": RateLimitError,
    "insufficient_quota": InsufficientQuotaError,
    # sent by the API beside them (its 500, 401 and 404 answers)
    "server_error": ServerError,
    "invalid_api_key": AuthenticationError,
    "not_found": NotFoundError,
    # what OpenAI-style APIs call the same failures
    "authentication_error": AuthenticationError,
    "permission_denied": PermissionDeniedError,
    "service_unavailable": ServerError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_from_response(status: int, body: object, headers: Mapping[str, str]) -> APIError:
    """Build the error for an error answer.

    ``body`` is the decoded JSON (normally the envelope) or, when it was not JSON, the raw bytes.
    ``headers`` must be case-insensitive (aiohttp's are) for ``x-request-id`` and ``Retry-After``.
    """
    request_id = headers.get("x-request-id")
    retry_after = parse_retry_after(headers, now=time.time())
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        if 300 <= status < 400:
            # Redirects are not followed: a POST turned into a GET, or the key sent elsewhere.
            location = headers.get("location") or "an unnamed address"
            message = f"the API redirected to {location}; if it moved, set base_url to the new address"
        else:
            message = f"unexpected response from the API: {_preview(body)}"
        cls = _fallback_class(status) if status >= 300 else ServerError  # a 2xx that isn't ours is broken
        return cls(message, status_code=status, request_id=request_id, retry_after=retry_after)
    code = _clean_code(error.get("code"))
    raw_message = error.get("message")
    message = (
        raw_message
        if isinstance(raw_message, str) and raw_message
        else "the API returned an error without a message"
    )
    details = error.get("details")
    cls = _BY_CODE.get(code or "") or _fallback_class(status)
    return cls(
        message[:_MAX_MESSAGE_CHARS],
        code=code,
        details=details if isinstance(details, dict) else None,
        status_code=status,
        request_id=request_id,
        retry_after=retry_after,
    )


def _clean_code(raw: object) -> str | None:
    """Return ``raw`` as a code: a str, on one line and short, as str(err) shows it; else None."""
    if not isinstance(raw, str) or not raw:
        return None
    if len(raw) <= _MAX_CODE_CHARS and raw.isprintable():  # the usual: a code is a short token
        return raw
    return _one_line(raw[: _MAX_CODE_CHARS * 2])[:_MAX_CODE_CHARS] or None


def _one_line(text: str) -> str:
    """Return ``text`` on one line, its control characters (a terminal's escapes, NULs) as U+FFFD."""
    text = " ".join(text.split())
    return text if text.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in text)


def class_for_code(code: str | None) -> type[APIError] | None:
    """Return the class a known error ``code`` maps to on every path, or None for an unknown one."""
    return _BY_CODE.get(code or "")


def _fallback_class(status: int) -> type[APIError]:
    return _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)


# What a preview looks at: enough for 200 characters of any UTF-8, never the whole of a large body.
_PREVIEW_BYTES = 1024
_PREVIEW_CHARS = 200


def _preview(body: object) -> str:
    """Return the start of ``body`` as one short line, from its head only (a body may be megabytes)."""
    if isinstance(body, bytes):
        cut = len(body) > _PREVIEW_BYTES
        text = body[:_PREVIEW_BYTES].decode("utf-8", "replace")
    else:
        # reprlib bounds the size and the depth: a deeply nested value must not recurse without end.
        import reprlib  # only on this error path

        shown = reprlib.Repr()
        shown.maxstring = shown.maxother = shown.maxlong = _PREVIEW_BYTES
        text = shown.repr(body)
        cut = False
    text = _one_line(text)
    if not text:
        return f"blank for {_PREVIEW_BYTES} bytes..." if cut else "empty body"
    return text[:_PREVIEW_CHARS] + "..." if cut or len(text) > _PREVIEW_CHARS else text


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, then ``Retry-After`` seconds or HTTP date.

    Anything unparseable, negative, infinite or NaN is ignored (None). ``now`` is the Unix time an
    HTTP date is measured from.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        seconds = _finite_non_negative(value)
        if seconds is not None:
            return seconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite_non_negative(value)
    if seconds is not None:
        return seconds
    import email.utils  # only for an HTTP date: the email package is a tenth of our import time

    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; parsedate gives naive for "-0000"
        return None
    return max(0.0, when.timestamp() - now)


def _finite_non_negative(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
