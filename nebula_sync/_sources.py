"""generate_many's input as the sync client hands it to the async one.

A plain iterable is read in the caller's thread, never in the event loop all calls share;
an async iterable runs in the loop, with Ctrl-C and SystemExit carried back to the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Iterable, Iterator
from typing import Any

from nebula_async._batch import check_requests

from ._runtime import call_in_caller

__all__ = ["CallerFedRequests", "EscapedExit", "ExitCarrier", "exits_reraised"]

_END = object()


class CallerFedRequests:
    """The items of a plain iterable as an async iterator, each read by the thread waiting for the call.

    Use it inside ``LoopThread.run(..., serve=True)``. The caller's code then runs in the caller's
    thread, as it would without the SDK: not in the event loop every call shares (a slow generator
    stalls no other thread's call), and not in a thread of ours (thread-bound objects such as a
    sqlite3 cursor keep working, and Ctrl-C or sys.exit in it behave as usual).
    """

    def __init__(self, requests: Iterable[Any]) -> None:
        check_requests(requests)
        self._iterator = iter(requests)

    def __aiter__(self) -> CallerFedRequests:
        return self

    async def __anext__(self) -> Any:
        item = await call_in_caller(self._next)
        if item is _END:
            raise StopAsyncIteration
        return item

    def _next(self) -> Any:
        return next(self._iterator, _END)


class EscapedExit(Exception):
    """Carries a SystemExit or KeyboardInterrupt raised by the caller's async iterable out of the loop.

    Raised as is inside the loop, either would stop the loop's thread (asyncio re-raises them
    from a task); ``exits_reraised()`` raises ``original`` in the caller's thread instead.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class ExitCarrier:
    """The caller's async iterable, with its SystemExit and KeyboardInterrupt wrapped in EscapedExit."""

    def __init__(self, requests: AsyncIterable[Any]) -> None:
        self._iterator = aiter(requests)

    def __aiter__(self) -> ExitCarrier:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._iterator)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise EscapedExit(exc) from exc


@contextlib.contextmanager
def exits_reraised() -> Iterator[None]:
    """In the caller's thread: raise an EscapedExit's original exception, as the caller's code raised it."""
    try:
        yield
    except EscapedExit as exc:
        raise exc.original from None
