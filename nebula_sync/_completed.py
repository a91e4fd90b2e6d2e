"""The sync client's as_completed: a plain iterator of Outcome, its input read in the caller's thread.

The caller's thread reads the input (a plain iterable) itself, in ``__next__``, keeping the calls
topped up to ``concurrency`` not yet handed back, and pushes what it read into the loop with the
wait for the next outcome: one hop per outcome, and the caller's generator never runs in the
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
    """An async iterator fed from outside with push(); it waits for items, and ends once ended and drained."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, items: list[Any], *, end: bool) -> None:
        """Add ``items``; with ``end``, no more will come."""
        self._items.extend(items)
        self._ended = self._ended or end
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
                outcome = self._runtime.run(self._step, self._top_up())
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise
        self._received += 1
        return outcome

    def _top_up(self) -> tuple[list[Any], bool]:
        """In the caller's thread: read items until ``concurrency`` are out; and whether the input ended."""
        batch: list[Any] = []
        if self._items is None:
            return batch, False
        while self._handed - self._received < self._concurrency:
            item = next(self._items, _END)
            if item is _END:
                self._items = None
                return batch, True
            batch.append(item)
            self._handed += 1
        return batch, False

    async def _step(self, more: tuple[list[Any], bool]) -> Outcome:
        batch, ended = more
        if self._pushed is not None and (batch or ended):
            self._pushed.push(batch, end=ended)
        return await self._completions.__anext__()

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
