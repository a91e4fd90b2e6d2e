"""Where generate_many takes its requests from: read lazily, one item per free worker."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["ItemSource"]

_END = object()


class ItemSource:
    """Hand the items of ``requests`` to concurrent workers, one at a time, as 1-tuples; None at the end.

    With ``in_thread`` a plain iterable is read by a daemon thread of its own, one item per request
    for one: the sync client's callers' code must neither run in (and stall) the event loop every
    call shares, nor hold up ``close()`` or interpreter exit when it blocks.
    """

    def __init__(self, requests: Iterable[Any] | AsyncIterable[Any], *, in_thread: bool) -> None:
        self._lock = asyncio.Lock()  # a generator can't be advanced by two workers at once
        self._done = False
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] | None = None
        self._demand: queue.SimpleQueue[asyncio.Future[Any] | None] | None = None
        if isinstance(requests, AsyncIterable):
            self._async = aiter(requests)
            return
        if not isinstance(requests, Iterable) or isinstance(requests, (str, bytes, Mapping)):
            raise TypeError(
                f"requests must be an iterable of GenerateRequest or dicts, got {type(requests).__name__}"
            )
        self._sync = iter(requests)
        if in_thread:
            self._demand = queue.SimpleQueue()
            threading.Thread(
                target=_read_on_demand,
                args=(self._sync, self._demand, asyncio.get_running_loop()),
                name="nebula-batch-input",
                daemon=True,
            ).start()

    async def next(self) -> tuple[Any] | None:
        """Return the next item as a 1-tuple, or None once the input is exhausted."""
        if self._sync is not None and self._demand is None:
            for item in self._sync:  # no await: workers can't interleave here
                return (item,)
            return None
        async with self._lock:
            if self._done:
                return None
            if self._async is not None:
                item = await anext(self._async, _END)
            else:
                assert self._demand is not None
                future = asyncio.get_running_loop().create_future()
                self._demand.put(future)
                item = await future
            if item is _END:
                self._done = True
                return None
            return (item,)

    def close(self) -> None:
        """Let the reader thread, if any, end once it is free: nothing more will be asked of it."""
        if self._demand is not None:
            self._demand.put(None)


def _read_on_demand(
    iterator: Iterator[Any],
    demand: queue.SimpleQueue[asyncio.Future[Any] | None],
    loop: asyncio.AbstractEventLoop,
) -> None:
    while True:
        future = demand.get()
        if future is None:
            return
        try:
            item = next(iterator, _END)
        except BaseException as exc:  # the caller's generator failed: the error is theirs, in their call
            _hand_over(loop, future, exc, failed=True)
            return
        if not _hand_over(loop, future, item, failed=False) or item is _END:
            return


def _hand_over(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any, *, failed: bool
) -> bool:
    def settle() -> None:
        if future.done():  # the worker waiting for it was cancelled
            return
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: the call is over, and so is this thread
        return False
    return True
