"""NebulaClient: the blocking client, one AsyncNebulaClient run in an anyio portal thread."""

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
import threading
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal

from nebula_async import AsyncNebulaClient, RetryPolicy, TextGeneration, Timeout
from nebula_async._batch import CallerFedSource, EscapedExit, ItemSource
from nebula_async._client import BatchInput
from nebula_async._config import CLIENT_CLOSED, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RETRIES

from ._stream import TextStream

if TYPE_CHECKING:
    import aiohttp

__all__ = ["NebulaClient"]

T = TypeVar("T")

logger = logging.getLogger("nebula_async")

# NEBULA_SYNC_UVLOOP=1 runs the client's own event loop on uvloop (the [speed] extra), measured in
# benchmarks/RESULTS.md. Not the default: uvloop resolves addresses in libuv's thread pool, and libuv
# then joins those threads at exit even in a forked child, which crashes (SIGSEGV) on its way out.
ENV_UVLOOP = "NEBULA_SYNC_UVLOOP"


def _use_uvloop() -> bool:
    wanted = os.environ.get(ENV_UVLOOP, "")
    if wanted not in ("", "0", "1"):
        raise ValueError(f"{ENV_UVLOOP} must be 1 or 0, got {wanted!r}")
    if wanted == "1" and importlib.util.find_spec("uvloop") is None:
        raise RuntimeError(f"{ENV_UVLOOP}=1 needs uvloop: pip install 'nebula-sdk[speed]'")
    return wanted == "1"


class NebulaClient:
    """Blocking client for the Nebula text-generation API; safe to share between threads.

    Takes the same arguments as AsyncNebulaClient, except ``session`` (an aiohttp session belongs
    to one event loop, and this client runs its own). ``close()`` is optional: a client that is
    never closed is shut down cleanly when collected or at interpreter exit. After ``os.fork()``
    the child can't use a client made before it: create a new one there.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        default_headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if session is not None:
            raise TypeError(
                "nebula_sync.NebulaClient runs its own event loop and can't use an aiohttp session; "
                "use nebula_async.AsyncNebulaClient(session=...) instead"
            )
        # Built first, so bad arguments fail before a thread is started.
        self._async = AsyncNebulaClient(
            api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            max_connections=max_connections,
            default_headers=default_headers,
        )
        options = {"use_uvloop": True} if _use_uvloop() else {}
        portal_cm = start_blocking_portal(backend_options=options, name="nebula-sync")
        self._portal = portal_cm.__enter__()
        self._pid = os.getpid()
        loop_thread = self._portal.call(threading.get_ident)
        self._dispatcher = _Dispatcher(self._portal)
        # Runs on close(), on garbage collection and at interpreter exit, whichever comes first:
        # a portal never exited would leave the session unclosed.
        self._finalizer = weakref.finalize(
            self, _shutdown, portal_cm, self._portal, self._async, loop_thread, self._dispatcher
        )
        _live_clients.add(self)
        _watch_for_exit()

    def __repr__(self) -> str:
        return f"NebulaClient(base_url={self._async.base_url!r}, max_retries={self._async.retry.max_retries})"

    def __enter__(self) -> NebulaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the client's thread; idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Say whether close() was called (or the client was left behind by a fork)."""
        return not self._finalizer.alive

    @property
    def _forked(self) -> bool:
        """Whether this is a forked child of the process that made the client (which owns it)."""
        return os.getpid() != self._pid

    def _run(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        _serve: Callable[[concurrent.futures.Future[T]], None] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in the client's loop and wait; ``_serve`` works for it meanwhile."""
        if not self._finalizer.alive:
            _park_if_exiting()  # a daemon thread still calling at exit: see _park_if_exiting
            if self._forked:
                raise RuntimeError(
                    "this NebulaClient was created in another process; create a new one after fork"
                )
            raise RuntimeError(CLIENT_CLOSED)
        try:
            future = self._dispatcher.submit(functools.partial(fn, *args, **kwargs))
        except RuntimeError:  # the loop stopped between the check above and now
            _park_if_exiting()
            raise RuntimeError(CLIENT_CLOSED) from None
        try:
            if _serve is not None:
                _serve(future)
            return future.result()
        except EscapedExit as exc:  # a SystemExit or Ctrl-C raised by your code inside the loop
            raise exc.original from None
        except concurrent.futures.CancelledError:
            if not self.closed:
                raise
            _park_if_exiting()
            raise RuntimeError("this client was closed while the call was running") from None
        except BaseException:  # KeyboardInterrupt too: cancel the call underneath, then re-raise
            if not future.done():
                self._dispatcher.cancel(future)
            _park_if_exiting()
            raise

    def generate_text(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int | None = None,
    ) -> TextGeneration:
        """Generate text for ``prompt``; see AsyncNebulaClient.generate_text."""
        return self._run(
            self._async.generate_text,
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            extra_body=extra_body,
            timeout=timeout,
            max_retries=max_retries,
        )

    def stream_text(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int | None = None,
    ) -> TextStream:
        """Return a TextStream for ``prompt``; nothing is sent until it is entered or iterated."""
        stream = self._async.stream_text(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            extra_body=extra_body,
            timeout=timeout,
            max_retries=max_retries,
        )
        return TextStream(stream, self)

    @overload
    def generate_many(
        self,
        requests: BatchInput,
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[TextGeneration]: ...

    @overload
    def generate_many(
        self, requests: BatchInput, *, concurrency: int = ..., return_exceptions: bool
    ) -> list[TextGeneration | Exception]: ...

    def generate_many(
        self,
        requests: BatchInput,
        *,
        concurrency: int = 16,
        return_exceptions: bool = False,
    ) -> list[TextGeneration] | list[TextGeneration | Exception]:
        """Run many generations concurrently; see AsyncNebulaClient.generate_many."""
        if isinstance(requests, AsyncIterable):  # an async generator only runs in the event loop
            in_loop = ItemSource(requests, carry_exits=True)
            results: list[TextGeneration | Exception] = self._run(
                self._async._generate_many, in_loop, concurrency, return_exceptions
            )
            return results
        # A plain iterable is read here, in your thread, never in the event loop all calls share.
        fed = CallerFedSource(requests)
        fed_results: list[TextGeneration | Exception] = self._run(
            self._async._generate_many, fed, concurrency, return_exceptions, _serve=fed.serve
        )
        return fed_results


_Handles = tuple[asyncio.AbstractEventLoop, contextvars.Context]
_RECANCEL_SECONDS = 0.01


class _Dispatcher:
    """Runs calls in the portal's event loop with one thread hop there and one back.

    ``BlockingPortal.call`` and ``start_task_soon`` wait for the loop to take the task before
    returning (a second round trip), and an anyio task with its cancel scope per call costs as much
    again: together about three times this round trip (the "sync-hop" table of
    benchmarks/RESULTS.md). Here the caller hands the call over with ``call_soon_threadsafe`` and
    waits only for its result; the call is a plain asyncio task. The portal's own task ``_serve``
    cancels the calls still running when the portal stops, as a task group would.
    """

    def __init__(self, portal: BlockingPortal) -> None:
        # Every call not yet settled: its task once the loop has started it. A dict, not a task group,
        # so that a call's failure, even a stray CancelledError, stays that call's.
        self._calls: dict[concurrent.futures.Future[Any], asyncio.Task[None] | None] = {}
        self._stopping = False
        self._loop, self._context = portal.start_task(self._serve)[1]

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[_Handles]) -> None:
        # Callbacks from other threads run in this context: anyio finds its backend in it.
        task_status.started((asyncio.get_running_loop(), contextvars.copy_context()))
        try:
            await anyio.sleep_forever()
        finally:  # the portal is stopping: so do the calls
            with anyio.CancelScope(shield=True):
                await self.stop()

    async def stop(self) -> None:
        """In the loop: refuse new calls, cancel the running ones and wait for them to end."""
        self._stopping = True
        started = [(future, task) for future, task in list(self._calls.items()) if task is not None]
        for future, _ in started:
            self._cancel_task(future)
        if started:
            await asyncio.wait([task for _, task in started])
        self.cancel_pending()  # and the calls cancelled before they started, which never ran

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Have the loop run ``fn`` soon, without waiting for it; nothing if the loop is closed."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, context=self._context)

    def submit(self, call: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Schedule ``call()`` in the loop; raises RuntimeError if the loop is closed."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls[future] = None
        try:
            self._loop.call_soon_threadsafe(self._spawn, call, future, context=self._context)
        except RuntimeError:
            self._calls.pop(future, None)
            raise
        return future

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        """Cancel a call from the caller's thread (Ctrl-C): its future now, its task in the loop."""
        future.cancel()
        with contextlib.suppress(RuntimeError):  # the loop closed: the call is over anyway
            self._loop.call_soon_threadsafe(self._cancel_task, future, context=self._context)

    def _cancel_task(self, future: concurrent.futures.Future[Any]) -> None:
        # Runs after the call's _spawn (callbacks run in order): its task exists, or it never will.
        task = self._calls.get(future)
        if task is not None and not task.done():
            task.cancel()
            # Again until the call ends (its finally removes it from _calls), as a cancel scope would:
            # a cancel can be swallowed (aiohttp turns one that lands with its own timeout into a
            # TimeoutError, which would be retried).
            self._loop.call_later(_RECANCEL_SECONDS, self._cancel_task, future)

    def _spawn(self, call: Callable[[], Awaitable[T]], future: concurrent.futures.Future[T]) -> None:
        if self._stopping or future.cancelled():  # close() is under way, or the caller gave up
            future.cancel()
            self._calls.pop(future, None)
            return
        self._calls[future] = self._loop.create_task(self._call(call, future))

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
            self._calls.pop(future, None)

    def cancel_pending(self) -> None:
        """Cancel the calls the loop never ran (it stopped first): their callers must not wait forever."""
        while True:  # popitem, not a loop over the dict: other threads may still be adding to it
            try:
                future, _ = self._calls.popitem()
            except KeyError:
                return
            future.cancel()


def _shutdown(
    portal_cm: AbstractContextManager[BlockingPortal],
    portal: BlockingPortal,
    client: AsyncNebulaClient,
    loop_thread: int,
    dispatcher: _Dispatcher,
) -> None:
    if threading.get_ident() == loop_thread:
        # Collected inside its own event loop: it can't wait for itself, so another thread does it.
        threading.Thread(
            target=_shutdown, args=(portal_cm, portal, client, -1, dispatcher), daemon=True
        ).start()
        return
    try:
        try:
            # The calls still running end first, each with "closed while the call was running"; closing
            # the pool under them would fail them as connection errors instead.
            portal.call(dispatcher.stop)
            portal.call(client.aclose)
        except RuntimeError:  # the portal already stopped (late in interpreter shutdown)
            pass
        except Exception:  # at exit or in GC an error can only be printed as noise: log it, stop anyway
            logger.debug("closing the client failed", exc_info=True)
        finally:  # even on Ctrl-C: the finalizer runs once, so this is the only chance
            with contextlib.suppress(RuntimeError):
                # Calls still running (say, sleeping before a retry) are cancelled, not waited for:
                # close() and interpreter exit must not hang on them.
                portal.call(portal.stop, True)
    finally:
        portal_cm.__exit__(None, None, None)
        dispatcher.cancel_pending()


# At interpreter exit the clients are closed (by their finalizers), which ends the calls still
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


# A forked child has the client objects but not their event-loop thread: waiting on it would hang
# every call and the child's exit, so the child forgets them (their parent still owns them).
_live_clients: weakref.WeakSet[NebulaClient] = weakref.WeakSet()
# What the child's forgotten finalizers held, kept for good: collecting the portal's context manager
# would run its exit, which joins the thread that the child does not have.
_left_by_fork: list[object] = []


def _forget_clients_after_fork() -> None:
    for client in list(_live_clients):
        _left_by_fork.append(client._finalizer.detach())
    _live_clients.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_clients_after_fork)
