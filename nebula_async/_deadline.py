"""Deadline: a call's total timeout, run by us so that a cancel landing with it is never lost.

aiohttp's own total timeout (``ClientTimeout(total=...)``, its TimerContext) cancels the task and
turns that CancelledError into asyncio.TimeoutError. When the caller cancels the task at the same
moment, both cancels arrive as one CancelledError and aiohttp's nested timer contexts uncancel the
task twice (3.11+; on 3.10 there is no count at all): the caller's cancel becomes a timeout, and
the call is retried. Here the deadline is ours, and it tells the two apart:

- 3.11+: ``Task.cancelling()`` counts cancel requests. Ours is one; when the CancelledError
  arrives we uncancel it, and any count left above the one we started with is somebody else's.
- 3.10: no count. We cancel only a task that is suspended on a pending future (else we look
  again on the next loop step), and just before, schedule a look at the task that runs before it
  resumes: another cancel in between finds the future already cancelled and sets the task's
  ``_must_cancel`` flag, which that look sees. A cancel before ours leaves the future done, so we
  wait a step and never claim it. (3.10's Task is frozen: its private fields won't change.)

Pure asyncio, no aiohttp: one ``loop.call_at`` per call, cancelled when the call ends.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

__all__ = ["Deadline"]

_COUNTS = sys.version_info >= (3, 11)  # Task.cancelling() and Task.uncancel()

# In version checks mypy understands (it checks 3.10 too, where Task has neither method).
if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return task.cancelling()

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return task.uncancel()

else:  # pragma: no cover - only called when _COUNTS

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return 0


class Deadline:
    """Cancel the current task ``seconds`` from now, unless :meth:`cancel` is called first.

    When the task gets a CancelledError, :meth:`expired` says whether it is ours alone (raise a
    timeout error) or the caller's too (re-raise it). Call :meth:`cancel` when the timed part ends,
    however it ends.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_outside", "_task")

    def __init__(self, seconds: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - every call of ours runs in a task
            raise RuntimeError("a Deadline needs a running task")
        self._task = task
        self._fired = False  # we cancelled the task
        self._outside = False  # 3.10: somebody else cancelled it in the same step
        self._cancelling = _cancelling(task)
        self._handle: asyncio.Handle = loop.call_at(loop.time() + seconds, self._expire)

    def _expire(self) -> None:
        task = self._task
        if not _COUNTS:
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                # The task is about to run (an answer just came, or another cancel did): a cancel
                # now would merge with whatever wakes it. Look again once it is suspended.
                self._handle = self._loop.call_soon(self._expire)
                return
            self._loop.call_soon(self._look_for_another_cancel)  # runs before the task resumes
        self._fired = True
        task.cancel()

    def _look_for_another_cancel(self) -> None:
        # Our cancel cancelled the task's future; a later one could only set this flag.
        if getattr(self._task, "_must_cancel", False):
            self._outside = True

    def expired(self) -> bool:
        """Say whether the CancelledError being handled is our timeout alone; undo our cancel if so.

        Call it once, in an ``except asyncio.CancelledError`` around the timed part: False means
        re-raise (the task was cancelled from outside, or our deadline had not passed).
        """
        if not self._fired:
            return False
        self._fired = False
        if _COUNTS:
            # Ours undone, the caller's stay counted: cancelling() stays > 0 until they handle it.
            return _uncancel(self._task) <= self._cancelling
        return not self._outside

    def cancel(self) -> None:
        """End the deadline: the timed part is over."""
        self._handle.cancel()
        if self._fired and _COUNTS:
            # Our cancel never reached the timed part as a CancelledError (something caught it):
            # don't leave it counted against the caller.
            self._fired = False
            _uncancel(self._task)
