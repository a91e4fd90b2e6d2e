"""An event loop in a thread of its own, for a server started from sync code.

A thread that is still running at exit is stopped then; a forked child, which has none of its
parent's threads, forgets them instead of waiting on them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["LoopThread"]

_running: set[LoopThread] = set()
_left_by_fork: list[tuple[BlockingPortal, Any]] = []  # never cleaned up: see LoopThread.stop()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_running.clear)


@atexit.register
def _stop_forgotten() -> None:
    # Started and never stopped: run its stop (close the server's sockets) before the interpreter goes.
    for thread in list(_running):
        with contextlib.suppress(Exception):
            thread.stop()


class LoopThread:
    """Run ``astart`` on a new event loop thread; ``stop`` runs ``astop`` there and ends the thread."""

    def __init__(self, astart: Callable[[], Awaitable[object]], astop: Callable[[], Awaitable[None]]) -> None:
        portal_cm = start_blocking_portal()
        portal = portal_cm.__enter__()
        try:
            portal.call(astart)
            self._ident = portal.call(threading.get_ident)
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        self._portal: BlockingPortal | None = portal
        self._portal_cm = portal_cm
        self._astop = astop
        self._owner_pid = os.getpid()  # a forked child must not touch the thread
        self._lock = threading.Lock()
        _running.add(self)

    def is_current(self) -> bool:
        """Whether the caller runs in this loop thread."""
        return threading.get_ident() == self._ident

    def stop(self) -> None:
        """Run ``astop`` in the thread and end it; does nothing the second time."""
        with self._lock:
            portal, portal_cm = self._portal, self._portal_cm
            if portal is None:
                return
            self._portal = None
            _running.discard(self)
            if os.getpid() != self._owner_pid:
                # A forked child: the thread exists only in the parent. Forget it, but keep the
                # portal referenced: its cleanup would wait forever on that missing thread.
                _left_by_fork.append((portal, portal_cm))
                return
            try:
                portal.call(self._astop)
            finally:
                portal_cm.__exit__(None, None, None)
