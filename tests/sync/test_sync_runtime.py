"""LoopThread, the event-loop thread behind every sync entry point: run, cancel, close, exit, GC, fork."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable

import pytest

from nebula_sync._runtime import LoopThread, call_in_caller
from tests.helpers import expect_clean_exit
from tests.sync._support import (
    CLOSED_MID_CALL,
    LOOP_THREAD,
    call_in_thread,
    in_child,
    wait_for,
)

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no os.fork")


async def _running_tasks() -> int:
    """Count the tasks alive in the running loop, this one aside."""
    return len(asyncio.all_tasks()) - 1


async def _thread_name() -> str:
    return threading.current_thread().name


async def _swallows_one_cancel() -> None:
    """A call that shrugs off one cancellation, as aiohttp does when it lands with its own timeout."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    await asyncio.sleep(10)


def test_run_returns_the_result_from_the_loop_thread() -> None:
    """run() awaits the coroutine function with its arguments in the thread named after the LoopThread."""

    async def add(a: int, b: int, *, c: int) -> tuple[int, str]:
        return a + b + c, threading.current_thread().name

    runtime = LoopThread()
    try:
        assert runtime.run(add, 1, 2, c=3) == (6, LOOP_THREAD)
        assert not runtime.in_loop_thread()
        assert "running" in repr(runtime)
    finally:
        runtime.close()
    assert "closed" in repr(runtime)


def test_run_from_many_threads_at_once() -> None:
    """Eight threads run 50 overlapping calls each through one LoopThread; every result is their own."""

    async def slow_echo(value: int) -> int:
        await asyncio.sleep(0.001)
        return value

    runtime = LoopThread()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda i: [runtime.run(slow_echo, i * 100 + j) for j in range(50)], range(8))
            )
        assert results == [[i * 100 + j for j in range(50)] for i in range(8)]
        assert runtime.run(_running_tasks) == 0
    finally:
        runtime.close()


@pytest.mark.parametrize("exit_exception", [SystemExit(4), KeyboardInterrupt()])
def test_an_exit_raised_in_a_call_reaches_the_caller_and_the_loop_goes_on(
    exit_exception: BaseException,
) -> None:
    """SystemExit or KeyboardInterrupt raised in a call is raised in the caller's thread, not the loop's."""

    async def exits() -> None:
        raise exit_exception

    runtime = LoopThread()
    try:
        with pytest.raises(type(exit_exception)) as info:
            runtime.run(exits)
        assert info.value is exit_exception
        assert runtime.run(_thread_name) == LOOP_THREAD
    finally:
        runtime.close()


def test_a_stray_cancellation_in_one_call_spares_the_others() -> None:
    """A call ending in its own CancelledError fails alone: another thread's call and later calls succeed."""

    async def cancelled_on_its_own() -> None:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        await future

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "other"

    runtime = LoopThread()
    try:
        other, outcome = call_in_thread(lambda: runtime.run(slow))
        time.sleep(0.1)
        with pytest.raises(concurrent.futures.CancelledError):
            runtime.run(cancelled_on_its_own)
        other.join(5)
        assert outcome == {"result": "other"}
        assert runtime.run(_thread_name) == LOOP_THREAD
    finally:
        runtime.close()


def test_keyboard_interrupt_cancels_the_call_underneath(
    interrupt_main: Callable[[Callable[[], bool]], None],
) -> None:
    """Ctrl-C while waiting raises KeyboardInterrupt at once and cancels the call's task in the loop."""
    cancelled = threading.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runtime = LoopThread()
    try:
        interrupt_main(lambda: runtime.run(_running_tasks) == 1)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            runtime.run(waits)
        assert time.monotonic() - started < 2
        assert cancelled.wait(1)
        assert wait_for(lambda: runtime.run(_running_tasks) == 0)
    finally:
        runtime.close()


def test_keyboard_interrupt_recancels_a_call_that_swallows_a_cancellation(
    interrupt_main: Callable[[Callable[[], bool]], None],
) -> None:
    """The caller's cancel (Ctrl-C) is delivered again until the call's task has ended."""
    runtime = LoopThread()
    try:
        interrupt_main(lambda: runtime.run(_running_tasks) == 1)
        with pytest.raises(KeyboardInterrupt):
            runtime.run(_swallows_one_cancel)
        assert wait_for(lambda: runtime.run(_running_tasks) == 0, timeout=1.0)
    finally:
        runtime.close()


def test_a_call_cancelled_before_the_loop_takes_it_never_runs(
    interrupt_main: Callable[[Callable[[], bool]], None],
) -> None:
    """Ctrl-C while the loop is busy: the call's coroutine never starts, and the loop goes on."""
    started: list[str] = []
    blocking = threading.Event()

    async def block_the_loop() -> None:
        blocking.set()
        time.sleep(0.4)  # noqa: ASYNC251 - blocking on purpose: the loop can't take the next call meanwhile

    async def must_not_run() -> None:
        started.append("ran")  # pragma: no cover - the point is that this never runs

    runtime = LoopThread()
    try:
        blocker, outcome = call_in_thread(lambda: runtime.run(block_the_loop))
        assert blocking.wait(2)
        interrupt_main(lambda: True)
        with pytest.raises(KeyboardInterrupt):
            runtime.run(must_not_run)
        blocker.join(5)
        assert outcome == {"result": None}
        assert runtime.run(_running_tasks) == 0
        assert started == []
    finally:
        runtime.close()


def test_close_ends_every_running_call_then_runs_on_close() -> None:
    """close() with calls in flight in 3 threads: each fails at once with "closed", then on_close runs."""
    events: list[str] = []

    async def on_close() -> None:
        events.append(f"on_close after {len(outcomes)} ended calls")

    async def waits(index: int) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            outcomes.append(index)

    outcomes: list[int] = []
    runtime = LoopThread(on_close=on_close, noun="widget")
    calls = [call_in_thread(lambda i=i: runtime.run(waits, i)) for i in range(3)]  # type: ignore[misc]
    assert wait_for(lambda: runtime.run(_running_tasks) == 3)
    started = time.monotonic()
    runtime.close()
    for thread, _ in calls:
        thread.join(5)
    assert time.monotonic() - started < 1.0
    for _, outcome in calls:
        assert isinstance(outcome.get("error"), RuntimeError), outcome
        assert str(outcome["error"]) == f"this widget was {CLOSED_MID_CALL}"
    assert events == ["on_close after 3 ended calls"]
    assert runtime.closed


def test_close_is_prompt_when_a_call_swallows_a_cancellation() -> None:
    """close() cancels until the call ends: it returns at once, and the caller gets the "closed" error."""
    runtime = LoopThread()
    caller, outcome = call_in_thread(lambda: runtime.run(_swallows_one_cancel))
    assert wait_for(lambda: runtime.run(_running_tasks) == 1)
    started = time.monotonic()
    runtime.close()
    caller.join(5)
    assert time.monotonic() - started < 1.0
    assert CLOSED_MID_CALL in str(outcome["error"])


def test_close_is_idempotent_and_a_call_after_it_fails_at_once() -> None:
    """close() twice is fine, stops the thread, and a later run() raises RuntimeError naming the noun."""
    runtime = LoopThread(noun="widget")
    thread = [t for t in threading.enumerate() if t.name == LOOP_THREAD][-1]
    runtime.close()
    runtime.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match=r"^this widget is closed; create a new widget"):
        runtime.run(_thread_name)


def test_close_cancels_what_is_left_in_the_loop() -> None:
    """A task started by a call and still running at close() is cancelled, not waited for."""
    cancelled = threading.Event()

    async def background() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cancelled.set()

    async def start_background() -> None:
        asyncio.get_running_loop().create_task(background())

    runtime = LoopThread()
    runtime.run(start_background)
    started = time.monotonic()
    runtime.close()
    assert time.monotonic() - started < 1.0
    assert cancelled.is_set()


def test_run_soon_runs_functions_and_coroutine_functions_without_waiting() -> None:
    """run_soon() hands a function or a coroutine function to the loop; a call after close does nothing."""
    done: list[str] = []

    async def in_loop(tag: str) -> None:
        done.append(f"{tag} in {threading.current_thread().name}")

    runtime = LoopThread()
    runtime.run_soon(done.append, "plain")
    runtime.run_soon(in_loop, "async")
    assert wait_for(lambda: len(done) == 2)
    assert done == ["plain", f"async in {LOOP_THREAD}"]
    runtime.run_soon(in_loop, "at close")  # handed over just before the stop: still done
    runtime.close()
    assert done[-1] == f"at close in {LOOP_THREAD}"
    runtime.run_soon(in_loop, "after close")
    assert len(done) == 3


def test_run_from_the_loop_thread_raises_instead_of_hanging() -> None:
    """A run() from inside the loop's own thread raises RuntimeError rather than wait for itself."""
    runtime = LoopThread()

    async def nested() -> str:
        assert runtime.in_loop_thread()
        try:
            runtime.run(_thread_name)
        except RuntimeError as exc:
            return str(exc)
        return "ran"  # pragma: no cover - the point is that it doesn't

    try:
        assert "own event-loop thread" in runtime.run(nested)
    finally:
        runtime.close()


def test_close_from_the_loop_thread_hands_itself_to_another_thread() -> None:
    """close() called in the loop's own thread doesn't deadlock: the thread still stops."""
    runtime = LoopThread()

    async def close_here() -> None:
        runtime.close()

    runtime.run_soon(close_here)
    assert wait_for(lambda: not any(t.name == LOOP_THREAD for t in threading.enumerate()))
    assert runtime.closed


def test_garbage_collection_closes_it() -> None:
    """A LoopThread dropped without close() runs on_close and stops its thread."""
    closed = threading.Event()

    async def on_close() -> None:
        closed.set()

    runtime = LoopThread(on_close=on_close)
    assert runtime.run(_thread_name) == LOOP_THREAD
    del runtime
    gc.collect()
    assert closed.wait(2)


def test_call_in_caller_runs_in_the_waiting_thread() -> None:
    """In a call made with serve=True, call_in_caller runs functions in the caller's thread, errors too."""

    def where() -> str:
        return threading.current_thread().name

    def fails() -> None:
        raise ValueError("bad row")

    async def asks() -> tuple[str, str, str]:
        loop_name = threading.current_thread().name
        caller_name = await call_in_caller(where)
        try:
            await call_in_caller(fails)
        except ValueError as exc:
            return loop_name, caller_name, str(exc)
        return loop_name, caller_name, "no error"  # pragma: no cover

    runtime = LoopThread()
    try:
        assert runtime.run(asks, serve=True) == (LOOP_THREAD, threading.current_thread().name, "bad row")
        with pytest.raises(RuntimeError, match="serve=True"):
            runtime.run(call_in_caller, where)
    finally:
        runtime.close()


def test_a_base_exception_in_call_in_caller_cancels_the_call() -> None:
    """KeyboardInterrupt raised by the caller's function propagates in its thread and cancels the call."""
    cancelled = threading.Event()

    def interrupted() -> None:
        raise KeyboardInterrupt

    async def asks() -> None:
        try:
            await call_in_caller(interrupted)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runtime = LoopThread()
    try:
        with pytest.raises(KeyboardInterrupt):
            runtime.run(asks, serve=True)
        assert cancelled.wait(1)
        assert runtime.run(_thread_name) == LOOP_THREAD
    finally:
        runtime.close()


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.parametrize(("value", "expected"), [(None, "asyncio"), ("0", "asyncio"), ("1", "uvloop")])
def test_the_loop_follows_nebula_sync_uvloop(
    value: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEBULA_SYNC_UVLOOP=1 runs the loop on uvloop; unset or 0, on asyncio's, even with uvloop installed."""
    if expected == "uvloop":
        pytest.importorskip("uvloop")
    if value is None:
        monkeypatch.delenv("NEBULA_SYNC_UVLOOP", raising=False)
    else:
        monkeypatch.setenv("NEBULA_SYNC_UVLOOP", value)
    runtime = LoopThread()
    try:
        assert runtime.run(_loop_module) == expected
    finally:
        runtime.close()


@needs_fork
def test_a_forked_child_forgets_it() -> None:
    """In a forked child run() fails fast naming another process and close() returns; the parent's works."""
    runtime = LoopThread(noun="widget")

    def check() -> list[str]:
        problems = []
        try:
            runtime.run(_thread_name)
        except RuntimeError as exc:
            if "widget was created in another process" not in str(exc):
                problems.append(repr(exc))
        else:
            problems.append("run() worked")
        if not (runtime.closed and runtime.forked):
            problems.append("not closed and forked")
        runtime.run_soon(print, "never")
        runtime.close()
        return problems

    try:
        assert in_child(check) == (0, "")
        assert runtime.run(_thread_name) == LOOP_THREAD
        assert not runtime.forked
    finally:
        runtime.close()


_UNCLOSED = """\
import asyncio, threading
from nebula_sync._runtime import LoopThread

async def on_close():
    print("on_close")

runtime = LoopThread(on_close=on_close)

def poll():
    while True:
        runtime.run(asyncio.sleep, 0.001)

for _ in range(4):
    threading.Thread(target=poll, daemon=True).start()
print(runtime.run(asyncio.sleep, 0, "ran"))
"""


@pytest.mark.parametrize("python_options", [(), ("-X", "dev")], ids=["plain", "dev-mode"])
def test_interpreter_exit_closes_it_quietly_while_daemon_threads_call(
    python_options: tuple[str, ...],
) -> None:
    """A script that never closes its LoopThread, with 4 daemon threads calling, exits 0 at once, quietly."""
    expect_clean_exit(_UNCLOSED, "ran\non_close\n", *python_options)
