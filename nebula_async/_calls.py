"""CallPath: what every call of one client shares, and the one loop each call's attempts run in.

Every request, streaming or not, goes through :meth:`CallPath.run`: it runs attempt 1, 2, ...
and, between two of them, :meth:`CallPath.before_retry` decides, logs, checks the client is still
open and sleeps. Before each attempt's POST it waits for the client's rate limit and for the
client-wide 429 gate (nebula_async._limit).

It also owns the transport (made lazily, in the running loop; its module, and so aiohttp, is
imported when the client is made), the client's closed state, the
open streams that closing the client closes, and the background drains that hand a finished
stream's connection back to the pool (:meth:`CallPath.release`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from ._config import CLIENT_CLOSED, Headers, RetryPolicy, Timeout
from ._deadline import Deadline
from ._errors import TIMED_OUT, APIError, APITimeoutError, NebulaError, RateLimitError
from ._limit import Limiter, RateLimit
from ._models import TextGeneration
from ._retry import retry_delay

if TYPE_CHECKING:
    import ssl

    import aiohttp

    from ._http import Transport
    from ._proxy import Proxy

__all__ = ["CLOSED_DURING_CALL", "CallPath"]

T = TypeVar("T")

logger = logging.getLogger("nebula_async")
# A library does not print: without the application's logging set up, retry warnings stay silent.
logger.addHandler(logging.NullHandler())

CLOSED_DURING_CALL = "this client was closed while the call was running"


class CallPath:
    """The state all calls of one client share, and the retry loop they all run in."""

    def __init__(
        self,
        *,
        url: str,
        headers: Headers,
        max_connections: int,
        session: aiohttp.ClientSession | None,
        proxy: Proxy | None = None,
        tls: ssl.SSLContext | bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self._url = url
        self._proxy = proxy
        self._tls = tls
        self._headers = headers
        self._max_connections = max_connections
        self._session = session
        self._transport: Transport | None = None
        self._finalizer: weakref.finalize[[], CallPath] | None = None
        self._closed = False
        # Open streams, each by the bound method that cuts it off; weak, so a forgotten stream is
        # still collected (and its finalizer warns).
        self._open: dict[int, weakref.WeakMethod[Callable[[], None]]] = {}
        # Finished streams handing their connection back, with the response each one drains.
        self._drains: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}
        # The client's RateLimit pacing and the shared 429 gate (there even without a RateLimit).
        self._limiter = Limiter(rate_limit)
        # aiohttp is imported here, with the client, not on its first call: that import takes
        # ~0.3 s, and in the running loop it would stall every other task (benchmarks/first_call.py).
        from ._http import Transport

        self._transport_type = Transport

    @property
    def closed(self) -> bool:
        """Whether aclose() was called."""
        return self._closed

    def transport(self) -> Transport:
        """Return the transport, made on first use; raises RuntimeError once the client is closed."""
        if self._closed:
            raise RuntimeError(CLIENT_CLOSED)
        transport = self._transport
        if transport is None:
            transport = self._transport = self._transport_type(
                url=self._url,
                max_connections=self._max_connections,
                session=self._session,
                headers=self._headers,
                proxy=self._proxy,
                tls=self._tls,
            )
            # A client nobody closed: its connections are closed when it is collected, or at exit.
            self._finalizer = weakref.finalize(self, transport.abandon)
            if self._closed:  # aclose() from another thread meanwhile
                raise RuntimeError(CLIENT_CLOSED)
        return transport

    async def run(
        self,
        policy: RetryPolicy,
        body: bytes,
        timeout: Timeout,
        finish: Callable[[Transport, aiohttp.ClientResponse, int], Awaitable[T]],
        *,
        stream: bool = False,
        starting: Callable[[int], None] | None = None,
        interrupted: Callable[[NebulaError], None] | None = None,
        tokens: int = 0,
        abort: asyncio.Future[str] | None = None,
    ) -> T:
        """POST ``body`` and return ``finish(transport, response, attempt)``, retried as ``policy`` allows.

        Each attempt: ``starting(attempt)`` (the caller may raise to stop), the wait for the client's
        rate limit and 429 gate, the POST, then ``finish`` reads the answer into the result; when
        the POST itself fails, ``interrupted(error)`` may raise instead of the retry. An attempt fails
        by raising a NebulaError; anything else (a bug, a cancellation) ends the call at once. The
        last error is raised unchanged when no retry is left. The POST is awaited here, not in a
        coroutine of the caller's: a call waiting for its answer holds one frame less.

        ``tokens`` is what each attempt reserves under a tokens-per-minute limit (0 without one).
        The wait for the limit or the gate is not part of ``timeout``, and is cancellable at once;
        once ``abort`` is done, the wait ends at once, nothing is sent, and the call raises
        RuntimeError with ``abort``'s result as its message (a stream closed by another task).
        What an attempt costs: one request and ``tokens``, corrected from ``usage`` when a plain
        answer has it (a stream corrects itself, see :meth:`settle`); an attempt that never reached
        the server (the connection failed) costs nothing; an error answer costs one request and
        no tokens (nothing was generated); an attempt cut off after it was sent keeps its estimate.
        """
        number = 0
        limiter = self._limiter
        error: NebulaError | None = None
        while True:
            number += 1
            if starting is not None:
                starting(number)
            # Another event loop's call fails now, not after waiting its turn (which it would take,
            # and whose wake-up would come from the wrong loop's thread).
            self.transport().check_loop()
            # Every attempt, the first and each retry, waits for its share and for the 429 gate.
            if not limiter.try_take(tokens) and not await self._wait_turn(tokens, error, abort):
                assert abort is not None  # only an abort ends the wait without the turn
                raise RuntimeError(abort.result())
            transport = self.transport()  # closed meanwhile?
            client_timeout = transport.client_timeout(timeout, stream=stream)
            # A stream's total bounds only its wait for a connection: aiohttp's connect timeout.
            deadline = None if stream or timeout.total is None else Deadline(timeout.total)
            response: aiohttp.ClientResponse | None = None
            try:
                try:
                    response = await transport.post(
                        body, stream=stream, timeout=client_timeout, attempt=number
                    )
                except NebulaError as err:
                    if transport.never_sent(err):
                        limiter.adjust(-1, -tokens)
                    if interrupted is not None:
                        interrupted(err)
                    error = err
                else:
                    try:
                        result = await finish(transport, response, number)
                    except NebulaError as err:
                        if tokens and isinstance(err, APIError):
                            limiter.adjust(0, -tokens)
                        error = err
                    else:
                        if isinstance(result, TextGeneration):  # a stream settles at its end
                            self.settle(tokens, result.usage.total_tokens)
                        return result
            except asyncio.CancelledError:
                # Never swallowed: only our own deadline's cancel, alone, becomes a timeout.
                if deadline is None or not deadline.expired():
                    raise
                request_id = None if response is None else response.headers.get("x-request-id")
                error = APITimeoutError(TIMED_OUT, request_id=request_id)
                logger.debug("POST %s: total timeout (attempt %d)", self._url, number)
            finally:
                if deadline is not None:
                    deadline.cancel()
            gated = isinstance(error, RateLimitError) and self.rate_limited(error, policy)
            # Outside the except clause: a cancellation while we wait must not chain the error.
            await self.before_retry(policy, number, error, gated=gated)

    async def _wait_turn(
        self, tokens: int, error: NebulaError | None, abort: asyncio.Future[str] | None
    ) -> bool:
        try:
            return await self._limiter.wait(tokens, abort)
        except RuntimeError:
            if error is not None and self._closed:  # a retry, cut short like the sleep before it
                raise RuntimeError(CLOSED_DURING_CALL) from error
            raise

    def settle(self, reserved: int, used: int | None) -> None:
        """Correct a call that reserved ``reserved`` tokens to the ``used`` its answer reported.

        ``used`` None (no usage came) keeps the reservation. For streams, which end after run().
        """
        if reserved and used is not None:
            # A negative count from a broken server refunds no more than was reserved.
            self._limiter.adjust(0, max(used, 0) - reserved)

    def rate_limited(self, error: RateLimitError, policy: RetryPolicy) -> bool:
        """Close the client-wide gate after a ``rate_limit_exceeded``: every call waits it out.

        The wait is the server's Retry-After, or the policy's ``initial_delay`` when it gave none
        (an error event in a stream has no headers of its own), capped at ``max_retry_after``. One
        WARNING per closing, not one per task that got the 429. Returns False when there is nothing
        to wait (a delay of 0), True when the gate closed or stays closed for this error.
        """
        retry_after = error.retry_after
        delay = policy.initial_delay if retry_after is None else retry_after
        delay = min(delay, policy.max_retry_after)
        if delay <= 0:
            return False
        if self._limiter.close_gate(delay):
            logger.warning(
                "rate limited by the API (%s): every call of this client waits %.3f s before it is sent",
                error, delay,
            )  # fmt: skip
        else:
            logger.debug("rate limited again (%s): the gate stays closed %.3f s", error, self.paused_for())
        return True

    def paused_for(self) -> float:
        """Return the seconds until the client-wide 429 gate opens; 0.0 when it is open."""
        return self._limiter.paused_for()

    async def before_retry(
        self, policy: RetryPolicy, attempt: int, error: NebulaError, *, gated: bool = False
    ) -> None:
        """Wait before retry ``attempt`` (1-based), or raise ``error`` when it is not to be retried.

        ``gated``: the error closed (or held closed) the client-wide gate, whose WARNING spoke for
        it. After a 429 with Retry-After the retry does not sleep here: it waits at the gate, so the
        two never add up.
        """
        delay = retry_delay(policy, attempt, error)
        if delay is None:
            raise error
        if self._closed:  # the retry can't be sent, and closing is likely what broke the call
            raise RuntimeError(CLOSED_DURING_CALL) from error
        if gated:
            # The gate's one WARNING spoke for every task; this task's retry is a detail.
            logger.debug(
                "retrying after the rate-limit gate opens (retry %d of %d): %s",
                attempt, policy.max_retries, error,
            )  # fmt: skip
            if isinstance(error, RateLimitError) and error.retry_after is not None:
                return  # the gate holds the next attempt until then: sleeping too would wait twice
        else:
            logger.warning(
                "retrying in %.3f s (retry %d of %d) after %s: %s",
                delay, attempt, policy.max_retries, type(error).__name__, error,
            )  # fmt: skip
        await asyncio.sleep(delay)
        if self._closed:  # closed while we slept
            raise RuntimeError(CLOSED_DURING_CALL) from error

    def track(self, stream: object, cut_off: Callable[[], None]) -> None:
        """Have aclose() call ``cut_off`` (a bound method of ``stream``) while ``stream`` is open."""
        key = id(stream)
        self._open[key] = weakref.WeakMethod(cut_off, lambda _: self._open.pop(key, None))

    def untrack(self, stream: object) -> None:
        """Forget ``stream``: it ended or was closed."""
        self._open.pop(id(stream), None)

    def release(self, response: aiohttp.ClientResponse) -> None:
        """Hand a finished stream's connection back to the pool, draining its body's tail if any.

        The tail (a trailing ``[DONE]``, say) is read in the background, not on the caller's time;
        a body that won't end soon is closed instead.
        """
        if response.content.at_eof():
            response.release()
            return
        if self._closed or self._transport is None:
            response.close()
            return
        task = asyncio.get_running_loop().create_task(self._transport.drain(response))
        self._drains[task] = response
        task.add_done_callback(lambda done: self._drains.pop(done, None))

    async def aclose(self) -> None:
        """Close open streams, drains and the transport; idempotent, from any event loop."""
        if self._closed:
            return
        self._closed = True
        self._limiter.close()  # calls waiting for their turn get the closed-client error now
        transport = self._transport
        if transport is None:  # never used: nothing to release
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        await transport.in_own_loop(functools.partial(self._shut, transport))

    async def _shut(self, transport: Transport) -> None:
        # In the loop the connections belong to.
        open_streams, self._open = self._open, {}
        for ref in open_streams.values():
            cut_off = ref()
            if cut_off is not None:
                cut_off()
        drains, self._drains = self._drains, {}
        closing = []
        for task, response in drains.items():
            task.cancel()
            # A task cancelled before its first step never runs its own cleanup.
            closing.append(transport.close_response(response))
        try:
            await asyncio.gather(*drains, return_exceptions=True)
            # A TLS connection closes over a few loop steps: the session's close doesn't wait for a
            # connection it no longer holds, and a loop stopped meanwhile would leave its socket open.
            await transport.wait_closed([c for c in closing if c is not None])
        finally:  # even if this aclose() is cancelled: a second call would find the client closed
            await transport.aclose()
