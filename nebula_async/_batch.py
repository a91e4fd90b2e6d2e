"""Where generate_many takes its requests from: read lazily, one item per free worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["CallerFedSource", "ItemSource", "check_requests"]

_END = object()


def check_requests(requests: object) -> None:
    """Raise TypeError unless ``requests`` is an iterable (or async iterable) of requests."""
    if isinstance(requests, AsyncIterable):
        return
    if not isinstance(requests, Iterable) or isinstance(requests, (str, bytes, Mapping)):
        raise TypeError(
            f"requests must be an iterable of GenerateRequest or dicts, got {type(requests).__name__}"
        )


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


class CallerFedSource:
    """Items of a plain iterable, read on demand by the thread that waits for the call (the sync client's).

    The caller's code then runs in the caller's thread, as it would without the SDK: not in the
    event loop every call shares, and not in a thread of ours (thread-bound objects such as a
    sqlite3 cursor keep working, and Ctrl-C or sys.exit in it behave as usual).
    """

    def __init__(self, requests: Iterable[Any]) -> None:
        check_requests(requests)
        self._iterator = iter(requests)
        self._demand: queue.SimpleQueue[asyncio.Future[Any] | None] = queue.SimpleQueue()
        self._lock = asyncio.Lock()  # binds to the running loop on first use, not here
        self._done = False

    async def next(self) -> tuple[Any] | None:
        """Ask the caller's thread for the next item; None once the input is exhausted."""
        async with self._lock:
            if self._done:
                return None
            future = asyncio.get_running_loop().create_future()
            self._demand.put(future)
            item = await future
            if item is _END:
                self._done = True
                return None
            return (item,)

    def serve(self, call: concurrent.futures.Future[Any]) -> None:
        """In the caller's thread: answer the call's requests for items until the call is done."""
        call.add_done_callback(lambda _: self._demand.put(None))
        while True:
            future = self._demand.get()
            if future is None:
                return
            try:
                item = next(self._iterator, _END)
            except Exception as exc:  # the iterable's own error: it fails the call, as it would inline
                _settle(future, exc, failed=True)
            else:
                _settle(future, item, failed=False)


def _settle(future: asyncio.Future[Any], value: Any, *, failed: bool) -> None:
    def settle() -> None:
        if future.done():  # the worker waiting for it was cancelled
            return
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: the call is over
        future.get_loop().call_soon_threadsafe(settle)
