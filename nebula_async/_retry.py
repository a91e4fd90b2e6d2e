"""Pure retry decisions: whether a failure is worth another try, and how long to wait first."""

from __future__ import annotations

import random
from collections.abc import Callable

from ._config import RetryPolicy
from ._errors import (
    APIConnectionError,
    APIError,
    NebulaError,
    RateLimitError,
    ServerError,
    class_for_code,
)

__all__ = ["RETRYABLE_STATUS", "is_retryable", "retry_delay"]

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# Known codes decide before the status, by their class (one class per code, so one decision per
# code): a 429 saying insufficient_quota (not a RateLimitError) will not get better by waiting, a 500 saying
# invalid_request will not either, and a server_error in a 200 (a stream's error event before its
# first chunk) is worth another try like a 500.
_RETRYABLE_CLASSES = (RateLimitError, ServerError)


def is_retryable(error: NebulaError) -> bool:
    """Say whether another attempt could succeed where this one failed."""
    if isinstance(error, APIConnectionError):
        return error.retryable
    if isinstance(error, APIError):
        cls = class_for_code(error.code)
        if cls is not None:
            return issubclass(cls, _RETRYABLE_CLASSES)
        return error.status_code in RETRYABLE_STATUS
    return False


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    error: NebulaError,
    *,
    random: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before retry ``attempt`` (1-based), or None to give up. Never sleeps.

    Gives up when ``attempt > policy.max_retries``, when the error is not retryable, or when the
    server's Retry-After exceeds ``policy.max_retry_after`` (waiting that long in a call is worse
    than failing with ``retry_after`` set). A Retry-After within bounds is used as is; otherwise
    ``min(max_delay, initial_delay * 2 ** (attempt - 1))``, times a uniform draw in [0, 1) when
    ``jitter`` is on ("full jitter"). The exponent is capped, so a huge attempt cannot overflow.
    """
    if attempt > policy.max_retries or not is_retryable(error):
        return None
    retry_after = error.retry_after if isinstance(error, APIError) else None
    if retry_after is not None:
        return retry_after if retry_after <= policy.max_retry_after else None
    # 2 ** 64 already dwarfs any max_delay; a larger exponent would only risk OverflowError.
    backoff = min(policy.max_delay, policy.initial_delay * 2.0 ** min(attempt - 1, 64))
    return backoff * random() if policy.jitter else backoff
