"""Results as they complete: Completions runs many calls a few at a time and yields each one's Outcome.

``as_completed``, ``generate_many`` and ``run_batch`` all run on it. Workers (``concurrency`` tasks)
take the next item from a Source only when they are free, so the input is read lazily; finished
outcomes wait in a queue of at most ``concurrency`` entries, so a slow consumer holds back the
workers instead of piling up results. Memory is bounded by the concurrency, not by the input; and
workers start as items are taken, so a concurrency far above the input's size costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._calls import CLOSED_DURING_CALL
from ._errors import NebulaError
from ._models import TextGeneration

if TYPE_CHECKING:
    from ._calls import CallPath

__all__ = ["BATCH_ERRORS", "Completions", "ItemSource", "Outcome", "Source", "check_requests"]

BATCH_ERRORS = (NebulaError, ValueError, TypeError)
"""What one failed item can raise without ending the batch: it becomes that item's Outcome.error."""

_END = object()


@attrs.frozen
class Outcome:
    """One input's result or error, as ``as_completed`` yields it.

    ``index`` is the item's 0-based position in the input; ``request`` the item as given;
    exactly one of ``result`` and ``error`` is set.
    """

    index: int
    request: Any
    result: TextGeneration | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """Say whether the request succeeded (``result`` is set)."""
        return self.error is None


def check_requests(requests: object) -> None:
    """Raise TypeError unless ``requests`` is an iterable (or async iterable) of requests."""
    if isinstance(requests, AsyncIterable):
        return
    if not isinstance(requests, Iterable) or isinstance(requests, (str, bytes, Mapping)):
        raise TypeError(
            f"requests must be an iterable of GenerateRequest or dicts, got {type(requests).__name__}"
        )


class Source(Protocol):
    """Where the workers take their items from."""

    async def next(self) -> tuple[Any] | None:
        """Return the next item as a 1-tuple, or None once the input is exhausted."""


class ItemSource:
    """Hand the items of ``requests`` to concurrent workers as 1-tuples; None at the end."""

    def __init__(self, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
        check_requests(requests)
        self._lock = asyncio.Lock()  # an async generator can't be advanced by two workers at once
        self._done = False
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] | None = None
        if isinstance(requests, AsyncIterable):
            self._async = aiter(requests)
        else:
            self._sync = iter(requests)

    async def next(self) -> tuple[Any] | None:
        """Return the next item as a 1-tuple, or None once the input is exhausted."""
        if self._sync is not None:
            for item in self._sync:  # no await: workers can't interleave here
                return (item,)
            return None
        assert self._async is not None
        async with self._lock:
            if self._done:
                return None
            item = await anext(self._async, _END)
            if item is _END:
                self._done = True
                return None
            return (item,)


class Completions:
    """The Outcome of each item of a Source, in completion order, ``concurrency`` calls at a time.

    An async iterator and an async context manager: leaving the ``async with`` block (or
    ``aclose()``) cancels the calls in flight and waits for them to end. An item's BATCH_ERRORS
    become its Outcome; anything else (a bug, a stray CancelledError, the input's own exception)
    cancels the rest and is raised by the iteration. An iterator dropped without being closed has
    its calls cancelled when it is collected; closing the client cancels them too, and the iteration
    then raises RuntimeError.
    """

    def __init__(
        self,
        source: Source,
        call: Callable[[Any], Awaitable[TextGeneration]],
        *,
        concurrency: int,
        calls: CallPath | None = None,
    ) -> None:
        self._pool = _Pool(source, call, concurrency, calls)
        # Holds the pool, never self: the workers must not keep their iterator alive.
        self._finalizer = weakref.finalize(self, self._pool.cancel)
        self._finalizer.atexit = False  # at exit the loop is gone, and its tasks with it

    def __aiter__(self) -> Completions:
        return self

    async def __anext__(self) -> Outcome:
        return await self._pool.next()

    async def __aenter__(self) -> Completions:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def in_flight(self) -> int:
        """How many items were taken from the input and have no outcome yet."""
        return self._pool.in_flight

    @property
    def ready(self) -> int:
        """How many outcomes are finished and not yet taken; a hint that another thread may read."""
        return self._pool.ready

    def start(self) -> None:
        """Start taking items and sending them now, not at the first ``__anext__``; idempotent."""
        self._pool.start()

    def cancel(self) -> None:
        """Cancel the calls in flight without waiting for them; the iteration then ends."""
        self._pool.cancel()

    async def aclose(self) -> None:
        """Cancel the calls in flight and wait until they have ended; idempotent."""
        self._finalizer.detach()
        await self._pool.aclose()


class _Pool:
    """The workers, the queue of finished outcomes, and the one consumer waiting for them."""

    def __init__(
        self,
        source: Source,
        call: Callable[[Any], Awaitable[TextGeneration]],
        concurrency: int,
        calls: CallPath | None,
    ) -> None:
        self._source = source
        self._call = call
        self._concurrency = concurrency
        self._calls = calls
        self._workers: set[asyncio.Task[None]] = set()
        self._running = 0  # workers not yet ended
        self._spawned = 0
        self._started = False
        self._closed = False
        self._taken = 0  # items taken from the source: the next one's index
        self._delivered = 0
        self._ready: deque[Outcome] = deque()
        self._failure: BaseException | None = None
        self._consumer: asyncio.Future[None] | None = None
        self._room: deque[asyncio.Future[None]] = deque()  # workers waiting for space in _ready

    @property
    def in_flight(self) -> int:
        return self._taken - self._delivered - len(self._ready)

    @property
    def ready(self) -> int:
        return len(self._ready)  # one atomic read: safe from another thread

    def _start(self) -> None:
        self._started = True
        self._spawn()
        if self._calls is not None:
            self._calls.track(self, self.client_closed)

    def _spawn(self) -> None:
        # Workers start one per item taken, up to ``concurrency``: never more workers than items
        # (plus one), so concurrency=1_000_000 for three items makes four tasks, not a million.
        task = asyncio.get_running_loop().create_task(self._work())
        self._spawned += 1
        self._running += 1
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    def start(self) -> None:
        if not self._started and not self._closed:
            self._start()

    async def next(self) -> Outcome:
        self.start()
        while True:
            failure = self._failure
            if failure is not None:
                self._failure = None
                self.cancel()
                raise failure
            if self._closed:
                self._forget()
                raise StopAsyncIteration
            if self._ready:
                outcome = self._ready.popleft()
                self._delivered += 1
                while self._room:
                    waiter = self._room.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
                        break
                return outcome
            if self._running == 0:
                self._forget()
                raise StopAsyncIteration
            self._consumer = asyncio.get_running_loop().create_future()
            try:
                await self._consumer
            finally:
                self._consumer = None

    def _wake(self) -> None:
        if self._consumer is not None and not self._consumer.done():
            self._consumer.set_result(None)

    async def _work(self) -> None:
        try:
            while True:
                # Items taken but not yet handed to the consumer stay within ``concurrency``: a
                # finished outcome holds its slot until taken, so a batch killed at any moment has
                # at most ``concurrency`` requests sent and not written (which a rerun sends again).
                while self._taken - self._delivered >= self._concurrency:
                    room = asyncio.get_running_loop().create_future()
                    self._room.append(room)
                    await room
                taken = await self._source.next()
                if taken is None:
                    return
                index = self._taken  # no await since the item was taken: indexes follow input order
                self._taken += 1
                if self._spawned < self._concurrency and not self._closed:
                    self._spawn()  # the next item is taken while this one is sent
                item = taken[0]
                try:
                    outcome = Outcome(index, item, await self._call(item))
                except BATCH_ERRORS as exc:
                    outcome = Outcome(index, item, None, exc)
                self._ready.append(outcome)
                self._wake()
                if outcome.error is not None:
                    # The consumer runs first: if the error ends its loop (generate_many without
                    # return_exceptions), this worker is cancelled before it sends another request.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self._closed:  # our own cancel
                raise
            self._fail(asyncio.CancelledError("a call of the batch was cancelled"))
        except BaseException as exc:  # a bug, or the input's own error: it ends the iteration
            self._fail(exc)
        finally:
            self._running -= 1
            if self._running == 0:
                self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None and not self._closed:
            self._failure = exc
        self._wake()

    def client_closed(self) -> None:
        """At the client's aclose(): cancel the workers (one may wait for a lost consumer); fail next()."""
        if not self._closed and self._failure is None:
            self._failure = RuntimeError(CLOSED_DURING_CALL)
        self.cancel()

    def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._workers:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                task.cancel()
        with contextlib.suppress(RuntimeError):
            self._wake()
        self._forget()

    def _forget(self) -> None:
        if self._calls is not None:
            self._calls.untrack(self)

    async def aclose(self) -> None:
        self.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
