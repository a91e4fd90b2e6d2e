"""The sync client's as_completed: a plain iterator of Outcome, its input read in the caller's thread.

The caller's thread reads the input (a plain iterable) itself, in ``__next__``: each item is
handed to the loop as soon as it is read (no wait), until ``concurrency`` are out or an outcome is
ready; then one hop takes the next outcome. So a slow generator's first item is sent at once and
its first result comes back as soon as it is done, and the caller's generator never runs in the
event loop every call shares. An async iterable runs in the loop, as generate_many's does.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterable, Iterable, Iterator
from types import TracebackType
from typing import Any

from nebula_async import AsyncNebulaClient, Outcome
from nebula_async._batch import check_requests

from ._runtime import LoopThread
from ._sources import ExitCarrier, exits_reraised

__all__ = ["CompletedIterator", "PushedItems"]

_END = object()


class PushedItems:
    """An async iterator fed with add() and end(); it waits for items, and ends once ended and drained."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def add(self, item: Any) -> None:
        """Add ``item``."""
        self._items.append(item)
        self._wake()

    def end(self) -> None:
        """Say that no more items will come."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> PushedItems:
        return self

    async def __anext__(self) -> Any:
        # One reader at a time: the pool reads an async iterable under a lock.
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class CompletedIterator:
    """What NebulaClient.as_completed returns: an iterator of Outcome, and a context manager.

    ``close()`` (or leaving the ``with`` block) cancels the calls in flight; so does Ctrl-C while
    waiting, which is then raised. An iterator dropped unclosed is closed when collected.
    """

    def __init__(
        self,
        runtime: LoopThread,
        client: AsyncNebulaClient,
        requests: Iterable[Any] | AsyncIterable[Any],
        concurrency: int,
    ) -> None:
        self._runtime = runtime
        self._concurrency = concurrency
        self._pushed: PushedItems | None = None
        self._items: Iterator[Any] | None = None
        if isinstance(requests, AsyncIterable):
            completions = client.as_completed(ExitCarrier(requests), concurrency=concurrency)
        else:
            check_requests(requests)
            self._items = iter(requests)
            self._pushed = PushedItems()
            completions = client.as_completed(self._pushed, concurrency=concurrency)
        self._completions = completions
        self._handed = 0  # items pushed into the loop
        self._received = 0  # outcomes handed back to the caller
        self._closed = False
        self._finalizer = weakref.finalize(self, runtime.run_soon, completions.aclose)

    def __iter__(self) -> CompletedIterator:
        return self

    def __next__(self) -> Outcome:
        if self._closed:
            raise StopIteration
        try:
            with exits_reraised():
                self._top_up()
                outcome = self._runtime.run(self._completions.__anext__)
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise
        self._received += 1
        return outcome

    def _top_up(self) -> None:
        """Read items, each sent at once, till ``concurrency`` are out or one is done."""
        if self._items is None or self._pushed is None:
            return
        if not self._handed:
            self._runtime.run_soon(self._completions.start)  # its workers take each item as it comes
        while self._handed - self._received < self._concurrency and not self._completions.ready:
            item = next(self._items, _END)
            if item is _END:
                self._items = None
                self._runtime.run_soon(self._pushed.end)
                return
            self._handed += 1
            # No wait for the loop: it sends the item while this thread reads the next one (a hop,
            # run() below, comes after these in the loop's queue, so it sees every item pushed).
            self._runtime.run_soon(self._pushed.add, item)

    def __enter__(self) -> CompletedIterator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the calls in flight and wait until they have ended; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        if not self._runtime.closed:
            self._runtime.run(self._completions.aclose)
