"""Client configuration: timeouts, retry policy, environment variables and defaults."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RETRIES",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "RetryPolicy",
    "Timeout",
]

DEFAULT_BASE_URL = "https://api.inference.nebulablock.com/v1"
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_CONNECTIONS = 100
ENV_API_KEY = "NEBULA_API_KEY"
ENV_BASE_URL = "NEBULA_BASE_URL"


def _seconds_or_none(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    # bool is an int: Timeout(read=True) is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number of seconds or None, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0 or None, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _retry_count(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, got {type(value).__name__}")


@attrs.frozen
class Timeout:
    """Timeouts in seconds; None disables one.

    - ``connect``: opening a TCP connection.
    - ``read``: the longest wait between two reads from the socket (for streams too).
    - ``total``: a whole non-streaming call, including waiting for a pooled connection; streams
      have no total, they are bounded by ``read`` and ``stream_idle`` instead.
    - ``stream_idle``: the longest wait between two ``data`` events in a stream; comments and
      keep-alive lines do not reset it, so a stalled stream still fails.
    """

    connect: float | None = attrs.field(default=10.0, validator=_seconds_or_none)
    read: float | None = attrs.field(default=60.0, validator=_seconds_or_none)
    total: float | None = attrs.field(default=600.0, validator=_seconds_or_none)
    stream_idle: float | None = attrs.field(default=120.0, validator=_seconds_or_none)

    @classmethod
    def coerce(cls, value: float | Timeout | None) -> Timeout:
        """Return ``value`` as a Timeout: None gives the defaults, a number sets connect, read and total."""
        if value is None:
            return _DEFAULT_TIMEOUT
        if isinstance(value, Timeout):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or a Timeout, got {type(value).__name__}")
        return cls(connect=value, read=value, total=value, stream_idle=value)


_DEFAULT_TIMEOUT = Timeout()


@attrs.frozen
class RetryPolicy:
    """When and how long to wait before trying a failed call again.

    ``max_retries`` extra attempts at most. The wait is the server's ``retry-after-ms`` or
    ``Retry-After`` when present; one above ``max_retry_after`` seconds is not slept through: the
    call raises at once. Otherwise it is exponential backoff, ``initial_delay * 2 ** (attempt - 1)``
    capped at ``max_delay``, with full jitter (a uniform draw in [0, that]) when ``jitter`` is true.
    """

    max_retries: int = attrs.field(default=DEFAULT_MAX_RETRIES, validator=_retry_count)
    initial_delay: float = attrs.field(default=0.5, validator=_non_negative)
    max_delay: float = attrs.field(default=8.0, validator=_non_negative)
    jitter: bool = attrs.field(default=True, validator=_boolean)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
