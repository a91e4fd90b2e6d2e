"""The aiohttp boundary: session lifecycle, sending, and mapping aiohttp's errors to ours.

Imported on first use, not with the package: aiohttp takes longer to import than the rest of the SDK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from yarl import URL

from ._config import Timeout
from ._errors import APIConnectionError, APITimeoutError, NebulaError

__all__ = ["Transport", "transport_error"]

logger = logging.getLogger("nebula_async")


def transport_error(exc: BaseException, request_id: str | None = None) -> NebulaError:
    """Map an aiohttp or timeout exception to APITimeoutError or APIConnectionError."""
    # Timeouts first: aiohttp's ServerTimeoutError is also a ClientConnectionError.
    if isinstance(exc, asyncio.TimeoutError):
        return APITimeoutError("timed out waiting for the API", request_id=request_id)
    return APIConnectionError(f"connection to the API failed: {describe(exc)}", request_id=request_id)


def describe(exc: BaseException) -> str:
    """Name an aiohttp error in one line; never repr(): some reprs hold the request headers, key included."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


TRANSPORT_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError)


class Transport:
    """One client's ClientSession: made lazily in the running loop, or the caller's, never closed by us."""

    def __init__(self, *, url: str, max_connections: int, session: aiohttp.ClientSession | None) -> None:
        self.url = URL(url)
        self._max_connections = max_connections
        self._session = session
        self._owned = session is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._timeouts: dict[tuple[Timeout, bool], aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("this client is closed; create a new client to make more calls")
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            # aiohttp would hang or fail obscurely: its connections belong to the first loop.
            raise RuntimeError(
                "this client was first used in another event loop; create one client per event loop "
                "(or use nebula_sync.NebulaClient from threads)"
            )
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    def client_timeout(self, timeout: Timeout, *, stream: bool) -> aiohttp.ClientTimeout:
        """Return the aiohttp timeout for ``timeout``, built once per distinct value."""
        key = (timeout, stream)
        cached = self._timeouts.get(key)
        if cached is None:
            read = timeout.read
            if stream and timeout.stream_idle is not None:
                # Silence longer than stream_idle breaks the idle limit too: let the socket say so.
                read = timeout.stream_idle if read is None else min(read, timeout.stream_idle)
            cached = aiohttp.ClientTimeout(
                # A stream has no total: it is bounded by read and stream-idle timeouts instead.
                total=None if stream else timeout.total,
                sock_connect=timeout.connect,
                sock_read=read,
            )
            if len(self._timeouts) < 64:  # per-call overrides must not grow this without bound
                self._timeouts[key] = cached
        return cached

    async def post(
        self, body: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout, attempt: int
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response with its body unread; map transport errors."""
        session = self._get_session()
        started = time.monotonic()
        try:
            response = await session.post(self.url, data=body, headers=headers, timeout=timeout)
        except TRANSPORT_ERRORS as exc:
            logger.debug(
                "POST %s failed after %.1f ms (attempt %d): %s",
                self.url,
                (time.monotonic() - started) * 1000,
                attempt,
                describe(exc),
            )
            raise transport_error(exc) from exc
        logger.debug(
            "POST %s -> %d in %.1f ms (attempt %d)",
            self.url,
            response.status,
            (time.monotonic() - started) * 1000,
            attempt,
        )
        return response

    @staticmethod
    async def read_body(response: aiohttp.ClientResponse) -> bytes:
        """Read a whole body and release the connection; map transport errors."""
        try:
            return await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, response.headers.get("x-request-id")) from exc
        finally:
            response.release()

    @property
    def closed(self) -> bool:
        """Say whether aclose() was called."""
        return self._closed

    async def aclose(self) -> None:
        """Close the session if we made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if self._owned and session is not None and not session.closed:
            await session.close()
            # Let the SSL/transport close callbacks run before the loop may end.
            await asyncio.sleep(0)
