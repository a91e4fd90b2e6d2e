"""Deadline, the calls' total timeout: its own cancel becomes a timeout, anybody else's stays a cancel.

No sockets: a task waits on a future that never completes, and the test cancels it at the
deadline's own loop time, before or after the deadline's timer (tests/integration/test_cancellation.py
does the same over a real socket, and the storm at random moments).
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from nebula_async._deadline import Deadline

SECONDS = 0.05


async def _timed(outcome: list[str]) -> None:
    """Wait under a Deadline; note whether the CancelledError was the deadline's alone."""
    deadline = Deadline(SECONDS)
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        if not deadline.expired():
            outcome.append("cancelled")
            raise
        outcome.append("timed out")
    finally:
        deadline.cancel()


async def _run(cancel_at: str | None) -> tuple[list[str], bool, int]:
    loop = asyncio.get_running_loop()
    outcome: list[str] = []
    task = asyncio.create_task(_timed(outcome))
    await asyncio.sleep(0)  # the task made its Deadline: its timer is due at started + SECONDS
    scheduled = loop._scheduled  # type: ignore[attr-defined]  # the loop's timers: find the deadline's
    when = next(h.when() for h in scheduled if getattr(h._callback, "__func__", None) is Deadline._expire)
    if cancel_at == "before":
        loop.call_at(when - 1e-6, task.cancel)
    elif cancel_at == "same time":
        loop.call_at(when, task.cancel)
    await asyncio.wait([task])
    counted = 0
    if sys.version_info >= (3, 11):
        counted = task.cancelling()
    return outcome, task.cancelled(), counted


async def test_the_deadline_alone_is_a_timeout() -> None:
    """Nobody else cancels: the deadline's cancel becomes a timeout, and is not left counted."""
    assert await _run(None) == (["timed out"], False, 0)


@pytest.mark.parametrize("cancel_at", ["before", "same time"])
async def test_a_cancel_at_the_deadline_stays_a_cancel(cancel_at: str) -> None:
    """A cancel just before the deadline, or at its loop time after its timer, ends the task cancelled."""
    outcome, cancelled, counted = await _run(cancel_at)
    assert (outcome, cancelled) == (["cancelled"], True)
    if sys.version_info >= (3, 11):
        assert counted == 1  # the caller's cancel is still counted; the deadline's is not


async def test_an_ended_deadline_never_fires() -> None:
    """cancel() before the deadline: nothing is cancelled later."""
    deadline = Deadline(0.01)
    deadline.cancel()
    await asyncio.sleep(0.05)
    assert not deadline.expired()
