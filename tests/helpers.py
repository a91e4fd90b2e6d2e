"""The root's support module: keys, retry policies and the API's documented bodies, shared by every folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nebula_async import (
    APIError,
    AuthenticationError,
    ContextLengthExceededError,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)

ROOT = Path(__file__).resolve().parents[1]  # the checkout: subprocesses import the SDK from it

KEY = "sk-test-0123456789"  # a plain key, for tests that only need one
# Distinctive, so finding it anywhere (a log, an error, a repr) can only mean a leak.
SECRET_KEY = "sk-live-SECRET-7f3a9c2e5d1b4088"

# Retries that wait about a millisecond: the tests measure behaviour, not backoff.
FAST_RETRY = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.002)
NO_RETRY = RetryPolicy(max_retries=0)

# (code, the HTTP status a server would send it with, the class it must raise): the five the API
# documents, then those it sends beside them (server_error, invalid_api_key, not_found) and the names
# OpenAI-style APIs give the same failures.
KNOWN_CODES: list[tuple[str, int, type[APIError]]] = [
    ("invalid_request", 400, InvalidRequestError),
    ("model_not_found", 404, ModelNotFoundError),
    ("context_length_exceeded", 400, ContextLengthExceededError),
    ("rate_limit_exceeded", 429, RateLimitError),
    ("insufficient_quota", 429, InsufficientQuotaError),
    ("server_error", 500, ServerError),
    ("service_unavailable", 503, ServerError),
    ("invalid_api_key", 401, AuthenticationError),
    ("authentication_error", 401, AuthenticationError),
    ("permission_denied", 403, PermissionDeniedError),
    ("not_found", 404, NotFoundError),
]


def success_body(
    text: str = "Hello, World!", prompt_tokens: int = 8, completion_tokens: int = 12
) -> dict[str, Any]:
    """Return the documented success envelope."""
    return {
        "status": "success",
        "data": {
            "text": text,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    }


def error_body(code: str, message: str = "something went wrong", **details: Any) -> dict[str, Any]:
    """Return the documented error envelope."""
    return {"status": "error", "error": {"code": code, "message": message, "details": details}}


def sse(*payloads: dict[str, Any] | str) -> bytes:
    """Encode events as ``data: <json>\\n\\n``; a str payload is sent as is."""
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def run_code(code: str, *python_options: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter that imports this checkout; return the process and its run time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *python_options, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
    )
    return proc, time.monotonic() - started


def expect_clean_exit(code: str, stdout: str, *python_options: str, within: float = 5.0) -> None:
    """Run ``code``; it must print exactly ``stdout``, nothing on stderr, and exit 0 within ``within`` s."""
    proc, elapsed = run_code(code, *python_options)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, stdout, ""), proc.stderr
    assert elapsed < within, f"the interpreter took {elapsed:.1f} s to exit"


class _Chained(Protocol):
    """An exception, or a traceback.TracebackException: both name their cause and context."""

    @property
    def __cause__(self) -> Any: ...

    @property
    def __context__(self) -> Any: ...


_E = TypeVar("_E", bound=_Chained)


def exception_chain(exc: _E) -> Iterator[_E]:
    """Yield ``exc`` and every exception chained to it, as cause or context (each once)."""
    seen: set[int] = set()
    pending: list[_E | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([current.__cause__, current.__context__])
