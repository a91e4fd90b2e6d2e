"""What a client verifies the API's certificate against: ``verify=``, decided once when the client is made.

Pure (stdlib only). The result is what aiohttp's connector takes as ``ssl=``: True keeps aiohttp's
default context (the system's CAs, made once per process), so a client costs nothing more unless it
needs a context of its own: a CA bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` set when it is made
(aiohttp's default context read them once, when aiohttp was imported).
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Verify", "resolve_verify"]

Verify: TypeAlias = "bool | str | os.PathLike[str] | ssl.SSLContext"
"""What ``verify=`` takes: True, False, a CA bundle file or c_rehash'd directory, or an SSLContext."""

_ENV_FILE = "SSL_CERT_FILE"
_ENV_DIR = "SSL_CERT_DIR"


def resolve_verify(verify: Verify, *, trust_env: bool) -> ssl.SSLContext | bool:
    """Return the connector's ``ssl=`` for ``verify``; raise TypeError or ValueError for a bad one now."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        return False
    if verify is True:
        env = (os.environ.get(_ENV_FILE) or None, os.environ.get(_ENV_DIR) or None)
        if env == (None, None):
            return True
        # OpenSSL reads the two variables each time a context loads its default CAs: now, for this client.
        return _cached(_defaults if trust_env else _compiled_defaults, *env, *map(_stamp, env))
    if isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        if not isinstance(path, str):
            raise TypeError("verify must be a str path, not bytes")
        return _bundle(path)
    raise TypeError(
        "verify must be True, False, the path of a CA bundle (file or directory) or an ssl.SSLContext, "
        f"got {type(verify).__name__}"
    )


def _bundle(path: str) -> ssl.SSLContext:
    if os.path.isdir(path):
        return _cached(_only, None, path, None, _stamp(path))
    if not os.path.isfile(path):
        raise ValueError(f"verify={path!r}: no such file or directory (give a PEM CA bundle or a directory)")
    try:
        return _cached(_only, path, None, _stamp(path), None)
    except ssl.SSLError as exc:
        raise ValueError(f"verify={path!r} is not a PEM CA bundle: {exc.reason or exc}") from exc
    except OSError as exc:
        raise ValueError(f"verify={path!r} can't be read: {exc.strerror or exc}") from exc


def _stamp(path: str | None) -> tuple[int, int] | None:
    # A changed file makes a new context; an unchanged one shares it (loading a bundle takes milliseconds).
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=16)
def _cached(
    build: Callable[[str | None, str | None], ssl.SSLContext],
    cafile: str | None,
    capath: str | None,
    *stamps: tuple[int, int] | None,
) -> ssl.SSLContext:
    context = build(cafile, capath)
    context.set_alpn_protocols(("http/1.1",))  # as aiohttp's default context
    return context


def _only(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """Trust only these CAs, as requests and httpx do for a bundle."""
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _defaults(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """The system's CAs, as OpenSSL reads SSL_CERT_FILE and SSL_CERT_DIR now (the arguments key the cache)."""
    return ssl.create_default_context()


def _compiled_defaults(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """The system's CAs, ignoring SSL_CERT_FILE and SSL_CERT_DIR (trust_env=False)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and checks the hostname
    if sys.platform == "win32":  # the Windows store: what create_default_context loads there
        context.load_default_certs()
        return context
    paths = ssl.get_default_verify_paths()
    file = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    directory = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if file is not None or directory is not None:
        context.load_verify_locations(cafile=file, capath=directory)
    return context
