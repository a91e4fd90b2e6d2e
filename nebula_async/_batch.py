"""generate_many's worker pool, and where it takes its requests from: read lazily, one per free worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from ._errors import NebulaError

__all__ = ["BATCH_ERRORS", "ItemSource", "Source", "check_requests", "run_pool"]

BATCH_ERRORS = (NebulaError, ValueError, TypeError)
"""What one failed item can raise without failing the batch, with ``return_exceptions``."""

_END = object()


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


async def run_pool(
    source: Source,
    call: Callable[[Any], Awaitable[Any]],
    *,
    concurrency: int,
    return_exceptions: bool,
) -> list[Any]:
    """Run ``call(item)`` for each item of ``source``, ``concurrency`` at a time; results in input order.

    Items are taken only as workers free up, so memory holds ``concurrency`` calls, not the input.
    With ``return_exceptions`` an item's BATCH_ERRORS stand in its place; otherwise the first
    failure cancels the other workers and is raised.
    """
    results: list[Any] = []

    async def worker() -> None:
        while True:
            item = await source.next()
            if item is None:
                return
            # The slot is taken before any await, so results keep input order.
            index = len(results)
            results.append(None)
            try:
                results[index] = await call(item[0])
            except BATCH_ERRORS as exc:
                if not return_exceptions:
                    raise
                results[index] = exc

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results


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
