"""The Limiter's waiting, in a real event loop: FIFO order, cancellation, one timer, close, the fast path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from nebula_async import RateLimit
from nebula_async._limit import Limiter

FAST = RateLimit(requests_per_minute=60 * 200)  # a call every 5 ms: waits are real, and short


def count_timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the time of every timer a Limiter arms (not wait_for's) from now on in the running loop."""
    loop = asyncio.get_running_loop()
    created: list[float] = []
    real = loop.call_at

    def call_at(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        if isinstance(getattr(callback, "__self__", None), Limiter):
            created.append(when)
        return real(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", call_at)
    return created


async def take(limiter: Limiter, tokens: int = 0) -> None:
    """Take a turn as CallPath.run does: the fast path, else the wait."""
    if not limiter.try_take(tokens):
        await limiter.wait(tokens)


async def test_uncontended_calls_take_their_turn_without_a_future_or_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """try_take() succeeds at once for a free turn (no timer), and refuses while the schedule is busy."""
    timers = count_timers(monkeypatch)
    assert Limiter(None).try_take(100)  # no RateLimit, open gate
    limiter = Limiter(RateLimit(requests_per_minute=60))
    assert limiter.try_take(0)
    assert not limiter.try_take(0)  # the next turn is a second away
    assert timers == []


async def test_waiters_are_served_first_come_first_served() -> None:
    """A big token call queued first goes before small ones queued after it, though they would fit sooner."""
    limiter = Limiter(RateLimit(tokens_per_minute=60 * 10_000))  # 10,000 tokens/s
    assert limiter.try_take(50)  # 5 ms of schedule: everyone after this waits
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        await take(limiter, tokens)
        order.append(name)

    tasks = [asyncio.create_task(call("big", 200))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(f"small-{i}", 1)) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == ["big", *(f"small-{i}" for i in range(5))]


async def test_a_cancelled_waiter_consumes_nothing_and_the_timer_moves_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling the head waiter re-arms the one timer for the next, whose turn is the head's old one."""
    limiter = Limiter(RateLimit(requests_per_minute=60 * 2))  # a call every 0.5 s
    assert limiter.try_take(0)
    loop = asyncio.get_running_loop()
    timers = count_timers(monkeypatch)
    head = asyncio.create_task(take(limiter))
    second = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    assert len(timers) == 1
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    assert len(timers) == 2
    assert timers[1] == timers[0]  # the same turn, now the second's
    await asyncio.wait_for(second, 2)
    admitted = loop.time()
    # Had the cancelled waiter taken its turn, the second's would be 0.5 s later (margins: a loaded machine).
    assert admitted < timers[0] + 0.4
    third = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    assert timers[-1] <= admitted + 0.5 + 1e-6  # the turn after the second's: nothing else was taken
    third.cancel()


async def test_ten_thousand_waiters_share_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 calls held by the 429 gate arm one timer between them, and all go when it opens."""
    limiter = Limiter(None)
    timers = count_timers(monkeypatch)
    tasks = [asyncio.create_task(take(limiter)) for _ in range(10_000)]
    assert limiter.close_gate(0.2)  # after making the tasks (slow on a loaded machine), before they run
    assert 0 < limiter.paused_for() <= 0.2
    await asyncio.sleep(0)
    assert len(timers) == 1
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(timers) == 1
    assert limiter.paused_for() == 0.0
    assert limiter.try_take(0)


async def test_paced_waiters_never_hold_more_than_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """200 calls paced 1 ms apart: each admission re-arms the one timer; at most one is pending at a time."""
    limiter = Limiter(RateLimit(requests_per_minute=60_000))
    loop = asyncio.get_running_loop()
    pending: list[int] = []
    real_call_at = loop.call_at
    handles: list[asyncio.TimerHandle] = []

    def tracking(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        handle = real_call_at(when, callback, *args, **kwargs)
        if getattr(callback, "__self__", None) is not limiter:  # wait_for's timeout, say
            return handle
        handles.append(handle)
        pending.append(sum(1 for h in handles if not h.cancelled() and h.when() > loop.time()))
        return handle

    monkeypatch.setattr(loop, "call_at", tracking)
    tasks = [asyncio.create_task(take(limiter)) for _ in range(200)]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(handles) >= 100  # paced, so it did re-arm
    assert max(pending) == 1


async def test_close_fails_every_waiter_and_later_waits() -> None:
    """close() wakes waiters at once with the closed-client RuntimeError; a wait after it fails too."""
    limiter = Limiter(None)
    limiter.close_gate(30.0)
    waiters = [asyncio.create_task(take(limiter)) for _ in range(3)]
    await asyncio.sleep(0)
    limiter.close()
    for waiter in waiters:
        with pytest.raises(RuntimeError, match="this client is closed"):
            await asyncio.wait_for(waiter, 1)
    with pytest.raises(RuntimeError, match="this client is closed"):
        await limiter.wait(0)


async def test_close_from_another_thread_wakes_waiters_in_their_loop() -> None:
    """close() called from a thread hands the wake-up to the waiters' loop."""
    limiter = Limiter(None)
    limiter.close_gate(30.0)
    waiter = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    await asyncio.to_thread(limiter.close)
    with pytest.raises(RuntimeError, match="this client is closed"):
        await asyncio.wait_for(waiter, 1)


async def test_a_refund_lets_the_head_waiter_go_sooner() -> None:
    """A waiter held by a big reservation goes as soon as it is refunded, not at its old turn."""
    limiter = Limiter(RateLimit(tokens_per_minute=60 * 100))  # 100 tokens/s
    assert limiter.try_take(100)  # a second of schedule
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(take(limiter, 1))
    await asyncio.sleep(0.01)
    limiter.adjust(0, -100)
    await asyncio.wait_for(waiter, 2)
    assert loop.time() - started < 0.5


async def test_a_waiter_cancelled_just_as_its_turn_came_gives_the_turn_back() -> None:
    """A waiter admitted and cancelled before it resumed returns its request: the next call goes at once."""
    limiter = Limiter(RateLimit(requests_per_minute=60))  # a turn a second
    assert limiter.try_take(0)
    waiter = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    limiter.adjust(-1, 0)  # the first call is refunded: the waiter's turn is now, and it is admitted
    waiter.cancel()  # ... but cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.try_take(0)


async def test_a_cancelled_waiter_behind_the_head_leaves_the_timer_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling a waiter that is not the head arms no timer; it is skipped, and close() passes it over."""
    limiter = Limiter(RateLimit(requests_per_minute=60))
    assert limiter.try_take(0)
    timers = count_timers(monkeypatch)
    head = asyncio.create_task(take(limiter))
    behind = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    behind.cancel()
    with pytest.raises(asyncio.CancelledError):
        await behind
    assert len(timers) == 1
    limiter.close()
    with pytest.raises(RuntimeError, match="this client is closed"):
        await head


async def test_an_aborted_wait_takes_nothing_and_the_next_waiter_moves_up() -> None:
    """A wait whose abort future is done returns False at once; the waiter behind it gets the turn."""
    limiter = Limiter(RateLimit(requests_per_minute=60))  # a turn a second
    assert limiter.try_take(0)
    abort: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    head = asyncio.create_task(limiter.wait(0, abort))
    behind = asyncio.create_task(take(limiter))
    await asyncio.sleep(0)
    abort.set_result("closed")
    assert await asyncio.wait_for(head, 0.5) is False
    limiter.adjust(-1, 0)  # the first call refunded: the turn is free now, and only `behind` wants it
    await asyncio.wait_for(behind, 0.5)
    assert await limiter.wait(0, abort) is False  # already aborted: no wait at all


async def test_a_wait_aborted_just_as_its_turn_came_gives_the_turn_back() -> None:
    """A waiter admitted, then aborted before it resumed, returns False and its request."""
    limiter = Limiter(RateLimit(requests_per_minute=60))
    assert limiter.try_take(0)
    abort: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(limiter.wait(0, abort))
    await asyncio.sleep(0)
    limiter.adjust(-1, 0)  # the waiter is admitted ...
    abort.set_result("closed")  # ... and aborted before it could run
    assert await waiter is False
    assert limiter.try_take(0)


async def test_a_wait_aborted_and_cancelled_at_once_refunds_nothing() -> None:
    """Cancelled after its abort ended the wait (before it resumed): CancelledError, no turn given back."""
    # This broke: a future failed by close() or an abort looked admitted to the cancellation, which
    # "gave back" a turn never taken, letting the next call go early.
    limiter = Limiter(RateLimit(requests_per_minute=60))
    assert limiter.try_take(0)
    abort: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(limiter.wait(0, abort))
    await asyncio.sleep(0)
    abort.add_done_callback(lambda _: waiter.cancel())  # runs just after the limiter's own callback
    abort.set_result("closed")
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not limiter.try_take(0)  # the first call's turn still holds the schedule
