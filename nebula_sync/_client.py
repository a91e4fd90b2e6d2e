"""NebulaClient: the blocking client, an AsyncNebulaClient whose calls run in a LoopThread."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast, overload

from nebula_async import (
    AsyncNebulaClient,
    BatchProgress,
    BatchSummary,
    RateLimit,
    RetryPolicy,
    TextGeneration,
    Timeout,
)
from nebula_async._client import BatchInput
from nebula_async._config import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RETRIES
from nebula_async._secret import Secret

from ._completed import CompletedIterator
from ._runtime import LoopThread
from ._sources import CallerFedRequests, ExitCarrier, exits_reraised
from ._stream import TextStream

if TYPE_CHECKING:
    import aiohttp

    from nebula_async._tls import Verify

__all__ = ["NebulaClient"]

T = TypeVar("T")


class NebulaClient:
    """Blocking client for the Nebula text-generation API; safe to share between threads.

    Takes the same arguments as AsyncNebulaClient, except ``session`` (an aiohttp session belongs
    to one event loop, and this client runs its own). ``close()`` is optional: a client that is
    never closed is shut down cleanly when collected or at interpreter exit. After ``os.fork()``
    the child can't use a client made before it: create a new one there.

    ``proxy``, ``verify`` and ``trust_env`` work as in AsyncNebulaClient: the environment's
    proxies and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are read once, when the client is made.
    ``rate_limit`` paces every call of the client, from whichever thread, as in AsyncNebulaClient.
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
        proxy: str | None = None,
        verify: Verify = True,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        # First, before anything can raise: no frame of a traceback may hold the key as a str.
        key = None if api_key is None else Secret(api_key)
        del api_key
        if session is not None:
            raise TypeError(
                "nebula_sync.NebulaClient runs its own event loop and can't use an aiohttp session; "
                "use nebula_async.AsyncNebulaClient(session=...) instead"
            )
        # Built first, so bad arguments fail before a thread is started.
        self._async = AsyncNebulaClient(
            cast("str | None", key),  # a Secret: AsyncNebulaClient takes one as it takes a str
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            max_connections=max_connections,
            default_headers=default_headers,
            proxy=proxy,
            verify=verify,
            trust_env=trust_env,
            rate_limit=rate_limit,
        )
        # The async client's aclose() runs in the loop at close(), on collection and at exit.
        self._runtime = LoopThread(name="nebula-sync", on_close=self._async.aclose, noun="client")

    def __repr__(self) -> str:
        # getattr: a traceback printed with its locals shows the repr of a client whose __init__ raised.
        inner = getattr(self, "_async", None)
        if inner is None:
            return "<NebulaClient (not built: its construction failed)>"
        return f"NebulaClient(base_url={inner.base_url!r}, max_retries={inner.retry.max_retries})"

    def __reduce__(self) -> NoReturn:
        # Without this, pickle fails deep inside with "cannot pickle 'weakref.ReferenceType' object".
        raise TypeError(
            "NebulaClient can't be pickled or copied: its connections belong to one process "
            "and event loop; "
            "create the client in the worker, e.g. in the process pool's initializer"
        )

    def __enter__(self) -> NebulaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the client's thread; idempotent."""
        self._runtime.close()

    @property
    def rate_limit(self) -> RateLimit | None:
        """The limits every call of this client is paced to, or None (only the shared 429 gate)."""
        return self._async.rate_limit

    @property
    def closed(self) -> bool:
        """Say whether close() was called (or the client was left behind by a fork)."""
        return self._runtime.closed

    def _run(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the client's loop and wait (for tests that look inside the loop)."""
        return self._runtime.run(fn, *args, **kwargs)

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
        return self._runtime.run(
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
        return TextStream(stream, self._runtime)

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
        results: list[TextGeneration | Exception]
        if isinstance(requests, AsyncIterable):  # an async generator only runs in the event loop
            with exits_reraised():
                results = self._runtime.run(
                    self._async.generate_many,
                    ExitCarrier(requests),
                    concurrency=concurrency,
                    return_exceptions=return_exceptions,
                )
            return results
        # A plain iterable is read here, in your thread, never in the event loop all calls share.
        results = self._runtime.run(
            self._async.generate_many,
            CallerFedRequests(requests),
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            serve=True,
        )
        return results

    def as_completed(self, requests: BatchInput, *, concurrency: int = 16) -> CompletedIterator:
        """Run many generations concurrently; iterate over each Outcome as it completes.

        See AsyncNebulaClient.as_completed. A plain iterable is read in your thread as the
        iteration goes; use ``with client.as_completed(...) as outcomes: for outcome in
        outcomes: ...``: leaving the block early, or Ctrl-C, cancels the calls in flight.
        """
        return CompletedIterator(self._runtime, self._async, requests, concurrency)

    def run_batch(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        concurrency: int = 16,
        retry_failed: bool = False,
        fsync: bool = False,
        progress: Callable[[BatchProgress], None] | None = None,
        stop_event: threading.Event | None = None,
        grace_period: float = 10.0,
    ) -> BatchSummary:
        """Run a JSONL batch file; see AsyncNebulaClient.run_batch.

        The first Ctrl-C stops it as ``stop_event`` does (no new request; the ones in flight get
        ``grace_period`` seconds), a second one cancels those; KeyboardInterrupt is then raised.
        ``progress`` is called in the client's event-loop thread.
        """
        event = stop_event if stop_event is not None else threading.Event()
        summary: BatchSummary = self._runtime.run(
            self._async.run_batch,
            input,
            output,
            on_interrupt=event.set,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            concurrency=concurrency,
            retry_failed=retry_failed,
            fsync=fsync,
            progress=progress,
            stop_event=event,
            grace_period=grace_period,
        )
        return summary
