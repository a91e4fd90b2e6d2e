"""The aiohttp boundary: session lifecycle, sending and reading, and mapping aiohttp's errors to ours.

Imported when a client is made, not with the package: aiohttp takes longer to import than the rest
of the SDK, and a first call must not import it inside the running loop.
Every aiohttp call that can fail on the network is made here, and its errors mapped by ``_map_error``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._config import CLIENT_CLOSED, Headers, Timeout
from ._errors import TIMED_OUT, APIConnectionError, APITimeoutError, NebulaError
from ._kernel import wake_loop_on_signals
from ._parse import MAX_ERROR_BODY_BYTES, too_large

if TYPE_CHECKING:
    import ssl

    from ._proxy import Proxy
    from ._secret import Secret

__all__ = ["MAX_BODY_BYTES", "MAX_ERROR_BODY_BYTES", "Transport", "body_limit"]

logger = logging.getLogger("nebula_async")

_EXITING = False  # set by an atexit hook of ours, which runs before the finalizers of abandoned clients

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
# What the proxy, not the API, answered or refused (a refused connection to the proxy, a failed CONNECT).
_PROXY_ERRORS = (aiohttp.ClientHttpProxyError, aiohttp.ClientProxyConnectionError)
# Retrying cannot fix a certificate or fingerprint that doesn't match.
_PERMANENT_ERRORS = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)


def _describe(exc: BaseException) -> str:
    # Never repr(): some aiohttp reprs hold the request headers, and so the API key.
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _map_error(
    exc: BaseException, request_id: str | None = None, *, proxy: Proxy | None = None, stream: bool = False
) -> APIConnectionError:
    """Return our error for an aiohttp or timeout error (a function: a context manager per call costs).

    ``proxy`` is the client's proxy, if any: its own errors are not the API's. ``stream``: the body
    being read is a stream's.
    """
    if isinstance(exc, asyncio.TimeoutError):  # first: aiohttp's timeouts are also ClientConnectionErrors
        return APITimeoutError(TIMED_OUT, request_id=request_id)
    if isinstance(exc, aiohttp.ClientResponseError):
        _redact(exc)  # chained by the caller: its request_info holds our headers, and so the key
    if proxy is not None and isinstance(exc, _PROXY_ERRORS):
        return _proxy_error(exc, proxy)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        # verify= checks an https:// proxy's certificate too, and the error does not say whose it was.
        whose = "the API's" if proxy is None or proxy.shown.startswith("http:") else "the API's or proxy's"
        return APIConnectionError(
            f"{whose} certificate did not verify ({reason}): if it is signed by a private CA, "
            "pass verify='/path/to/ca.pem' (or set SSL_CERT_FILE)",
            request_id=request_id,
            retryable=False,
        )
    if isinstance(exc, aiohttp.ClientPayloadError) and not isinstance(exc.__cause__, ContentEncodingError):
        # Not aiohttp's text: its "400, message=..." reads like an HTTP status the API sent.
        inner = exc.__cause__ if exc.__cause__ is not None else exc
        return APIConnectionError(
            f"connection to the API failed: the connection closed before the "
            f"{'stream' if stream else 'answer'} ended ({type(inner).__name__})",
            request_id=request_id,
        )
    return APIConnectionError(
        f"connection to the API failed: {_describe(exc)}",
        request_id=request_id,
        retryable=not isinstance(exc, _PERMANENT_ERRORS),
    )


def _redact(exc: aiohttp.ClientResponseError) -> None:
    info = exc.request_info
    headers = CIMultiDict(info.headers)
    for name in ("Authorization", "Proxy-Authorization"):
        if name in headers:
            headers[name] = "<redacted>"
    url, real_url = info.url.with_user(None), info.real_url.with_user(None)  # a proxy's credentials
    exc.request_info = aiohttp.RequestInfo(url, info.method, CIMultiDictProxy(headers), real_url)
    exc.args = (exc.request_info, *exc.args[1:])  # its repr() shows args, which held the original


def _proxy_authorization(url: str) -> Headers | None:
    """The Proxy-Authorization header for the credentials in a proxy's ``url``, if it has any."""
    parts = URL(url)
    if parts.user is None and parts.password is None:
        return None
    return Headers({"Proxy-Authorization": aiohttp.encode_basic_auth(parts.user or "", parts.password or "")})


def _proxy_error(exc: aiohttp.ClientError, proxy: Proxy) -> APIConnectionError:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return _proxy_refusal(proxy, exc.status, exc.message)
    cause = exc.os_error if isinstance(exc, aiohttp.ClientProxyConnectionError) else exc
    return APIConnectionError(
        f"could not connect to the proxy {proxy.shown} (from {proxy.source}): {_describe(cause)}; "
        f"is it running? Or {_proxy_fix(proxy)}"
    )


def _proxy_refusal(proxy: Proxy, status: int, reason: str) -> APIConnectionError:
    """Return the error for a proxy that answered ``status`` instead of passing the request on."""
    if status in (401, 407):  # tinyproxy, for one, answers a bad login with 401
        advice = (
            "check the proxy's credentials (in its URL, or in .netrc)"
            if "@" in proxy.url
            else "put its credentials in the proxy URL (http://user:password@host:port)"
        )
    elif status >= 500:
        advice = "it could not reach the API"
    else:
        advice = "it does not let this client through"
    return APIConnectionError(
        f"the proxy {proxy.shown} (from {proxy.source}) answered {status} {reason}: {advice}; "
        f"or {_proxy_fix(proxy)}",
        retryable=status >= 500,  # a proxy's upstream may come back; a refusal will not change
    )


def _proxy_fix(proxy: Proxy) -> str:
    if proxy.from_env:
        return "check NO_PROXY, or pass trust_env=False to connect directly"
    return "check the proxy= URL, or leave it out to connect directly"


# What read_body reads of an answer at most (see body_limit; an error's, MAX_ERROR_BODY_BYTES, is
# _parse's), and of one past that, for its error.
MAX_BODY_BYTES = 64 * 1024 * 1024  # a 200 JSON answer: far above any real text's, and a bound
_HEAD_BYTES = 4 * 1024


def body_limit(response: aiohttp.ClientResponse) -> int:
    """Return the most read_body reads of ``response``: MAX_BODY_BYTES for a 200 JSON answer, else less."""
    content_type = response.content_type
    is_json = content_type == "application/json" or content_type.endswith("+json")
    return MAX_BODY_BYTES if response.status == 200 and is_json else MAX_ERROR_BODY_BYTES


async def _read_head(response: aiohttp.ClientResponse) -> bytes:
    """Read the start of a body, about _HEAD_BYTES (for an error's preview), and no more."""
    parts: list[bytes] = []
    size = 0
    while size < _HEAD_BYTES:
        data = await response.content.readany()
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)[:_HEAD_BYTES]


def _head_of(parts: list[bytes]) -> bytes:
    """Join the first _HEAD_BYTES of ``parts``: not all of them, which would copy a body of up to 64 MiB."""
    size = 0
    for count, part in enumerate(parts, 1):
        size += len(part)
        if size >= _HEAD_BYTES:
            return b"".join(parts[:count])[:_HEAD_BYTES]
    return b"".join(parts)


async def _read_to_end(response: aiohttp.ClientResponse) -> bool:
    read = 0
    while read <= _DRAIN_BYTES:
        data = await response.content.readany()
        if not data:
            return True
        read += len(data)
    return False  # more trailing data than we will read


class _CallHeaders:
    """The headers each call passes, by ``[stream]``: built per call when they hold the key."""

    __slots__ = ("_auth", "_by_stream")

    def __init__(self, headers: Mapping[str, str], auth: Secret | None) -> None:
        self._by_stream = {False: dict(headers), True: {**headers, "Accept": "text/event-stream"}}
        self._auth = auth

    def __getitem__(self, stream: bool) -> Mapping[str, str] | None:
        headers = self._by_stream[stream]
        if self._auth is None:
            return headers or None
        return {**headers, "Authorization": self._auth.reveal()}


class Transport:
    """One client's ClientSession: made lazily in the running loop, or the caller's, never closed by us."""

    def __init__(
        self,
        *,
        url: str,
        max_connections: int,
        session: aiohttp.ClientSession | None,
        headers: Headers,
        proxy: Proxy | None = None,
        tls: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = URL(url)
        self._proxy = proxy
        self._tls = tls
        # Over plain http the proxy answers a refusal itself, as a response, not as a failed CONNECT.
        self._http_proxy = proxy if self.url.scheme == "http" else None
        proxy_login = None if proxy is None else _proxy_authorization(proxy.url)
        # aiohttp sends proxy_headers with a CONNECT; a plain-http request carries them itself.
        self._proxy_headers = proxy_login if self._http_proxy is None else None
        self._max_connections = max_connections
        self._session = session
        self._owned = session is None
        # What each call passes: on a session of ours, our headers are its defaults, which aiohttp copies
        # in C, instead of merging a dict of them into every request. A caller's session gets them all.
        # Through a proxy, the key is passed per call: aiohttp builds the CONNECT request from the
        # session's defaults and sends an Authorization among them to the proxy, as Proxy-Authorization.
        # The key stays a Secret in headers.auth here: it is revealed into what aiohttp is handed
        # (the session's defaults, or each call's headers), never into a dict of ours.
        session_auth = headers.auth if self._owned and proxy is None else None
        self._headers = Headers(headers, auth=session_auth)
        per_call: dict[str, str] = {} if self._owned else dict(headers)
        if self._http_proxy is not None and proxy_login is not None:
            per_call.update(proxy_login)
        self._call_headers = _CallHeaders(per_call, None if session_auth is not None else headers.auth)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Set while our session is open: the loop closes it when the loop shuts down (see _watch_loop).
        self._guard: AsyncGenerator[None, None] | None = None
        self._closing: asyncio.Future[None] | None = None  # the one close of the session, shared
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
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ssl=self._tls)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers=self._headers.with_auth(),
                # Resolved once by the client: aiohttp's trust_env would re-read the environment per request.
                # Without its credentials, which go in proxy_headers: aiohttp keeps the proxy URL in
                # its connection keys, and so in the repr of its connection errors.
                proxy=None if self._proxy is None else URL(self._proxy.shown),
            )
            self._closing = None  # a loop reused after its shutdown_asyncgens() gets a new session
            self._watch_loop()
            wake_loop_on_signals(asyncio.get_running_loop())  # in a Jupyter kernel: prompt interrupts
        return self._session

    def _watch_loop(self) -> None:
        """Have the running loop close our session when it shuts down, if nobody closed it before.

        asyncio.run() (and asyncio.Runner, uvloop.run, pytest-asyncio) closes every open async
        generator before it closes the loop: the last moment the connections can be closed in it,
        instead of aiohttp's "Unclosed client session" at exit. The generator is run to its first
        yield here, which never suspends: that registers it with the running loop.
        """
        guard = self._until_loop_ends()
        try:
            guard.asend(None).send(None)  # asend() calls the loop's first-iteration hook
        except StopIteration:
            self._guard = guard
        except ResourceWarning:  # asyncio's, as an error: a loop reused after shutdown_asyncgens()
            pass  # has no shutdown left to watch for
        else:  # pragma: no cover - the generator's body has no await before its yield
            raise AssertionError("the loop guard suspended before its first yield")

    async def _until_loop_ends(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._guard = None
            if self._session is not None:  # the loop is ending (not our aclose(), which cleared it)
                await self._close_session()

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
                # Never aiohttp's total: its timer can turn the caller's cancel into a timeout. A
                # call's total is a Deadline of ours (nebula_async._deadline, CallPath.run); a
                # stream has none, only its wait for a connection (pool and connect) is bounded.
                total=None,
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
                    proxy_headers=self._proxy_headers,
                )
            except _TRANSPORT_ERRORS as exc:
                raise _map_error(exc, proxy=self._proxy) from exc
            if response.status == 407 and self._http_proxy is not None:
                response.release()
                reason = response.reason or "Proxy Authentication Required"
                raise _proxy_refusal(self._http_proxy, 407, reason)
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
    def never_sent(error: NebulaError) -> bool:
        """Say whether ``error`` (from post()) means the request never reached the API: no connection."""
        return isinstance(error.__cause__, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))

    @staticmethod
    async def read_body(response: aiohttp.ClientResponse) -> bytes:
        """Read a whole body, up to its cap (see body_limit), and release the connection.

        Past the cap, reading stops, the connection is closed, and the error ``too_large`` names
        is raised, built from the body's head.
        """
        limit = body_limit(response)
        request_id = response.headers.get("x-request-id")
        ended = False
        try:
            # Content-Length is believed only when it says "too long": a shorter one may lie, and
            # counts compressed bytes. aiohttp inflates as it is read, a chunk at a time.
            declared = response.content_length
            if declared is not None and declared > limit:
                head = await _read_head(response)
            else:
                parts: list[bytes] = []
                size = 0
                while True:
                    data = await response.content.readany()
                    if not data:
                        ended = True
                        return b"".join(parts)
                    parts.append(data)
                    size += len(data)
                    if size > limit:
                        head = _head_of(parts)
                        break
                del parts  # before the error is raised: nothing but the head is kept
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, request_id) from exc
        finally:
            if ended:
                response.release()
            else:  # not read to its end: the connection is not reusable
                response.close()
        raise too_large(response.status, head, response.headers, limit)

    @staticmethod
    async def read_chunk(response: aiohttp.ClientResponse, request_id: str | None) -> bytes:
        """Return the next bytes that arrived (as many as there are), or b"" at the end of the body."""
        try:
            return await response.content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, request_id, stream=True) from exc

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

    @staticmethod
    def close_response(response: aiohttp.ClientResponse) -> asyncio.Future[None] | None:
        """Close ``response``'s connection; return what is done once its socket is closed, if anything."""
        connection = response.connection
        protocol = None if connection is None else connection.protocol
        response.close()
        return None if protocol is None else protocol.closed

    @staticmethod
    async def wait_closed(closing: list[asyncio.Future[None]]) -> None:
        """Wait, briefly, for connections closed by close_response() to be closed."""
        if closing:
            await asyncio.wait(closing, timeout=_DRAIN_SECONDS)

    async def aclose(self) -> None:
        """Close the session if we made it; idempotent. Runs in the session's loop (see in_own_loop)."""
        self._closed = True
        await self._close_session()

    async def _close_session(self) -> None:
        await asyncio.shield(self._start_closing())

    def _start_closing(self) -> asyncio.Future[None]:
        # One close, shared: aclose(), a finalizer's close and the loop's shutdown may overlap. A
        # close that was cancelled (asyncio.run() cancels every task before it ends) is started again.
        if self._closing is None or self._closing.cancelled():
            self._closing = asyncio.ensure_future(self._shut_session())
        return self._closing

    async def _shut_session(self) -> None:
        session = self._session
        if self._owned and session is not None and not session.closed:
            await session.close()
            # Let the SSL/transport close callbacks run before the loop may end.
            await asyncio.sleep(0)
        self._session = None
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.aclose()  # it finds the session gone: nothing left for it to do
        _ABANDONED.discard(self)

    async def in_own_loop(self, close: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Await ``close()`` in the loop our connections belong to, from any loop.

        Connections can only be closed by the loop that opened them: in this one; in the owner's
        thread while it runs elsewhere; in a worker thread while nobody runs it (so don't run it
        yourself meanwhile). If the owner loop is closed, its connections are given up quietly.
        """
        while True:
            loop = self._loop
            if loop is None or loop is asyncio.get_running_loop():
                await close()
                return
            if loop.is_closed():
                self._closed = True
                self._give_up()
                return
            if not loop.is_running():
                await asyncio.to_thread(loop.run_until_complete, close())
                return
            if await _run_in(loop, close):
                return
            # The owner loop stopped before our close ran there: look again at what it is now.

    def abandon(self) -> None:
        """Close the session of a client that was collected, or alive at exit, without aclose().

        Called by a weakref finalizer, so from any thread and at any moment: it schedules the close
        in the session's loop rather than running it here, except at exit, when nothing else will.
        A close that has not ended by exit is finished then (see _close_at_exit).
        """
        loop = self._loop
        if self._closed or not self._owned or self._session is None or loop is None:
            return
        self._closed = True
        if loop.is_closed():
            self._give_up()
        elif _EXITING and not loop.is_running():
            loop.run_until_complete(self.aclose())  # an idle loop at exit: nobody else will run it
        else:  # now, in its thread, or when it next runs
            _ABANDONED.add(self)  # holds us, and so the close task we start, until the close ends
            loop.call_soon_threadsafe(self._start_closing)

    def finish_at_exit(self) -> None:
        """Finish the close of a collected client whose loop is idle or closed now (at exit only)."""
        loop = self._loop
        if loop is None or loop.is_running():  # a daemon thread's loop: it may still finish it
            return
        if loop.is_closed():
            self._give_up()
        else:
            loop.run_until_complete(self.aclose())

    def _give_up(self) -> None:
        """Forget a session whose loop is closed, without aiohttp's "Unclosed" noise.

        A closed loop can close nothing: its sockets are freed when collected. asyncio.run() never
        gets here (the loop guard closed the session first); a loop closed by hand without
        ``loop.shutdown_asyncgens()`` does.
        """
        _ABANDONED.discard(self)
        guard, self._guard = self._guard, None
        session, self._session = self._session, None
        if guard is not None:
            _finish(guard.aclose())  # nothing left for it to do: it ends without suspending
        if self._owned and session is not None and not session.closed:
            connector = session.connector
            session.detach()
            if connector is not None:
                # On a closed loop aiohttp closes nothing here and returns an awaitable already done.
                _finish(connector.close())


_ABANDONED: set[Transport] = set()  # clients collected whose close has not ended yet


async def _run_in(loop: asyncio.AbstractEventLoop, close: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """Run ``close()`` in ``loop``, running in another thread; False if that loop stopped before it ran."""
    future = asyncio.run_coroutine_threadsafe(close(), loop)
    waiter = asyncio.wrap_future(future)
    try:
        while True:
            # Not `await waiter`: a cancel of the close by the owner's shutdown is not a cancel of ours.
            done, _ = await asyncio.wait([waiter], timeout=0.05)
            if done:
                return not waiter.cancelled()
            if not loop.is_running() and future.cancel():  # stopped before our close started
                return False
    except BaseException:
        waiter.cancel()
        raise


def _finish(awaitable: Awaitable[object]) -> None:
    """Run an awaitable that completes without suspending (we call it only on such)."""
    step = awaitable.__await__()
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()  # pragma: no cover - it suspended after all: drop it rather than leave it half run


def _close_at_exit() -> None:
    global _EXITING
    _EXITING = True
    for transport in list(_ABANDONED):  # collected while their loop ran its last steps, or was idle
        transport.finish_at_exit()


# atexit runs its hooks last in, first out, and weakref.finalize registers its own with the first
# finalizer made: make one now, so that ours is registered after it and runs before the finalizers.
weakref.finalize(_close_at_exit, int)
atexit.register(_close_at_exit)
