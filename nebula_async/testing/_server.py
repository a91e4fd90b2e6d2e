"""FakeNebulaServer: the API on a real socket on 127.0.0.1, for tests, soak runs and the demo."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._checks import check_int
from .._models import GenerateRequest
from ._answer import Answerer
from ._faults import FaultMix, RandomFaults
from ._site import Site
from ._state import FakeModel, Fault, Limits, RecordedRequest, Script, merge_models
from ._wire import default_code, default_message, status_for

if TYPE_CHECKING:
    from nebula_sync._runtime import LoopThread

__all__ = ["DEFAULT_API_KEY", "FakeNebulaServer"]

DEFAULT_API_KEY = "nebula-fake-key"


class FakeNebulaServer:
    """A local Nebula API that speaks the documented protocol exactly, for tests and offline work.

    Use ``async with FakeNebulaServer() as server:`` in async code (the server runs in the current
    event loop), or ``with FakeNebulaServer().run_in_thread() as server:`` / ``server.start()``
    and ``server.stop()`` in sync code (the server runs its own loop in a thread). Point a client
    at ``server.base_url`` with ``server.api_key``.

    Keyword arguments:

    - ``api_keys``: the Bearer keys accepted (default: any non-empty key; ``server.api_key`` is
      the first of them, or ``"nebula-fake-key"``). Others get 401 ``invalid_api_key``.
    - ``models``: names or ``FakeModel(name, context_length)`` added to (or replacing, by name)
      the nine models of the API reference (its table's six, and ``gpt-4``, ``claude-2`` and
      ``llama-2-70b`` of its examples); ``default_models=False`` drops those nine.
    - ``replies``: prompt -> full reply text; ``reply``: a function from the
      ``GenerateRequest`` to the full reply text. Otherwise the text is made up, deterministically.
      Either way ``max_tokens`` and ``stop`` then cut it, as a model would stop generating.
    - ``time_to_first_token``, ``token_delay``: seconds; a non-streaming answer takes as long as
      the whole stream would. Both may be changed while the server runs.
    - ``stream_usage``: put ``usage`` in each stream's final event, as many real servers do:
      ``{"text": "!", "finish_reason": "stop", "usage": {"prompt_tokens": 2, ...}}``, with the
      counts of the same request's non-streamed answer. Default False: the reference's two-key
      events. It may be changed while the server runs.
    - ``ssl``: a server-side ``ssl.SSLContext`` (with its certificate chain loaded): the server
      speaks HTTPS and ``base_url`` starts with ``https://``, to test clients that trust a private
      CA (``verify=``) or go through a proxy with CONNECT.
    - ``max_recorded``: keep only the last N requests in ``server.requests`` (default: all); set
      it for long soak runs, where every request kept costs about 2 KB.
    - ``requests_per_second``, ``requests_per_minute``: per-key limits answered with 429
      ``rate_limit_exceeded`` and ``Retry-After``; ``token_quota``: tokens (prompt and completion)
      per key, after which requests get 429 ``insufficient_quota``.
    - ``tokens_per_minute``, ``tokens_per_second``: per-key limits on the tokens (prompt plus
      completion) answered in a sliding 60 s or 1 s window; a request that finds its key's window
      full gets 429 ``rate_limit_exceeded`` with ``Retry-After``/``retry-after-ms`` saying when
      enough of it will have slid out.
    - ``faults``: a ``FaultMix``: fault that share of the requests at random (429, 5xx, HTML pages,
      disconnects, slow replies, cut streams, error events), deterministically under its seed, for
      soak runs. ``server.faults`` may be set (or set to None) while the server runs;
      ``server.faults_injected`` counts what was injected, by kind.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        models: Iterable[str | FakeModel] = (),
        default_models: bool = True,
        replies: Mapping[str, str] | None = None,
        reply: Callable[[GenerateRequest], str] | None = None,
        time_to_first_token: float = 0.0,
        token_delay: float = 0.0,
        stream_usage: bool = False,
        requests_per_second: int | None = None,
        requests_per_minute: int | None = None,
        token_quota: int | None = None,
        tokens_per_minute: int | None = None,
        tokens_per_second: int | None = None,
        max_recorded: int | None = None,
        access_log: bool = False,
        ssl: SSLContext | None = None,
        faults: FaultMix | None = None,
    ) -> None:
        if isinstance(api_keys, str):  # the message must not echo it: it is a key
            raise TypeError("api_keys must be a collection of keys, e.g. api_keys={'my-key'}, not one str")
        # server.api_key is the first key given; from a set (no order), the smallest, so runs agree.
        keys = None if api_keys is None else list(dict.fromkeys(api_keys))
        if keys is not None and not isinstance(api_keys, Sequence) and all(isinstance(k, str) for k in keys):
            keys.sort()
        if keys is not None and (not keys or not all(isinstance(k, str) and k.strip() for k in keys)):
            raise ValueError("api_keys must hold at least one key, each a non-empty string")
        check_int("port", port, 0, 65535, note=" (0: any free port)")
        _check_seconds("time_to_first_token", time_to_first_token)
        _check_seconds("token_delay", token_delay)
        if not isinstance(stream_usage, bool):
            raise TypeError(f"stream_usage must be True or False, got {type(stream_usage).__name__}")
        for name, value in (
            ("requests_per_second", requests_per_second),
            ("requests_per_minute", requests_per_minute),
            ("token_quota", token_quota),
            ("tokens_per_minute", tokens_per_minute),
            ("tokens_per_second", tokens_per_second),
        ):
            if value is not None:
                check_int(name, value, 1, note=" or None (no limit)")
        if max_recorded is not None:
            check_int("max_recorded", max_recorded, 0, note=" or None (keep all)")
        if ssl is not None and not isinstance(ssl, SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, got {type(ssl).__name__}")
        if reply is not None and not callable(reply):
            raise TypeError("reply must be a function from a GenerateRequest to the reply text")
        self.models: dict[str, FakeModel] = merge_models(models, default_models=default_models)
        self.replies: dict[str, str] = dict(replies or {})
        for prompt, text in self.replies.items():
            if not isinstance(prompt, str) or not isinstance(text, str):
                raise TypeError(f"replies must map prompt strings to reply strings, got {prompt!r}: {text!r}")
        self.reply = reply
        self.time_to_first_token = time_to_first_token
        self.token_delay = token_delay
        self.stream_usage = stream_usage
        self._host = host
        self._port = port
        self._api_key = keys[0] if keys else DEFAULT_API_KEY
        lock = threading.Lock()  # one for all the state: tests script it from other threads
        self._script = Script(lock)
        self._limits = Limits(
            lock,
            requests_per_second=requests_per_second,
            requests_per_minute=requests_per_minute,
            token_quota=token_quota,
            tokens_per_minute=tokens_per_minute,
            tokens_per_second=tokens_per_second,
        )
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._answerer = Answerer(
            self,
            api_keys=None if keys is None else frozenset(keys),
            script=self._script,
            limits=self._limits,
            requests=self._requests,
        )
        self._access_log = access_log
        self._ssl = ssl
        self._site: Site | None = None
        self._thread: LoopThread | None = None  # set while start() runs the server in a thread
        self._thread_lock = threading.Lock()
        self._lock = lock
        self.faults = faults  # last: the setter checks it, and a half-built server still has a repr

    def __repr__(self) -> str:
        where = self.base_url if self._site is not None else "not running"
        return f"<FakeNebulaServer {where}, {len(self.models)} models, {len(self._requests)} requests>"

    # --- where it is -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give a client, ending in ``/v1``; only while the server runs."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._ssl is not None else 'http'}://{host}:{self.port}/v1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the ephemeral one chosen, if ``port=0``)."""
        if self._site is None:
            raise RuntimeError(
                "the FakeNebulaServer is not running: use 'async with', start() or run_in_thread()"
            )
        return self._site.port

    @property
    def api_key(self) -> str:
        """A key the server accepts."""
        return self._api_key

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        return list(self._requests)

    def tokens_used(self, api_key: str | None = None) -> int:
        """Tokens (prompt plus completion) charged so far to ``api_key`` (default: ``self.api_key``)."""
        return self._limits.used(self._api_key if api_key is None else api_key)

    # --- random faults ---------------------------------------------------------------------------

    @property
    def faults(self) -> FaultMix | None:
        """The random fault mix in use (None: none); setting it starts a fresh draw and fresh counts."""
        random_faults = self._answerer.random_faults
        return None if random_faults is None else random_faults.mix

    @faults.setter
    def faults(self, mix: FaultMix | None) -> None:
        if mix is not None and not isinstance(mix, FaultMix):
            raise TypeError(f"faults must be a FaultMix or None, got {type(mix).__name__}")
        self._answerer.random_faults = None if mix is None else RandomFaults(mix, self._lock)

    @property
    def faults_injected(self) -> dict[str, int]:
        """The random faults injected so far, by kind (``{}`` without a FaultMix)."""
        random_faults = self._answerer.random_faults
        return {} if random_faults is None else random_faults.counts()

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now (0 while the server is stopped)."""
        site = self._site
        return 0 if site is None else site.open_connections

    # --- scripted faults ---------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests with an error envelope.

        Give a ``status``, a ``code`` or both; the other follows the API's own answers (429 <->
        rate_limit_exceeded, 400 <-> invalid_request, 404 -> not_found, model_not_found -> 404,
        insufficient_quota -> 429, 5xx <-> server_error; nothing at all -> 500 server_error).
        ``retry_after`` seconds go out as ``Retry-After`` (whole seconds, rounded up) and
        ``retry-after-ms`` (exact).
        """
        check_int("count", count, 1)
        if status is None:
            status = status_for(code)
        check_int("status", status, 400, 599, note=" (an HTTP error status)")
        if retry_after is not None:
            _check_seconds("retry_after", retry_after)
        code = code or default_code(status)
        text = message or default_message(code)
        fault = Fault(
            "fail", status=status, code=code, message=text, details=details, retry_after=retry_after
        )
        self._script.add(fault, count)

    def html_error_next(self, count: int = 1, *, status: int = 502) -> None:
        """Answer the next ``count`` requests with an HTML error page, as a proxy in front of an API does."""
        check_int("count", count, 1)
        check_int("status", status, 400, 599, note=" (an HTTP error status)")
        self._script.add(Fault("html", status=status), count)

    def delay_next(self, count: int = 1, *, seconds: float) -> None:
        """Hold the next ``count`` requests for ``seconds`` before answering them normally."""
        check_int("count", count, 1)
        _check_seconds("seconds", seconds)
        self._script.add(Fault("delay", seconds=seconds), count)

    def disconnect_next(self, count: int = 1) -> None:
        """Close the connection of the next ``count`` requests without answering."""
        check_int("count", count, 1)
        self._script.add(Fault("disconnect"), count)

    def drop_stream_after(self, count: int = 1, *, events: int) -> None:
        """Cut the connection of the next ``count`` streams after ``events`` events.

        The cut always comes before the final event: a stream shorter than ``events + 1`` events is
        cut just before its last one. ``events=0`` cuts right after the response headers.
        """
        check_int("count", count, 1)
        check_int("events", events, 0)
        self._script.add(Fault("drop_stream", events=events), count)

    def error_event_after(
        self,
        count: int = 1,
        *,
        events: int,
        code: str = "server_error",
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """End the next ``count`` streams with an error event after ``events`` events.

        Like drop_stream_after, the error always comes before the final event would have.
        """
        check_int("count", count, 1)
        check_int("events", events, 0)
        text = message or default_message(code)
        self._script.add(Fault("error_event", code=code, message=text, details=details, events=events), count)

    @property
    def pending_faults(self) -> int:
        """How many scripted faults have not happened yet."""
        return self._script.pending()

    def reset(self) -> None:
        """Forget recorded requests, pending faults, rate-limit windows and quota usage."""
        self._script.clear()
        self._limits.reset()
        self._requests.clear()

    # --- running in the caller's event loop --------------------------------------------------------

    async def astart(self) -> FakeNebulaServer:
        """Start listening, in the running event loop."""
        if self._site is not None:
            raise RuntimeError("this FakeNebulaServer is already running")
        self._site = await Site.start(
            self._answerer.handle,
            host=self._host,
            port=self._port,
            access_log=self._access_log,
            ssl_context=self._ssl,
        )
        return self

    async def astop(self) -> None:
        """Stop listening and close every connection at once; answers in flight are cut off."""
        site = self._site
        if site is None:
            return
        if site.loop is not asyncio.get_running_loop():
            raise RuntimeError("this FakeNebulaServer runs in another event loop; stop it there (or stop())")
        self._site = None
        await site.stop(self._answerer.cancel_all)

    async def __aenter__(self) -> FakeNebulaServer:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # --- running in a thread of its own ------------------------------------------------------------

    def start(self) -> FakeNebulaServer:
        """Start the server on an event loop in a background thread; return at once it listens.

        The thread is nebula_sync's LoopThread: it stops at stop(), at interpreter exit if
        stop() never came, and is forgotten (not waited on) in a forked child.
        """
        # Imported here: nebula_async.testing must not load nebula_sync until a thread is wanted.
        from nebula_sync._runtime import LoopThread

        with self._thread_lock:
            if self._site is not None or self._thread is not None:
                raise RuntimeError("this FakeNebulaServer is already running")
            # asyncio, not uvloop (NEBULA_SYNC_UVLOOP): libuv crashes in a forked child at exit.
            thread = LoopThread(
                name="nebula-fake-server", on_close=self.astop, noun="FakeNebulaServer", use_uvloop=False
            )
            try:
                thread.run(self.astart)
            except BaseException:
                thread.close()
                raise
            self._thread = thread
        return self

    def stop(self) -> None:
        """Stop a server started with start(); does nothing if it is not running."""
        thread = self._thread
        if thread is not None and thread.in_loop_thread():
            raise RuntimeError(
                "stop() was called from the server's own thread (a reply function?): call it elsewhere"
            )
        with self._thread_lock:
            thread, self._thread = self._thread, None
            if thread is None:
                if self._site is not None:
                    raise RuntimeError(
                        "this server runs in an event loop: leave its 'async with' or await astop()"
                    )
                return
            thread.close()  # awaits astop() in the thread; does nothing in a forked child
            self._site = None  # in a forked child astop() never ran: the server is the parent's

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeNebulaServer]:
        """Run the server in a background thread for the ``with`` block: ``with server.run_in_thread():``."""
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
