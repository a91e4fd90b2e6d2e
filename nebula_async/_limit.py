"""Client-side rate limiting: RateLimit (what the user asks for), Pacing (the pure schedule) and Limiter.

Pacing is GCRA's virtual schedule, one per resource (requests, tokens): each resource has a
"theoretical arrival time" ``tat``; a call of cost ``c`` may start once ``now >= tat - burst_seconds``
and then pushes ``tat`` to ``max(tat, now) + c / rate``. With ``burst_seconds=0`` calls are spaced
evenly at the limit, which is what an API enforcing a sliding window accepts without a 429: a
bucket that lets a burst through on top of the full rate gets answered 429 for it. A call costing
more than the burst still starts once the schedule has caught up, so nothing can deadlock.

The client-wide 429 gate lives in the same object: a ``rate_limit_exceeded`` answer with a retry
delay closes it until then (a later one can extend it, never shorten it), and every call waits at
it, with or without a RateLimit.

Limiter adds the waiting, in one event loop: waiters are served first come, first served from a
deque of futures; ONE ``loop.call_at`` timer is armed, for the head waiter; a call that finds
nobody waiting and its turn free takes it synchronously, without a future or a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ._checks import check_number
from ._config import CLIENT_CLOSED

__all__ = ["DEFAULT_MAX_TOKENS", "Limiter", "Pacing", "RateLimit"]

DEFAULT_MAX_TOKENS = 256  # the API's default max_tokens: what a call that gives none may produce
_NEVER = -math.inf  # the gate is open, and no timer needs to reopen it
# A timer can fire a hair before its time (the loop's clock resolution): such a wake counts as on time.
_EPSILON = 1e-6


def _limit_value(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{attribute.name} must be a number per minute or None (no limit), got {type(value).__name__}"
        )
    check_number(attribute.name, value, positive=True, unit=" per minute")


def _burst(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(attribute.name, value, unit=" of seconds")


def _counter(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            "token_counter must be a function from a prompt str to its token count, "
            f"got {type(value).__name__}"
        )


def _show_counter(counter: Callable[[str], int] | None) -> str:
    return "None" if counter is None else "<set>"  # a bound method's repr can be long, or hold secrets


@attrs.frozen
class RateLimit:
    """The API's limits for this client's key; calls wait for their share before they are sent.

    ``requests_per_minute`` and ``tokens_per_minute`` (at least one) may be fractional.
    ``burst_seconds`` lets calls run up to that many seconds of rate ahead of the even spacing
    (default 0: no burst, right for APIs that enforce a sliding window). ``token_counter`` counts a
    prompt's tokens (default ``ceil(len(prompt) / 4)``); a call reserves that plus ``max_tokens``
    (256 when not given) and is corrected from ``usage`` when the answer says how many it used.
    """

    requests_per_minute: float | None = attrs.field(default=None, validator=_limit_value)
    tokens_per_minute: float | None = attrs.field(default=None, validator=_limit_value)
    burst_seconds: float = attrs.field(default=0.0, validator=_burst)
    token_counter: Callable[[str], int] | None = attrs.field(
        default=None, eq=False, validator=_counter, repr=_show_counter
    )

    def __attrs_post_init__(self) -> None:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError(
                "RateLimit needs requests_per_minute, tokens_per_minute or both, "
                "e.g. RateLimit(requests_per_minute=600)"
            )

    def estimate(self, prompt: str, max_tokens: int | None) -> int:
        """Return the tokens a call reserves: the prompt's (counted or estimated) plus ``max_tokens`` or 256.

        Raises ValueError when that is more than ``tokens_per_minute``: such a call could never be sent.
        """
        if self.token_counter is None:
            prompt_tokens = -(-len(prompt) // 4)
        else:
            counted = self.token_counter(prompt)
            if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
                raise TypeError(f"token_counter must return an int >= 0, got {counted!r}")
            prompt_tokens = counted
        total = prompt_tokens + (DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)
        limit = self.tokens_per_minute
        if limit is not None and total > limit:
            raise ValueError(
                f"this call needs about {total} tokens ({prompt_tokens} for the prompt + max_tokens "
                f"{total - prompt_tokens}), more than tokens_per_minute={limit:g}: it could never be "
                "sent; lower max_tokens or shorten the prompt"
            )
        return total


class _Schedule:
    """GCRA for one resource: ``rate`` units per second, ``tolerance`` seconds of burst."""

    __slots__ = ("rate", "tat", "tolerance")

    def __init__(self, per_minute: float, burst_seconds: float) -> None:
        self.rate = per_minute / 60.0
        self.tolerance = burst_seconds
        self.tat = _NEVER  # nothing sent yet: the first call goes at once


class Pacing:
    """The pure schedule: when a call of some cost may start, and what starting it takes. Never sleeps.

    Times are the caller's clock (the event loop's ``loop.time()``), in seconds.
    """

    def __init__(self, limit: RateLimit | None) -> None:
        self._requests: _Schedule | None = None
        self._tokens: _Schedule | None = None
        if limit is not None:
            if limit.requests_per_minute is not None:
                self._requests = _Schedule(limit.requests_per_minute, limit.burst_seconds)
            if limit.tokens_per_minute is not None:
                self._tokens = _Schedule(limit.tokens_per_minute, limit.burst_seconds)
        self.unlimited = limit is None
        self.gate_until = _NEVER

    def ready_at(self, tokens: int) -> float:
        """Return the earliest time a call reserving ``tokens`` may start (``-inf``: any time)."""
        ready = self.gate_until
        requests = self._requests
        if requests is not None:
            ready = max(ready, requests.tat - requests.tolerance)
        schedule = self._tokens
        if schedule is not None and tokens:
            ready = max(ready, schedule.tat - schedule.tolerance)
        return ready

    def take(self, tokens: int, now: float) -> None:
        """Start a call reserving one request and ``tokens`` at ``now``."""
        requests = self._requests
        if requests is not None:
            requests.tat = max(requests.tat, now) + 1.0 / requests.rate
        schedule = self._tokens
        if schedule is not None and tokens:
            schedule.tat = max(schedule.tat, now) + tokens / schedule.rate

    def adjust(self, requests: int, tokens: int) -> None:
        """Charge ``requests`` and ``tokens`` more (negative: refund) to calls already started."""
        schedule = self._requests
        if schedule is not None and requests:
            schedule.tat += requests / schedule.rate
        schedule = self._tokens
        if schedule is not None and tokens:
            # The server's usage is taken on trust, within reason: a bogus count of billions of
            # tokens holds the schedule one minute at most, not for days.
            schedule.tat += min(tokens, schedule.rate * 60.0) / schedule.rate

    def close_gate(self, until: float, now: float) -> bool:
        """Hold every call until ``until``; return True if the gate was open (a new closing)."""
        was_open = self.gate_until <= now
        self.gate_until = max(self.gate_until, until)  # a later 429 extends the gate, never shortens it
        return was_open

    def paused_for(self, now: float) -> float:
        """Return the seconds until the gate opens (0.0 when open)."""
        return max(0.0, self.gate_until - now)


class _Aborted(Exception):
    """Ends a wait whose ``abort`` future is done: internal to Limiter.wait, never raised to a caller."""


def _stop_waiting(future: asyncio.Future[None], abort: asyncio.Future[Any]) -> None:
    if not future.done():  # its turn has not come yet
        future.set_exception(_Aborted())


class Limiter:
    """Pacing, waited for in one event loop: FIFO waiters, one timer for the head, a synchronous fast path."""

    def __init__(self, limit: RateLimit | None) -> None:
        self.pacing = Pacing(limit)
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def try_take(self, tokens: int) -> bool:
        """Start a call now if nobody waits and its turn is free (no future, no timer); else False."""
        if self._waiters:
            return False
        pacing = self.pacing
        if pacing.unlimited and pacing.gate_until == _NEVER:  # rate_limit=None: only the gate to check
            return True
        now = asyncio.get_running_loop().time()
        if pacing.ready_at(tokens) - now > _EPSILON:
            return False
        pacing.gate_until = _NEVER if pacing.gate_until <= now else pacing.gate_until
        pacing.take(tokens, now)
        return True

    async def wait(self, tokens: int, abort: asyncio.Future[Any] | None = None) -> bool:
        """Wait for the turn of a call reserving ``tokens``, behind every call already waiting.

        Return True once it is taken, or False, having taken nothing, as soon as ``abort`` is done
        (a stream closed by another task while its request waited). Cancelling the wait takes
        nothing; closing the limiter raises RuntimeError (client closed).
        """
        if self._closed:
            raise RuntimeError(CLIENT_CLOSED)
        if abort is not None and abort.done():
            return False
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters
        waiters.append((future, tokens))
        if len(waiters) == 1:
            self._wake()
        stop = None if abort is None else functools.partial(_stop_waiting, future)
        if abort is not None and stop is not None:
            abort.add_done_callback(stop)
        try:
            await future
        except _Aborted:  # took nothing
            if waiters and waiters[0][0] is future:  # the head: the timer was armed for it
                self._wake()
            return False
        except asyncio.CancelledError:
            # exception(): an abort may have come too (it is then retrieved, not logged as lost).
            if future.done() and not future.cancelled() and future.exception() is None:
                # its turn came just as it was cancelled
                self.pacing.adjust(-1, -tokens)
                self._wake()
            elif waiters and waiters[0][0] is future:  # the head: the timer was armed for it
                self._wake()
            raise
        finally:
            if abort is not None and stop is not None:
                abort.remove_done_callback(stop)
        if abort is not None and abort.done():  # aborted after its turn came, before it ran: give it back
            self.pacing.adjust(-1, -tokens)
            self._wake()
            return False
        return True

    def adjust(self, requests: int, tokens: int) -> None:
        """Correct what calls already started cost (a refund is negative); waiters may now go sooner."""
        if self.pacing.unlimited:
            return
        self.pacing.adjust(requests, tokens)
        if self._waiters:
            self._wake()

    def close_gate(self, delay: float) -> bool:
        """Hold every call ``delay`` seconds from now (or longer, if already held); True if newly closed."""
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        closed_now = self.pacing.close_gate(now + delay, now)
        if self._waiters:
            self._wake()
        return closed_now

    def paused_for(self) -> float:
        """Return the seconds until the 429 gate opens; 0.0 when it is open."""
        if self.pacing.gate_until == _NEVER or self._loop is None:
            return 0.0
        return self.pacing.paused_for(self._loop.time())

    def close(self) -> None:
        """Fail every waiter with the closed-client error; later waits fail at once. From any thread."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fail_all()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: its waiters went with it
                loop.call_soon_threadsafe(self._fail_all)

    def _fail_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(RuntimeError(CLIENT_CLOSED))

    def _wake(self) -> None:
        """Admit waiters from the head while their turn has come; arm the one timer for the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters = self._waiters
        if not waiters:
            return
        loop = self._loop
        assert loop is not None  # set by the first wait()
        pacing = self.pacing
        now = loop.time()
        if pacing.gate_until <= now:
            pacing.gate_until = _NEVER
        while waiters:
            future, tokens = waiters[0]
            if future.done():  # cancelled while waiting: it takes nothing
                waiters.popleft()
                continue
            ready = pacing.ready_at(tokens)
            if ready - now > _EPSILON:
                self._timer = loop.call_at(ready, self._wake)
                return
            waiters.popleft()
            pacing.take(tokens, now)
            future.set_result(None)
