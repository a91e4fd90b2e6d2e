"""What the tests of nebula_sync share: a threaded server, body builders, waits, subprocess and fork runs.

``ThreadedServer`` is a real aiohttp.web server running its own event loop in a background thread.
The sync client blocks the calling thread, so its server can't share the test's thread or loop.
Importable without pytest: the subprocess tests start one in the child process too. Most sync tests
use the FakeNebulaServer instead; this one is for what it can't do: hold a call until the test
releases it, stall a stream after a burst of events, count cancelled handlers and open connections,
and stay up through a subprocess's interpreter exit (the fake closes itself at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from nebula_async import GenerateRequest

KEY = "sk-test-0123456789"
LOOP_THREAD = "nebula-sync"  # the name NebulaClient gives its event-loop thread
CLOSED_MID_CALL = "closed while the call was running"
ROOT = Path(__file__).resolve().parents[2]


def loop_threads() -> list[threading.Thread]:
    """Return the live event-loop threads of sync clients."""
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def echo_reply(request: GenerateRequest) -> str:
    """Reply ``"echo: <prompt>"`` from the FakeNebulaServer, as ThreadedServer's ``echo`` does."""
    return f"echo: {request.prompt}"


def success_body(text: str) -> dict[str, Any]:
    """Return the documented success envelope for ``text``."""
    usage = {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}
    return {"status": "success", "data": {"text": text, "usage": usage}}


def error_body(code: str, message: str = "something went wrong") -> dict[str, Any]:
    """Return the documented error envelope."""
    return {"status": "error", "error": {"code": code, "message": message, "details": {}}}


def sse(*payloads: dict[str, Any]) -> bytes:
    """Encode events as ``data: <json>\\n\\n``."""
    return b"".join(f"data: {json.dumps(p)}\n\n".encode() for p in payloads)


Handler = Callable[["ThreadedServer", web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class ThreadedServer:
    """Serve POST /v1/text/generate on 127.0.0.1 from a daemon thread; ``behaviour`` picks the answer.

    The default behaviour echoes the prompt: ``"echo: <prompt>"`` as JSON, or, for a stream, the
    words ``["echo", ": ", <prompt>]`` as three events, the last with ``finish_reason="stop"``.
    """

    def __init__(self) -> None:
        self.behaviour: Handler = echo
        self.requests: list[dict[str, Any]] = []  # JSON body of each request received, in order
        self.cancelled = 0  # handlers cancelled because the client went away
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def open_connections(self) -> int:
        """How many client connections the server holds open right now, counted in its own loop."""
        assert self._runner is not None
        assert self._runner.server is not None
        server = self._runner.server

        async def count() -> int:
            return len(server.connections)

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(timeout=5)

    def start(self) -> ThreadedServer:
        """Start the loop thread and the server; return once it accepts connections."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/text/generate", self._route)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # a TCP site's server is an asyncio.Server

    def release(self) -> None:
        """Let every handler waiting in ``wait_released()`` go on; thread-safe."""
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    async def wait_released(self, timeout: float = 20.0) -> None:
        """Wait (in a handler) until ``release()`` is called or ``timeout`` passes."""
        assert self._release is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._release.wait(), timeout)

    def stop(self) -> None:
        """Release waiting handlers, shut the server down, stop and close its loop; idempotent."""
        if not self._thread.is_alive():
            return
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _route(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        with self._lock:
            self.requests.append(body)
        try:
            return await self.behaviour(self, request, body)
        except asyncio.CancelledError:
            with self._lock:
                self.cancelled += 1
            raise


async def _event_stream(request: web.Request, request_id: str = "req_stream") -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": request_id})
    await response.prepare(request)
    return response


async def echo(server: ThreadedServer, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Answer with the prompt echoed back, as JSON or as an event stream."""
    prompt = body.get("prompt", "")
    if body.get("stream"):
        response = await _event_stream(request)
        words = ["echo", ": ", prompt]
        for i, word in enumerate(words):
            await response.write(
                sse({"text": word, "finish_reason": "stop" if i == len(words) - 1 else None})
            )
        await response.write_eof()
        return response
    return web.json_response(success_body(f"echo: {prompt}"), headers={"x-request-id": "req_1"})


async def slow(server: ThreadedServer, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Answer only once the test calls ``server.release()`` (or after 20 s)."""
    await server.wait_released()
    return await echo(server, request, body)


def stalled_stream(events: int) -> Handler:
    """Send ``events`` chunks of a stream at once, then wait for ``server.release()`` before finishing it."""

    async def handler(
        server: ThreadedServer, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        if not body.get("stream"):
            return await echo(server, request, body)
        response = await _event_stream(request)
        await response.write(sse(*({"text": f"w{i} ", "finish_reason": None} for i in range(events))))
        await server.wait_released()
        await response.write(sse({"text": "end", "finish_reason": "stop"}))
        await response.write_eof()
        return response

    return handler


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def call_in_thread(
    call: Callable[[], Any], *, daemon: bool = False
) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``call`` in a thread; its outcome dict gets "result" or "error" (whatever it raised)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # whatever it is, the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=daemon)
    thread.start()
    return thread, outcome


# --- scripts run in a fresh interpreter, and forks -------------------------------------------------

# A script's prelude: its own server in a daemon thread, left running, so that the client still
# holds open connections when the interpreter exits.
PRELUDE = """\
from tests.sync._support import ThreadedServer, stalled_stream
from nebula_sync import NebulaClient

server = ThreadedServer().start()
"""


def fork() -> int:
    """os.fork(), without the warning Python >= 3.12 gives for forking a process with threads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def reap(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` for child ``pid``; return its exit code, or kill it and return None."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def in_child(check: Callable[[], list[str]], timeout: float = 5.0) -> tuple[int | None, str]:
    """Fork; run ``check`` in the child, which reports its problems; return its exit code and report."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # the child: never return into pytest, report through the pipe and the exit code
        code = 70
        try:
            os.close(read_end)
            problems = check()
            os.write(write_end, "; ".join(problems).encode())
            code = 1 if problems else 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        exit_code = reap(pid, timeout)
        return exit_code, os.read(read_end, 65536).decode()
    finally:
        os.close(read_end)
