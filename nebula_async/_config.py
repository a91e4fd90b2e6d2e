"""Client configuration: timeouts, retry policy, environment variables and defaults."""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._checks import check_int, check_number
from ._errors import NebulaError
from ._secret import Secret
from ._version import __version__

__all__ = [
    "CLIENT_CLOSED",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RETRIES",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "USER_AGENT",
    "Headers",
    "RetryPolicy",
    "Timeout",
    "build_headers",
    "check_api_key",
    "check_base_url",
    "cleartext_host",
]

DEFAULT_BASE_URL = "https://api.inference.nebulablock.com/v1"
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_CONNECTIONS = 100
ENV_API_KEY = "NEBULA_API_KEY"
ENV_BASE_URL = "NEBULA_BASE_URL"
CLIENT_CLOSED = "this client is closed; create a new client to make more calls"
USER_AGENT = f"nebula-sdk/{__version__} (nebula_async; Python {platform.python_version()})"


def _seconds_or_none(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_number(attribute.name, value, positive=True, unit=" of seconds")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(attribute.name, value)


def _retry_count(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_int(attribute.name, value, 0)


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, got {type(value).__name__}")


@attrs.frozen
class Timeout:
    """Timeouts in seconds; None disables one.

    - ``connect``: opening a TCP connection.
    - ``read``: the longest wait between two reads from the socket (for streams too). None by
      default: a non-streaming answer sends nothing until the whole text is generated, so ``total``
      is its bound, and ``stream_idle`` a stream's.
    - ``total``: a whole non-streaming call, including waiting for a pooled connection. A stream
      has no overall limit: ``total`` bounds only its wait for a connection, then ``read`` and
      ``stream_idle`` bound its silences.
    - ``stream_idle``: the longest wait between two ``data`` events in a stream; comments and
      keep-alive lines do not reset it, so a stalled stream still fails. It also bounds reading an
      answer to a stream request that is not a stream (an error page, say).
    """

    connect: float | None = attrs.field(default=10.0, validator=_seconds_or_none)
    read: float | None = attrs.field(default=None, validator=_seconds_or_none)
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
        check_number("timeout", value, positive=True, unit=" of seconds")
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

    def __attrs_post_init__(self) -> None:
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"initial_delay ({self.initial_delay:g}) must not exceed max_delay ({self.max_delay:g})"
            )


def check_api_key(key: Secret) -> Secret:
    """Return ``key`` if it can be sent as a Bearer token; the message never echoes it.

    Checked on the Secret, so that no frame of a raised error holds the key as a str.
    """
    if key.kind == "NoneType" or (key.kind == "str" and not key):
        raise NebulaError(f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable")
    if key.kind != "str":
        raise TypeError(f"api_key must be a str, got {key.kind}")
    if not _token_like(key.reveal()):
        raise ValueError("api_key must be printable ASCII without spaces; check how it was read or pasted")
    return key


def _token_like(key: str) -> bool:
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)


def check_base_url(url: object, source: str) -> str:
    """Return ``url`` without its trailing slash if usable; ``source`` names where it came from in errors."""
    if not isinstance(url, str):
        raise TypeError(f"{source} must be a str, got {type(url).__name__}")
    from urllib.parse import urlsplit  # here, not at import: only a client's construction needs it

    example = f"such as {DEFAULT_BASE_URL!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # parsing the port is what raises for a bad one
    except ValueError as exc:
        raise ValueError(f"{source} is not a valid URL ({exc}); use one {example}") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL holds a secret. aiohttp would also refuse it beside our Authorization.
        raise ValueError(f"{source} must not contain credentials; pass the key as api_key= instead")
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"{source} must be an http(s) URL {example}, got {url!r}")
    if "?" in url or "#" in url:  # even a bare one: the endpoint path would land after it
        raise ValueError(f"{source} must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def cleartext_host(url: str) -> str | None:
    """Return the host of a checked base URL whose requests would carry the key in clear text, or None.

    That is an ``http://`` URL whose host is not this machine's loopback (127.0.0.0/8, ::1,
    localhost): there, anyone on the way can read the Authorization header.
    """
    from urllib.parse import urlsplit  # here, not at import: only a client's construction needs it

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or host.rstrip(".") == "localhost":
        return None
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, not an address
        return host
    # ::ffff:127.0.0.1 is IPv4's loopback too; ipaddress says so only from Python 3.13 on.
    mapped = getattr(address, "ipv4_mapped", None)
    return None if address.is_loopback or (mapped is not None and mapped.is_loopback) else host


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters; tab is allowed


class Headers(dict[str, str]):
    """Request headers; Authorization is kept apart, as a Secret, until ``with_auth()`` reveals it."""

    def __init__(self, headers: Mapping[str, str] | None = None, *, auth: Secret | None = None) -> None:
        super().__init__(headers or {})
        self.auth = auth  # the whole Authorization value ("Bearer <key>"), or None to send none

    def with_auth(self) -> dict[str, str]:
        """Return the headers to send, Authorization included: pass it straight to aiohttp, keep no copy."""
        if self.auth is None:
            return dict(self)
        return {**self, "Authorization": self.auth.reveal()}

    def __repr__(self) -> str:
        shown = {k: "<redacted>" if k.lower() == "authorization" else v for k, v in self.items()}
        if self.auth is not None:
            shown["Authorization"] = "<redacted>"
        return repr(shown)


def build_headers(api_key: Secret, default_headers: Mapping[str, str] | None) -> Headers:
    """Return our headers with ``default_headers`` checked and merged over them (not Authorization)."""
    headers = Headers(
        {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        },
        auth=api_key.prefixed("Bearer "),
    )
    if default_headers is None:
        return headers
    if not isinstance(default_headers, Mapping):
        raise TypeError(f"default_headers must be a dict of str to str, got {type(default_headers).__name__}")
    for name, value in default_headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"default_headers: {name!r} is not a valid header name")
        if not isinstance(value, str):
            raise TypeError(f"default_headers[{name!r}] must be a str, got {type(value).__name__}")
        if _BAD_VALUE.search(value) or not _latin1(value):
            raise ValueError(f"default_headers[{name!r}] holds a line break or a character HTTP can't carry")
        if name.lower() == "authorization":
            raise ValueError("default_headers must not set Authorization: pass the key as api_key= instead")
        for ours in [k for k in headers if k.lower() == name.lower()]:
            del headers[ours]  # header names are case-insensitive: the caller's replaces ours
        headers[name] = value
    return headers


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
