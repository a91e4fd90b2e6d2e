"""FakeNebulaServer: the API on a real socket on 127.0.0.1, for tests, soak runs and the demo."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import atexit
import collections
import contextlib
import http
import itertools
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

# json.dumps(a_str) with its defaults, minus the call overhead (the C function json.dumps ends in).
from json.encoder import encode_basestring_ascii as _json_str
from types import TracebackType
from typing import Any

from aiohttp import web
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._models import GenerateRequest
from ._generate import Generation, count_tokens, default_reply, generate
from ._state import FakeModel, Fault, Limits, RecordedRequest, Script, check_int, merge_models, seconds_header
from ._validate import InvalidJSON, Params, Rejection, check_body, decode_body

__all__ = ["DEFAULT_API_KEY", "FakeNebulaServer"]

logger = logging.getLogger("nebula_async.testing")
logger.addHandler(logging.NullHandler())

# aiohttp logs a malformed request with its raw header line, Authorization included.
_CREDENTIALS = re.compile(r"(?i)(authorization\W{0,3}(?:bearer\W{0,3})?|bearer\W{1,3})[^\s'\"]+")


class _RedactCredentials(logging.Filter):
    """Replace anything that looks like an Authorization value, in the message and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _CREDENTIALS.sub(r"\1<redacted>", record.getMessage())
        record.args = None
        if record.exc_info:
            formatted = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = _CREDENTIALS.sub(r"\1<redacted>", formatted).rstrip("\n")
            record.exc_info = None
        return True


_server_logger = logging.getLogger("nebula_async.testing.server")  # what aiohttp.web logs for us
_server_logger.addFilter(_RedactCredentials())

DEFAULT_API_KEY = "nebula-fake-key"
_PATH = "/v1/text/generate"
_DEFAULT_MAX_TOKENS = 256  # the API reference's default
_DEFAULT_TEMPERATURE = 0.7
_DEFAULT_TOP_P = 1.0
_MAX_BODY = 32 * 1024 * 1024  # a 131,072-token prompt fits many times over
_SHUTDOWN_TIMEOUT = 0.1  # astop() cancels the answers in flight; this bounds what is left

_DEFAULT_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    429: "rate_limit_exceeded",
}
_STATUS_BY_CODE = {
    "invalid_request": 400,
    "invalid_api_key": 401,
    "not_found": 404,
    "model_not_found": 404,
    "context_length_exceeded": 400,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
}
_DEFAULT_MESSAGES = {
    "invalid_request": "Invalid parameters in the request",
    "invalid_api_key": "Invalid API key",
    "model_not_found": "Specified model doesn't exist",
    "context_length_exceeded": "Input prompt is too long",
    "rate_limit_exceeded": "Too many requests",
    "insufficient_quota": "Not enough credits or quota",
    "server_error": "The server had an error while processing the request",
}
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

_running_in_threads: weakref.WeakSet[FakeNebulaServer] = weakref.WeakSet()
_left_by_fork: list[tuple[BlockingPortal, Any]] = []  # never cleaned up: see stop()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's server threads
    os.register_at_fork(after_in_child=_running_in_threads.clear)


@atexit.register
def _stop_forgotten_servers() -> None:
    # A server started with start() and never stopped: close its sockets before the interpreter goes.
    for server in list(_running_in_threads):
        with contextlib.suppress(Exception):
            server.stop()


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
      the six models of the API reference; ``default_models=False`` drops those six.
    - ``replies``: prompt -> full reply text; ``reply``: a function from the
      ``GenerateRequest`` to the full reply text. Otherwise the text is made up, deterministically.
      Either way ``max_tokens`` and ``stop`` then cut it, as a model would stop generating.
    - ``time_to_first_token``, ``token_delay``: seconds; a non-streaming answer takes as long as
      the whole stream would. Both may be changed while the server runs.
    - ``max_recorded``: keep only the last N requests in ``server.requests`` (default: all); set
      it for long soak runs, where every request kept costs about 2 KB.
    - ``requests_per_second``, ``requests_per_minute``: per-key limits answered with 429
      ``rate_limit_exceeded`` and ``Retry-After``; ``token_quota``: tokens (prompt and completion)
      per key, after which requests get 429 ``insufficient_quota``.
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
        requests_per_second: int | None = None,
        requests_per_minute: int | None = None,
        token_quota: int | None = None,
        max_recorded: int | None = None,
        access_log: bool = False,
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
        for name, value in (
            ("requests_per_second", requests_per_second),
            ("requests_per_minute", requests_per_minute),
            ("token_quota", token_quota),
        ):
            if value is not None:
                check_int(name, value, 1, note=" or None (no limit)")
        if max_recorded is not None:
            check_int("max_recorded", max_recorded, 0, note=" or None (keep all)")
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
        self._host = host
        self._port = port
        self._api_keys = None if keys is None else frozenset(keys)
        self._api_key = keys[0] if keys else DEFAULT_API_KEY
        self._lock = threading.Lock()
        self._script = Script(self._lock)
        self._limits = Limits(
            self._lock,
            requests_per_second=requests_per_second,
            requests_per_minute=requests_per_minute,
            token_quota=token_quota,
        )
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._access_log = access_log
        self._runner: web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._portal: BlockingPortal | None = None
        self._portal_cm: Any = None
        self._portal_thread = 0  # ident of the thread start() runs the server in
        self._owner_pid = 0  # the process that started it: a forked child must not touch its thread
        self._thread_lock = threading.Lock()
        self._active: set[asyncio.Task[Any]] = set()  # tasks answering a request right now

    def __repr__(self) -> str:
        where = self.base_url if self._runner is not None else "not running"
        return f"<FakeNebulaServer {where}, {len(self.models)} models, {len(self._requests)} requests>"

    # --- where it is -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give a client, ending in ``/v1``; only while the server runs."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the ephemeral one chosen, if ``port=0``)."""
        if self._runner is None:
            raise RuntimeError(
                "the FakeNebulaServer is not running: use 'async with', start() or run_in_thread()"
            )
        assert self._listener is not None  # set together with _runner
        port: int = self._listener.getsockname()[1]
        return port

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
            status = _STATUS_BY_CODE.get(code or "server_error", 500)
        check_int("status", status, 400, 599, note=" (an HTTP error status)")
        if retry_after is not None:
            _check_seconds("retry_after", retry_after)
        code = code or _DEFAULT_CODES.get(status) or ("server_error" if status >= 500 else "invalid_request")
        text = message or _DEFAULT_MESSAGES.get(code, code)
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
        text = message or _DEFAULT_MESSAGES.get(code, code)
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
        if self._runner is not None:
            raise RuntimeError("this FakeNebulaServer is already running")
        loop = asyncio.get_running_loop()

        def make_request(*args: Any) -> web.BaseRequest:
            # aiohttp's own factory, but with room for long prompts (its default cap is 1 MiB).
            message, payload, protocol, writer, task = args
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=_MAX_BODY)

        server = web.Server(
            self._handle,
            request_factory=make_request,
            handler_cancellation=True,  # a client that hangs up stops its stream's pacing at once
            access_log=logging.getLogger("aiohttp.access") if self._access_log else None,
            logger=_server_logger,
        )
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # Our own listening socket, so that astop() can stop accepting before it closes anything.
        listener = socket.create_server((self._host, self._port), family=family)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, listener).start()
        except BaseException:
            await runner.cleanup()
            listener.close()
            raise
        self._listener, self._loop, self._runner = listener, loop, runner
        return self

    async def astop(self) -> None:
        """Stop listening and close every connection at once; answers in flight are cut off."""
        if self._runner is None:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("this FakeNebulaServer runs in another event loop; stop it there (or stop())")
        runner, listener, web_server = self._runner, self._listener, self._runner.server
        self._runner = self._listener = self._loop = None
        assert listener is not None
        assert web_server is not None
        # A connection accepted just before the listener closes is set up on a later loop turn and
        # leaks if the listener is gone by then (CPython gh-109564): stop accepting, let those in.
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            loop.remove_reader(listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        for task in list(self._active):  # a paced stream would otherwise hold the shutdown up
            task.cancel()
        transports = [c.transport for c in web_server.connections if c.transport is not None]
        await runner.cleanup()
        for transport in transports:
            transport.abort()  # a client that stopped reading keeps a graceful close waiting forever
        await asyncio.sleep(0)  # an aborted transport lets go of its socket on the next turn

    async def __aenter__(self) -> FakeNebulaServer:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # --- running in a thread of its own ------------------------------------------------------------

    def start(self) -> FakeNebulaServer:
        """Start the server on an event loop in a background thread; return at once it listens."""
        with self._thread_lock:
            if self._runner is not None or self._portal is not None:
                raise RuntimeError("this FakeNebulaServer is already running")
            portal_cm = start_blocking_portal()
            portal = portal_cm.__enter__()
            try:
                portal.call(self.astart)
                self._portal_thread = portal.call(threading.get_ident)
            except BaseException:
                portal_cm.__exit__(None, None, None)
                raise
            self._portal, self._portal_cm = portal, portal_cm
            self._owner_pid = os.getpid()
            _running_in_threads.add(self)
        return self

    def stop(self) -> None:
        """Stop a server started with start(); does nothing if it is not running."""
        if self._portal is not None and threading.get_ident() == self._portal_thread:
            raise RuntimeError(
                "stop() was called from the server's own thread (a reply function?): call it elsewhere"
            )
        with self._thread_lock:
            portal, portal_cm = self._portal, self._portal_cm
            if portal is None:
                if self._runner is not None:
                    raise RuntimeError(
                        "this server runs in an event loop: leave its 'async with' or await astop()"
                    )
                return
            if os.getpid() != self._owner_pid:
                # A forked child: the server's thread exists only in the parent. Forget it, but keep
                # the portal referenced: its cleanup would wait forever on that missing thread.
                _left_by_fork.append((portal, portal_cm))
                self._portal = self._portal_cm = self._runner = None
                return
            self._portal = self._portal_cm = None
            _running_in_threads.discard(self)
            try:
                portal.call(self.astop)
            finally:
                portal_cm.__exit__(None, None, None)

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeNebulaServer]:
        """Run the server in a background thread for the ``with`` block: ``with server.run_in_thread():``."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    # --- answering ---------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each connection in a task
        self._active.add(task)
        try:
            return await self._handle_request(request)
        finally:
            self._active.discard(task)

    async def _handle_request(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = f"req_{self._id_prefix}{next(self._ids):06d}"
        try:
            raw: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = None
        body = decode_body(raw) if raw else None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=raw or b"",
            json=None if isinstance(body, InvalidJSON) else body,
            time=time.time(),
            request_id=request_id,
            api_key=_bearer(request.headers.get("Authorization")),
        )
        self._requests.append(record)
        response = await self._answer(request, raw, body, record)
        if response is not None:
            record.status = response.status
            return response
        # A scripted disconnect: the transport is gone; aiohttp writes nothing more to it.
        return web.Response(status=500)

    async def _answer(
        self, request: web.BaseRequest, raw: bytes | None, body: object, record: RecordedRequest
    ) -> web.StreamResponse | None:
        rid = record.request_id
        if request.path != _PATH:
            return _error(rid, 404, "not_found", f"No route for {request.path}; the API serves POST {_PATH}")
        if request.method != "POST":
            answer = _error(rid, 405, "method_not_allowed", f"{request.method} is not allowed; use POST")
            answer.headers["Allow"] = "POST"
            return answer
        fault = self._script.next_request_fault()
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "disconnect":
                if request.transport is not None:
                    request.transport.abort()
                return None
            elif fault.kind == "html":
                reason = _reason(fault.status)
                page = _HTML_PAGE.format(status=fault.status, reason=reason)
                return web.Response(
                    status=fault.status, text=page, content_type="text/html", headers={"x-request-id": rid}
                )
            else:
                headers = None if fault.retry_after is None else seconds_header(fault.retry_after)
                assert fault.code is not None
                return _error(rid, fault.status, fault.code, fault.message, fault.details, headers)
        key = record.api_key
        if not key:
            return _error(
                rid, 401, "invalid_api_key", "Missing API key: send 'Authorization: Bearer YOUR_API_KEY'"
            )
        if self._api_keys is not None and key not in self._api_keys:
            return _error(rid, 401, "invalid_api_key", "Invalid API key")
        wait = self._limits.admit(key)
        if wait is not None:
            limits = {"rate_limit": self._limits.describe()}
            return _error(rid, 429, "rate_limit_exceeded", "Too many requests", limits, seconds_header(wait))
        if raw is None:
            why = f"must be at most {_MAX_BODY} bytes"
            return _error(rid, 413, "invalid_request", "The request body is too large", {"body": why})
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return _error(
                rid,
                415,
                "invalid_request",
                "The request body must be JSON",
                {"Content-Type": f"must be application/json, got {content_type or 'nothing'}"},
            )
        params = check_body(body)
        if isinstance(params, Rejection):
            return _error(rid, params.status, params.code, params.message, params.details)
        model = self.models.get(params.model)
        if model is None:
            why = f"Model '{params.model}' not found"
            return _error(rid, 404, "model_not_found", why, {"model": why})
        prompt_tokens = count_tokens(params.prompt)
        if prompt_tokens > model.context_length:
            why = f"{prompt_tokens} tokens; {model.name} accepts at most {model.context_length}"
            return _error(rid, 400, "context_length_exceeded", "Input prompt is too long", {"prompt": why})
        if not self._limits.quota_left(key):
            why = f"the quota of {self._limits.token_quota} tokens for this key is used up"
            return _error(rid, 429, "insufficient_quota", "Not enough credits or quota", {"quota": why})
        text = self._reply_text(params)
        if isinstance(text, BaseException):
            # A 500 as a broken server gives, naming the user's own error so the test failure shows it.
            why = f"FakeNebulaServer could not make the reply: {type(text).__name__}: {text}"
            return _error(rid, 500, "server_error", why)
        room = model.context_length - prompt_tokens
        limit = min(_DEFAULT_MAX_TOKENS if params.max_tokens is None else params.max_tokens, room)
        result = generate(text, max_tokens=limit, stop=params.stop)
        self._limits.charge(key, prompt_tokens + result.completion_tokens)
        if params.stream:
            return await self._stream(request, record, result)
        pause = self._pacing(len(result.chunks))
        if pause:
            await asyncio.sleep(pause)
        completion = result.completion_tokens
        # json.dumps of the envelope, byte for byte, without building and walking the dicts.
        body = (
            f'{{"status": "success", "data": {{"text": {_json_str(result.text)}, "usage": '
            f'{{"prompt_tokens": {prompt_tokens}, "completion_tokens": {completion}, '
            f'"total_tokens": {prompt_tokens + completion}}}}}}}'
        )
        return web.Response(
            body=body.encode(), content_type="application/json", headers={"x-request-id": rid}
        )

    def _reply_text(self, params: Params) -> str | BaseException:
        """Return the full reply, or the error of a broken ``replies`` entry or ``reply`` function."""
        text: object = self.replies.get(params.prompt)
        if text is not None:
            if not isinstance(text, str):  # server.replies is a plain dict: anything can go in later
                return TypeError(f"replies[{params.prompt[:50]!r}] is a {type(text).__name__}, not a str")
            return text
        if self.reply is None:
            return default_reply(
                params.model,
                params.prompt,
                _DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
                _DEFAULT_TOP_P if params.top_p is None else params.top_p,
            )
        request = GenerateRequest(
            model=params.model,
            prompt=params.prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
        )
        try:
            made: object = self.reply(request)  # typed str, but it is the user's code
        except Exception as exc:  # the user's function, not ours: answer for it, don't crash
            logger.exception("FakeNebulaServer: the reply function raised")
            return exc
        if not isinstance(made, str):
            logger.error("FakeNebulaServer: the reply function returned a %s, not a str", type(made).__name__)
            return TypeError(f"the reply function returned a {type(made).__name__}, not a str")
        return made

    def _pacing(self, events: int) -> float:
        return self.time_to_first_token + self.token_delay * max(0, events - 1)

    async def _stream(
        self, request: web.BaseRequest, record: RecordedRequest, result: Generation
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-request-id": record.request_id,
            }
        )
        events = _events(result)
        fault = self._script.next_stream_fault()
        # A scripted fault always comes before the final event: after it, the stream is complete.
        sent = events if fault is None else events[: min(fault.events, len(events) - 1)]
        with contextlib.suppress(ConnectionError):  # the client hung up: nothing left to do
            await response.prepare(request)
            record.status = 200  # the headers are out: a cut or a cancel later doesn't change it
            if self.time_to_first_token:
                await asyncio.sleep(self.time_to_first_token)
            if self.token_delay:
                for i, event in enumerate(sent):
                    if i:
                        await asyncio.sleep(self.token_delay)
                    await response.write(event.encode())
            elif sent:
                await response.write("".join(sent).encode())
            if fault is not None and fault.kind == "drop_stream":
                if request.transport is not None:
                    request.transport.abort()
                return response
            if fault is not None:
                assert fault.code is not None
                error = _envelope(fault.code, fault.message, fault.details)
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await response.write_eof()
        return response


def _events(result: Generation) -> list[str]:
    """Encode each chunk as an event, exactly in the reference's shape; the last carries finish_reason.

    The bytes are what ``json.dumps`` gives (its default separators and ASCII escapes), built
    without a ``json.dumps`` call per event: this runs for every token.
    """
    chunks = result.chunks or ("",)
    events = [f'data: {{"text": {_json_str(text)}, "finish_reason": null}}\n\n' for text in chunks]
    last = _json_str(chunks[-1])
    events[-1] = f'data: {{"text": {last}, "finish_reason": {_json_str(result.finish_reason)}}}\n\n'
    return events


def _envelope(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"status": "error", "error": error}


def _error(
    rid: str,
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(_envelope(code, message, details)).encode(),
        content_type="application/json",
        headers={"x-request-id": rid, **(headers or {})},
    )


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status with no standard phrase, such as 599
        return "Error"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
