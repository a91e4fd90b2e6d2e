"""The aiohttp boundary: session lifecycle, sending and reading, and mapping aiohttp's errors to ours.

Imported on first use, not with the package: aiohttp takes longer to import than the rest of the SDK.
Every aiohttp call that can fail on the network is made here, and its errors mapped by ``_map_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._config import CLIENT_CLOSED, Headers, Timeout
from ._errors import APIConnectionError, APITimeoutError

__all__ = ["Transport"]

logger = logging.getLogger("nebula_async")

_DRAIN_SECONDS = 1.0  # after a stream's final event, how long the rest of its body may take
_DRAIN_BYTES = 64 * 1024  # and how much of it we read, to keep the connection for the pool

# What aiohttp raises for the network or the peer, given raise_for_status=False and no redirects
# (ClientResponseError then only means a malformed response). Anything else is a bug and propagates.
_TRANSPORT_ERRORS = (
    asyncio.TimeoutError,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)
# Retrying cannot fix a certificate or fingerprint that doesn't match.
_PERMANENT_ERRORS = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)


def _describe(exc: BaseException) -> str:
    # Never repr(): some aiohttp reprs hold the request headers, and so the API key.
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _map_error(exc: BaseException, request_id: str | None = None) -> APIConnectionError:
    """Return our error for an aiohttp or timeout error (a function: a context manager per call costs)."""
    if isinstance(exc, asyncio.TimeoutError):  # first: aiohttp's timeouts are also ClientConnectionErrors
        return APITimeoutError("timed out waiting for the API", request_id=request_id)
    if isinstance(exc, aiohttp.ClientResponseError):
        _redact(exc)  # chained by the caller: its request_info holds our headers, and so the key
    return APIConnectionError(
        f"connection to the API failed: {_describe(exc)}",
        request_id=request_id,
        retryable=not isinstance(exc, _PERMANENT_ERRORS),
    )


def _redact(exc: aiohttp.ClientResponseError) -> None:
    info = exc.request_info
    headers = CIMultiDict(info.headers)
    if "Authorization" in headers:
        headers["Authorization"] = "<redacted>"
    exc.request_info = aiohttp.RequestInfo(info.url, info.method, CIMultiDictProxy(headers), info.real_url)


async def _read_to_end(response: aiohttp.ClientResponse) -> bool:
    read = 0
    while read <= _DRAIN_BYTES:
        data = await response.content.readany()
        if not data:
            return True
        read += len(data)
    return False  # more trailing data than we will read


class Transport:
    """One client's ClientSession: made lazily in the running loop, or the caller's, never closed by us."""

    def __init__(
        self,
        *,
        url: str,
        max_connections: int,
        session: aiohttp.ClientSession | None,
        headers: Mapping[str, str],
    ) -> None:
        self.url = URL(url)
        self._max_connections = max_connections
        self._session = session
        self._owned = session is None
        self._headers = headers
        # What each call passes: on a session of ours, our headers are its defaults, which aiohttp copies
        # in C, instead of merging a dict of them into every request. A caller's session gets them all.
        stream_headers = {**headers, "Accept": "text/event-stream"}
        self._call_headers: dict[bool, Mapping[str, str] | None] = (
            {False: None, True: {"Accept": "text/event-stream"}}
            if self._owned
            else {False: headers, True: Headers(stream_headers)}
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._timeouts: dict[tuple[Timeout, bool], aiohttp.ClientTimeout] = {}

    def check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            # aiohttp would hang or fail obscurely: its connections belong to the first loop.
            raise RuntimeError(
                "this client was first used in another event loop; create one client per event loop "
                "(or use nebula_sync.NebulaClient from threads)"
            )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(CLIENT_CLOSED)
        self.check_loop()
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), headers=self._headers
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
                # A stream has no total, only the wait for a connection (pool and connect) does.
                total=None if stream else timeout.total,
                connect=timeout.total if stream else None,
                sock_connect=timeout.connect,
                sock_read=read,
            )
            if len(self._timeouts) < 64:  # per-call overrides must not grow this without bound
                self._timeouts[key] = cached
        return cached

    async def post(
        self, body: bytes, *, stream: bool, timeout: aiohttp.ClientTimeout, attempt: int
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response with its body unread."""
        session = self._get_session()
        started = time.monotonic()
        try:
            try:
                response = await session.post(
                    self.url,
                    data=body,
                    headers=self._call_headers[stream],
                    timeout=timeout,
                    # The status is ours to map, and a redirect would turn the POST into a GET.
                    raise_for_status=False,
                    allow_redirects=False,
                )
            except _TRANSPORT_ERRORS as exc:
                raise _map_error(exc) from exc
        except asyncio.CancelledError:
            # Closing the pool cancels the calls waiting for one of its connections: that is our
            # aclose(), not a cancellation of the caller's task (which, on 3.11+, we can tell apart).
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)
            if self._closed and not (cancelling is not None and cancelling()):
                raise APIConnectionError(
                    "the client was closed while the call waited for a connection"
                ) from None
            raise
        except APIConnectionError as exc:
            elapsed = (time.monotonic() - started) * 1000
            logger.debug("POST %s failed after %.1f ms (attempt %d): %s", self.url, elapsed, attempt, exc)
            raise
        elapsed = (time.monotonic() - started) * 1000
        logger.debug("POST %s -> %d in %.1f ms (attempt %d)", self.url, response.status, elapsed, attempt)
        return response

    @staticmethod
    async def read_body(response: aiohttp.ClientResponse) -> bytes:
        """Read a whole body and release the connection."""
        try:
            return await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, response.headers.get("x-request-id")) from exc
        finally:
            response.release()

    @staticmethod
    async def read_chunk(response: aiohttp.ClientResponse, request_id: str | None) -> bytes:
        """Return the next bytes that arrived (as many as there are), or b"" at the end of the body."""
        try:
            return await response.content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, request_id) from exc

    @staticmethod
    async def drain(response: aiohttp.ClientResponse) -> None:
        """Read what is left of a body, briefly, then release it to the pool, or close it if it won't end."""
        try:
            ended = await asyncio.wait_for(_read_to_end(response), _DRAIN_SECONDS)
        except _TRANSPORT_ERRORS:  # slow or broken: the connection is not worth keeping
            ended = False
        except BaseException:
            response.close()
            raise
        if ended:
            response.release()
        else:
            response.close()

    async def aclose(self) -> None:
        """Close the session if we made it; idempotent."""
        if self._closed:
            return
        if self._loop is not None:
            self.check_loop()  # closing from another loop would leak the sockets silently
        self._closed = True
        session, self._session = self._session, None
        if self._owned and session is not None and not session.closed:
            await session.close()
            # Let the SSL/transport close callbacks run before the loop may end.
            await asyncio.sleep(0)
