"""Which proxy a client uses: ``proxy=``, else the environment, decided once when the client is made.

Pure (stdlib only). aiohttp's own ``trust_env`` re-reads the environment on every request and
applies ``.netrc`` to the API's host too, which would clash with our Bearer header: so the client's
session gets the one proxy resolved here instead. ``urllib.request.getproxies()`` and
``proxy_bypass()`` read ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` in either case
(lower case wins) as requests does; on macOS and Windows they fall back to the system's settings.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

__all__ = ["SUPPORTED_SCHEMES", "Proxy", "resolve_proxy"]

SUPPORTED_SCHEMES = ("http", "https")  # what aiohttp can talk to: no SOCKS without aiohttp-socks
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    """A proxy to send every request through: ``url`` for aiohttp, ``shown`` for messages."""

    url: str = field(repr=False)  # may hold credentials: never shown
    shown: str  # scheme://host:port, no credentials
    source: str  # where it came from: "proxy=", an environment variable, or the system's settings
    from_env: bool


def resolve_proxy(api_url: str, proxy: str | None, *, trust_env: bool) -> Proxy | None:
    """Return the proxy for requests to ``api_url``, or None to connect directly.

    ``proxy`` wins over the environment; ``trust_env=False`` ignores the environment. Raises
    TypeError or ValueError naming the setting (never its credentials) for a URL aiohttp can't use.
    """
    if proxy is not None:
        if not isinstance(proxy, str):
            raise TypeError(f"proxy must be a URL string or None, got {type(proxy).__name__}")
        return _parse(proxy, "proxy=", from_env=False)
    if not trust_env:
        return None
    import urllib.request  # here: it takes longer to import than the whole SDK, and aiohttp loads it anyway

    parts = urlsplit(api_url)
    found = urllib.request.getproxies()
    scheme = parts.scheme.lower()
    key = scheme if found.get(scheme) else "all"
    value = found.get(key)
    if not value:
        return None
    if urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):  # NO_PROXY: host or host:port
        return None
    parsed = _parse(value, _env_name(key, value), from_env=True)
    if "@" in urlsplit(parsed.url).netloc:
        return parsed
    return _with_netrc(parsed)


def _env_name(key: str, value: str) -> str:
    # getproxies() lower-cases the names it read; say which variable it was (lower case wins).
    for name in (f"{key}_proxy", f"{key.upper()}_PROXY"):
        if os.environ.get(name) == value:
            return name
    return "the system's proxy settings"


def _parse(value: str, source: str, *, from_env: bool) -> Proxy:
    # Messages name the source, never the value: it may hold a password.
    if "://" not in value:
        if not from_env:
            raise ValueError(f"{source} must be a URL with a scheme, like http://proxy.example:3128")
        value = "http://" + value  # as requests and httpx read HTTPS_PROXY=proxy.example:3128
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # an unclosed [ of an IPv6 host; its text may hold a password
        raise ValueError(f"{source} is not a valid URL, like http://proxy.example:3128") from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"{source} is a {scheme}:// proxy, which aiohttp can't use: only http:// and https:// "
            "proxies work (for SOCKS, pass your own session with aiohttp-socks' connector)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{source} has a port that is not a number from 0 to 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{source} has no host, like http://proxy.example:3128")
    netloc_host = f"[{host}]" if ":" in host else host
    hostport = f"{netloc_host}:{port if port is not None else _DEFAULT_PORTS[scheme]}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    url = f"{scheme}://{userinfo}@{hostport}" if userinfo else f"{scheme}://{hostport}"
    return Proxy(url=url, shown=f"{scheme}://{hostport}", source=source, from_env=from_env)


def _with_netrc(proxy: Proxy) -> Proxy:
    # As aiohttp's trust_env does: a proxy from the environment without credentials takes .netrc's.
    import netrc  # here: only a proxy from the environment needs it

    host = urlsplit(proxy.url).hostname or ""
    try:
        name = "_netrc" if sys.platform == "win32" else ".netrc"
        path = os.environ.get("NETRC") or str(Path.home() / name)
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, RuntimeError, netrc.NetrcParseError):  # no file or no home: no credentials
        return proxy
    if entry is None or not (entry[0] or entry[2]):
        return proxy
    login, _account, password = entry
    userinfo = quote(login or "", safe="") + ":" + quote(password or "", safe="")
    scheme, _, hostport = proxy.url.partition("://")
    url = f"{scheme}://{userinfo}@{hostport}"
    return Proxy(url=url, shown=proxy.shown, source=proxy.source, from_env=True)
