"""LoopThread: an asyncio event loop in a thread of its own, for every sync entry point.

A sync entry point (the sync client, ``FakeNebulaServer.start()``) owns one LoopThread and runs
its async object's coroutines in it::

    runtime = LoopThread(name="my-thing", on_close=resource.aclose)  # the thread starts here
    runtime.run(resource.astart)              # run a coroutine function there and wait for it
    value = runtime.run(resource.get, key)    # from any thread, as many at once as you like
    runtime.run_soon(resource.aclose)         # hand over without waiting (never deadlocks)
    runtime.close()                           # end the running calls, await on_close, stop

``run()`` hops once to the loop (``call_soon_threadsafe``) and once back; the call is a plain
asyncio task (anyio's ``BlockingPortal.call`` costs three times as much: the "sync-hop" table of
benchmarks/RESULTS.md). Ctrl-C in the waiting thread cancels the call underneath, again and again
until it ends (aiohttp can swallow a cancel), then propagates. A SystemExit or KeyboardInterrupt
raised by the call is raised in the caller's thread; the loop goes on.

``close()`` is idempotent and also runs when the LoopThread is collected and at interpreter
exit: it cancels the running calls (each caller gets RuntimeError "... closed while the call was
running"), awaits ``on_close()``, cancels what is left in the loop and joins the thread. A forked
child forgets the LoopThreads of its parent (it doesn't have their threads): ``run()`` there raises
RuntimeError at once and ``close()`` does nothing. At exit, daemon threads still calling are
parked quietly instead of each printing a traceback while the interpreter shuts down.

Inside a call made with ``run(..., serve=True)``, ``await call_in_caller(fn)`` runs ``fn()`` in the
thread that waits for the call (so a caller's generator stays in the caller's thread).

Model: anyio's ``from_thread.BlockingPortalProvider`` (agronholm/anyio ``src/anyio/from_thread.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import importlib.util
import logging
import os
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, NoReturn, TypeVar

__all__ = ["ENV_UVLOOP", "LoopThread", "call_in_caller", "uvloop_wanted"]

T = TypeVar("T")

logger = logging.getLogger("nebula_async")

# NEBULA_SYNC_UVLOOP=1 runs the loop on uvloop (the [speed] extra), measured in benchmarks/RESULTS.md.
# Not the default: uvloop resolves addresses in libuv's thread pool, and libuv then joins those
# threads at exit even in a forked child, which crashes (SIGSEGV) on its way out.
ENV_UVLOOP = "NEBULA_SYNC_UVLOOP"

_RECANCEL_SECONDS = 0.01


def uvloop_wanted() -> bool:
    """Read NEBULA_SYNC_UVLOOP: True for 1; ValueError for a value other than 1, 0 or unset."""
    wanted = os.environ.get(ENV_UVLOOP, "")
    if wanted not in ("", "0", "1"):
        raise ValueError(f"{ENV_UVLOOP} must be 1 or 0, got {wanted!r}")
    if wanted == "1" and importlib.util.find_spec("uvloop") is None:
        raise RuntimeError(f"{ENV_UVLOOP}=1 needs uvloop: pip install 'nebula-sdk[speed]'")
    return wanted == "1"


class LoopThread:
    """An event loop in a daemon thread that runs coroutine functions for any thread; see the module doc.

    ``name`` names the thread; ``on_close`` is awaited in the loop at shutdown, after the running
    calls ended; ``noun`` names the owner in errors ("this client is closed; ..."); ``use_uvloop``
    defaults to NEBULA_SYNC_UVLOOP.
    """

    def __init__(
        self,
        *,
        name: str = "nebula-sync",
        on_close: Callable[[], Awaitable[object]] | None = None,
        noun: str = "loop thread",
        use_uvloop: bool | None = None,
    ) -> None:
        if use_uvloop is None:
            use_uvloop = uvloop_wanted()
        self._noun = noun
        self._pid = os.getpid()
        self._core = _Core(name, on_close, use_uvloop)
        # Holds the core, never self: close() runs on close(), on garbage collection and at exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._core)
        LoopThread._live.add(self)
        _watch_for_exit()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<LoopThread {self._core.thread.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """Say whether close() was called (or the LoopThread was left behind by a fork)."""
        return not self._finalizer.alive

    @property
    def forked(self) -> bool:
        """Say whether this is a forked child of the process that made the LoopThread (which owns it)."""
        return os.getpid() != self._pid

    def in_loop_thread(self) -> bool:
        """Say whether the current thread is this LoopThread's own (where run() would wait for itself)."""
        return threading.get_ident() == self._core.thread.ident

    def close(self) -> None:
        """End the running calls, await ``on_close()``, stop the loop and its thread; idempotent."""
        self._finalizer()

    def run_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Have the loop call ``fn(*args)`` soon, as a task if it returns an awaitable; never waits.

        Nothing happens if the loop is gone (closed, or in a forked child).
        """
        if self.forked:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._core.loop.call_soon_threadsafe(self._core.start_soon, fn, args, context=self._core.context)

    def run(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        serve: bool = False,
        on_interrupt: Callable[[], object] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in the loop and wait for its result, from any other thread.

        With ``serve``, the waiting thread answers the call's ``call_in_caller()`` meanwhile. With
        ``on_interrupt``, the first Ctrl-C calls it (say, to ask the call to wind down) and the
        wait goes on; KeyboardInterrupt is raised once the call has ended, and a second Ctrl-C
        cancels the call as usual. Raises RuntimeError if the LoopThread is closed, was closed
        during the call, or belongs to the parent of a fork.
        """
        if not self._finalizer.alive:
            self._refuse()
        core = self._core
        if threading.get_ident() == core.thread.ident:
            raise RuntimeError(
                f"this {self._noun} was called from its own event-loop thread: it would wait forever"
            )
        call: Callable[[], Awaitable[T]] = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        inbox: _Inbox | None = None
        if serve:
            inbox = queue.SimpleQueue()
            call = functools.partial(_serving, inbox, call)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        core.calls[future] = None
        try:
            core.loop.call_soon_threadsafe(core.spawn, call, future, context=core.context)
        except RuntimeError:  # the loop stopped between the check above and now
            core.calls.pop(future, None)
            self._refuse()
        try:
            if inbox is not None:
                _answer(inbox, future)
            if on_interrupt is None:
                return future.result()
            try:
                return future.result()
            except KeyboardInterrupt:
                on_interrupt()
            future.result()  # a second Ctrl-C lands in the handler below, which cancels the call
            raise KeyboardInterrupt
        except concurrent.futures.CancelledError:
            if not self.closed:
                raise
            _park_if_exiting()
            raise RuntimeError(f"this {self._noun} was closed while the call was running") from None
        except BaseException:  # KeyboardInterrupt too: cancel the call underneath, then re-raise
            if not future.done():
                future.cancel()
                with contextlib.suppress(RuntimeError):  # the loop closed: the call is over anyway
                    core.loop.call_soon_threadsafe(core.cancel_task, future, context=core.context)
            _park_if_exiting()
            raise

    # A forked child has the LoopThread objects but not their threads: waiting on one would hang
    # every call and the child's exit, so the child forgets them (their parent still owns them).
    _live: ClassVar[weakref.WeakSet[LoopThread]] = weakref.WeakSet()
    # What the child's forgotten finalizers held, kept for good: collecting a loop whose thread is
    # in the parent could touch state (uvloop's, libuv's) that the child does not have.
    _left_by_fork: ClassVar[list[object]] = []

    @staticmethod
    def _forget_all_after_fork() -> None:
        for runtime in list(LoopThread._live):
            LoopThread._left_by_fork.append(runtime._finalizer.detach())
        LoopThread._live.clear()

    def _refuse(self) -> NoReturn:
        _park_if_exiting()  # a daemon thread still calling at exit: see _park_if_exiting
        if self.forked:
            raise RuntimeError(
                f"this {self._noun} was created in another process; create a new one after fork"
            )
        raise RuntimeError(f"this {self._noun} is closed; create a new {self._noun} to make more calls")


# --- what the waiting thread does for a call made with serve=True --------------------------------

_Request = tuple[Callable[[], Any], "asyncio.Future[Any]"]
_Inbox = queue.SimpleQueue["_Request | None"]
_caller_inbox: contextvars.ContextVar[_Inbox] = contextvars.ContextVar("nebula_sync_caller_inbox")


async def call_in_caller(fn: Callable[[], T]) -> T:
    """In a call made with ``LoopThread.run(..., serve=True)``: run ``fn()`` in the waiting thread.

    ``fn``'s Exception is raised here; a BaseException (Ctrl-C, SystemExit) is raised in the
    caller's thread, which then cancels the call, as if the caller had run ``fn`` inline.
    """
    try:
        inbox = _caller_inbox.get()
    except LookupError:
        raise RuntimeError("call_in_caller() works only inside LoopThread.run(..., serve=True)") from None
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    inbox.put((fn, future))
    return await future


async def _serving(inbox: _Inbox, call: Callable[[], Awaitable[T]]) -> T:
    _caller_inbox.set(inbox)  # in this call's task context, inherited by the tasks it starts
    return await call()


def _answer(inbox: _Inbox, call: concurrent.futures.Future[Any]) -> None:
    """In the caller's thread: run what the call asks for until the call is done."""
    call.add_done_callback(lambda _: inbox.put(None))
    while (request := inbox.get()) is not None:
        fn, future = request
        try:
            value = fn()
        except Exception as exc:  # fails the awaiting coroutine, as it would have inline
            _settle(future, exc, failed=True)
        else:
            _settle(future, value, failed=False)


def _settle(future: asyncio.Future[Any], value: Any, *, failed: bool) -> None:
    def settle() -> None:
        if future.done():  # the task waiting for it was cancelled
            return
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: the call is over
        future.get_loop().call_soon_threadsafe(settle)


# --- the loop's side ----------------------------------------------------------------------------


class _Core:
    """The thread, its loop, and the calls not yet settled; what the finalizer needs, without the owner."""

    def __init__(self, name: str, on_close: Callable[[], Awaitable[object]] | None, use_uvloop: bool) -> None:
        self.on_close = on_close
        # Every call not yet settled: its task once the loop has started it. A dict, not a task
        # group, so that a call's failure, even a stray CancelledError, stays that call's.
        self.calls: dict[concurrent.futures.Future[Any], asyncio.Task[None] | None] = {}
        self.stopping = False
        if use_uvloop:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.context = contextvars.Context()  # the calls' own: not a copy of each caller's
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        started = threading.Event()
        self.loop.call_soon(started.set)
        self.thread.start()
        started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            _finish_loop(self.loop)

    def start_soon(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                self.loop.create_task(result)
        except Exception:  # nobody waits for it: a failure can only be logged
            logger.debug("a call handed to the loop failed", exc_info=True)

    def spawn(self, call: Callable[[], Awaitable[T]], future: concurrent.futures.Future[T]) -> None:
        if self.stopping or future.cancelled():  # close() is under way, or the caller gave up
            future.cancel()
            self.calls.pop(future, None)
            return
        self.calls[future] = self.loop.create_task(self._call(call, future))

    async def _call(self, call: Callable[[], Awaitable[T]], future: concurrent.futures.Future[T]) -> None:
        # The future stays pending while the call runs, so that the caller can still cancel it.
        try:
            result = await call()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:  # SystemExit too: raised in the caller's thread, not in the loop's
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                future.set_exception(exc)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_result(result)
        finally:
            self.calls.pop(future, None)

    def cancel_task(self, future: concurrent.futures.Future[Any]) -> None:
        # Runs after the call's spawn (callbacks run in order): its task exists, or it never will.
        task = self.calls.get(future)
        if task is not None and not task.done():
            task.cancel()
            # Again until the call ends (its finally removes it from calls), as a cancel scope would.
            # A call's total timeout no longer swallows a cancel (nebula_async._deadline), but on
            # 3.10 aiohttp's connect timeouts (async_timeout, which cannot count cancels) still can,
            # and it costs nothing until a cancel: kept as the sync client's guarantee.
            self.loop.call_later(_RECANCEL_SECONDS, self.cancel_task, future)

    async def stop(self) -> None:
        """In the loop: refuse new calls, end the running ones, then await on_close."""
        self.stopping = True
        started = [(future, task) for future, task in list(self.calls.items()) if task is not None]
        for future, _ in started:
            self.cancel_task(future)
        if started:
            await asyncio.wait([task for _, task in started])
        self.cancel_pending()  # and the calls cancelled before they started, which never ran
        # The calls end first, each with "closed while the call was running"; closing what they use
        # under them would fail them with that resource's errors instead.
        if self.on_close is not None:
            await self.on_close()

    def cancel_pending(self) -> None:
        """Cancel the calls the loop never ran (it stopped first): their callers must not wait forever."""
        while True:  # popitem, not a loop over the dict: other threads may still be adding to it
            try:
                future, _ = self.calls.popitem()
            except KeyError:
                return
            future.cancel()


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    """In the loop's thread, once it stopped: end its tasks and close it, as asyncio.run does."""
    try:
        # Tasks handed over just before the stop (run_soon's) take their first step rather than
        # being cancelled before it: a stream's aclose() is then done, not dropped.
        loop.run_until_complete(asyncio.sleep(0))
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    except Exception:  # at exit or in GC an error can only be printed as noise: log it, stop anyway
        logger.debug("stopping the event loop failed", exc_info=True)
    finally:
        loop.close()


def _shutdown(core: _Core) -> None:
    if threading.get_ident() == core.thread.ident:
        # Collected or closed inside its own loop: it can't wait for itself, so another thread does it.
        threading.Thread(target=_shutdown_elsewhere, args=(core,), daemon=True).start()
        return
    _shutdown_elsewhere(core)


def _shutdown_elsewhere(core: _Core) -> None:
    try:
        future = asyncio.run_coroutine_threadsafe(core.stop(), core.loop)
        future.result()
    except RuntimeError:  # the loop already stopped (late in interpreter shutdown)
        pass
    except Exception:  # at exit or in GC an error can only be printed as noise: log it, stop anyway
        logger.debug("closing the loop thread failed", exc_info=True)
    finally:  # even on Ctrl-C: the finalizer runs once, so this is the only chance
        with contextlib.suppress(RuntimeError):
            # What is still running (say, a task sleeping before a retry) is cancelled, not waited
            # for: close() and interpreter exit must not hang on it.
            core.loop.call_soon_threadsafe(core.loop.stop)
        core.thread.join()
        core.cancel_pending()


# At interpreter exit the LoopThreads are closed (by their finalizers), which ends the calls still
# running. Only daemon threads can be mid-call then, and they are about to vanish: rather than have
# each print a traceback while the interpreter shuts down, they wait quietly for the end.
_exiting = False
_exit_hook_registered = False


def _watch_for_exit() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        # Registered after weakref.finalize's own exit hook, so it runs before it (atexit is LIFO).
        atexit.register(_note_exit)


def _note_exit() -> None:
    global _exiting
    _exiting = True


def _park_if_exiting() -> None:
    if _exiting and threading.current_thread() is not threading.main_thread():
        threading.Event().wait()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=LoopThread._forget_all_after_fork)
