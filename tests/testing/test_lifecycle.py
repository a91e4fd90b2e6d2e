"""FakeNebulaServer's lifecycle: async with, start()/stop(), run_in_thread(), shutdown, fork, arguments."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

import nebula_sync
from nebula_async import AsyncNebulaClient, GenerateRequest
from nebula_async.testing import FakeModel, FakeNebulaServer
from tests.testing._support import FAKE_KEY, MODEL, WAIT, post, refuses, wait_until

NOT_RUNNING = r"not running: use 'async with', start\(\) or run_in_thread\(\)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on for the test."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- starting and stopping ------------------------------------------------------------------------


async def test_async_with_serves_on_an_ephemeral_port() -> None:
    """`async with` starts the server on 127.0.0.1 and a free port, with a base_url ending in /v1."""
    async with FakeNebulaServer() as server:
        url = urlsplit(server.base_url)
        assert server.base_url.endswith("/v1")
        assert url.hostname == "127.0.0.1"
        assert server.port > 0
        assert url.port == server.port
        assert repr(server).startswith(f"<FakeNebulaServer {server.base_url}")
        async with AsyncNebulaClient(server.api_key, base_url=server.base_url) as client:
            result = await client.generate_text(model=MODEL, prompt="Hi")
        assert result.text
    assert refuses(url.port)


def test_start_and_stop_from_sync_code() -> None:
    """start() runs the server in a thread for a sync client; stop() ends it and its thread."""
    threads_before = threading.active_count()
    server = FakeNebulaServer().start()
    try:
        with nebula_sync.NebulaClient(server.api_key, base_url=server.base_url) as client:
            assert client.generate_text(model=MODEL, prompt="Hi").text
        port = server.port
    finally:
        server.stop()
    assert refuses(port)
    assert threading.active_count() == threads_before
    with pytest.raises(RuntimeError, match=NOT_RUNNING):
        _ = server.base_url


def test_run_in_thread_serves_for_the_with_block() -> None:
    """run_in_thread() serves a sync client inside the with block and stops at its end."""
    with FakeNebulaServer().run_in_thread() as server:
        with nebula_sync.NebulaClient(server.api_key, base_url=server.base_url) as client:
            chunks = [c.text for c in client.stream_text(model=MODEL, prompt="Hi", max_tokens=5)]
        assert len(chunks) == 5
        port = server.port
    assert refuses(port)
    assert [r.status for r in server.requests] == [200]


def test_stop_twice_and_stop_before_start_are_harmless() -> None:
    """stop() on a server never started, or already stopped, does nothing."""
    server = FakeNebulaServer()
    server.stop()
    server.start()
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError, match=NOT_RUNNING):
        _ = server.port


def test_starting_twice_raises() -> None:
    """start() on a running server raises RuntimeError and leaves it serving."""
    with FakeNebulaServer().run_in_thread() as server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        with nebula_sync.NebulaClient(server.api_key, base_url=server.base_url) as client:
            assert client.generate_text(model=MODEL, prompt="Hi").text


async def test_starting_an_async_server_again_raises() -> None:
    """astart() or start() on a server already running in the event loop raises RuntimeError."""
    async with FakeNebulaServer() as server:
        with pytest.raises(RuntimeError, match="already running"):
            await server.astart()
        with pytest.raises(RuntimeError, match="already running"):
            server.start()


def test_base_url_before_start_raises_with_a_hint() -> None:
    """base_url and port before the server starts raise RuntimeError saying how to start it."""
    server = FakeNebulaServer()
    with pytest.raises(RuntimeError, match=NOT_RUNNING):
        _ = server.base_url
    with pytest.raises(RuntimeError, match=NOT_RUNNING):
        _ = server.port
    assert repr(server) == "<FakeNebulaServer not running, 9 models, 0 requests>"


async def test_stop_on_an_async_started_server_raises() -> None:
    """stop() on a server running in the event loop raises RuntimeError naming astop(); it keeps serving."""
    async with FakeNebulaServer() as server:
        with pytest.raises(RuntimeError, match=r"leave its 'async with' or await astop\(\)"):
            server.stop()
        async with AsyncNebulaClient(server.api_key, base_url=server.base_url) as client:
            assert (await client.generate_text(model=MODEL, prompt="Hi")).text


def test_stop_inside_a_reply_function_raises_and_the_server_keeps_serving() -> None:
    """stop() in a reply function raises RuntimeError (a 500 naming it); the server serves on until stop()."""
    # Regression: stop() in the server's own thread was not refused (it cannot wait on itself).

    def reply(request: GenerateRequest) -> str:
        if request.prompt == "stop now":
            server.stop()
        return "Fine."

    server = FakeNebulaServer(api_keys=[FAKE_KEY], reply=reply).start()
    try:
        status, headers, answer = post(server.base_url, {"model": MODEL, "prompt": "stop now"})
        assert status == 500
        assert answer["error"]["code"] == "server_error"
        assert "RuntimeError: stop() was called from the server's own thread" in answer["error"]["message"]
        assert headers["x-request-id"].startswith("req_")
        status, _, answer = post(server.base_url, {"model": MODEL, "prompt": "go on"})
        assert (status, answer["data"]["text"]) == (200, "Fine.")
        port = server.port
    finally:
        server.stop()
    assert refuses(port)


def test_astop_from_another_event_loop_raises_and_leaves_it_running() -> None:
    """astop() from a loop other than start()'s raises RuntimeError; the server serves on until stop()."""
    # Regression: astop() from a loop other than the server's was not refused.
    server = FakeNebulaServer(api_keys=[FAKE_KEY]).start()
    try:
        with pytest.raises(RuntimeError, match="runs in another event loop"):
            asyncio.run(server.astop())
        assert post(server.base_url)[0] == 200
        port = server.port
    finally:
        server.stop()
    assert refuses(port)


# --- ports ----------------------------------------------------------------------------------------


def test_a_fixed_port_is_used() -> None:
    """port=N listens on exactly N."""
    port = _free_port()
    with FakeNebulaServer(port=port).run_in_thread() as server:
        assert server.port == port
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        with nebula_sync.NebulaClient(server.api_key, base_url=server.base_url) as client:
            assert client.generate_text(model=MODEL, prompt="Hi").text
    assert refuses(port)


def test_a_taken_port_raises_from_start_and_leaves_nothing_running(taken_port: int) -> None:
    """start() on a taken port raises OSError and leaves no thread and nothing to stop behind."""
    threads_before = threading.active_count()
    server = FakeNebulaServer(port=taken_port)
    with pytest.raises(OSError, match=r"(?i)address already in use"):
        server.start()
    assert threading.active_count() == threads_before
    with pytest.raises(RuntimeError, match=NOT_RUNNING):
        _ = server.base_url
    server.stop()  # nothing to stop: no error


def test_a_server_that_failed_to_start_can_start_later() -> None:
    """After start() failed on a taken port, the same server starts once the port is free."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = FakeNebulaServer(port=port)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            server.start()
    with server.run_in_thread():
        assert server.port == port


async def test_a_taken_port_raises_from_async_with(taken_port: int) -> None:
    """`async with` on a taken port raises OSError and leaves the server not running."""
    server = FakeNebulaServer(port=taken_port)
    with pytest.raises(OSError, match=r"(?i)address already in use"):
        async with server:
            pytest.fail("the body must not run")
    assert "not running" in repr(server)


# --- stopping promptly, leaking nothing -----------------------------------------------------------


async def test_stop_with_a_slow_stream_in_flight_is_prompt() -> None:
    """stop() while a slow stream is being read cuts the stream at once instead of waiting it out."""
    server = FakeNebulaServer(token_delay=0.5).start()
    first_event = asyncio.Event()

    async def read_stream() -> None:
        body = {"model": MODEL, "prompt": "A long story", "max_tokens": 200, "stream": True}
        headers = {"Authorization": f"Bearer {server.api_key}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{server.base_url}/text/generate", json=body, headers=headers) as resp,
        ):
            async for _ in resp.content.iter_any():
                first_event.set()

    reader = asyncio.create_task(read_stream())
    try:
        await asyncio.wait_for(first_event.wait(), 5)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1  # the stream's 0.5 s pacing is cut, not waited out
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(reader, 5)
    finally:
        server.stop()
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


def test_stop_right_after_a_connect_leaks_nothing() -> None:
    """stop() just after a client connected leaves no unclosed socket behind (twenty tries)."""
    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(20):
            server = FakeNebulaServer().start()
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            server.stop()
            gc.collect()  # the leaked socket's ResourceWarning surfaces here, not in a later test
    assert [str(w.message) for w in leaks] == []


HUGE_REPLY = " word" * 200_000  # 200,000 tokens: megabytes that a client which never reads leaves unsent


def _long_stream_server() -> FakeNebulaServer:
    return FakeNebulaServer(
        api_keys=[FAKE_KEY], models=[FakeModel("big", 1_000_000)], replies={"long": HUGE_REPLY}, token_delay=0
    )


def _request_unread_stream(port: int) -> socket.socket:
    """Ask for the long stream on a socket that never reads it; return that socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server's writes back up at once
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"model": "big", "prompt": "long", "max_tokens": 200_000, "stream": True}).encode()
    head = (
        "POST /v1/text/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {FAKE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _streaming(server: FakeNebulaServer) -> bool:
    return [r.status for r in server.requests] == [200]


def test_stop_with_an_unread_long_stream_leaks_nothing_in_a_thread() -> None:
    """stop() while a client holds an unread 200,000-token stream leaves no unclosed socket (start/stop)."""
    # Regression: a client that stopped reading kept stop() waiting, then leaked the socket.
    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        server = _long_stream_server().start()
        sock = _request_unread_stream(server.port)
        try:
            wait_until(lambda: _streaming(server))
            server.stop()
        finally:
            sock.close()
            server.stop()
        gc.collect()
    assert [str(w.message) for w in leaks] == []


def test_stop_with_an_unread_long_stream_leaks_nothing_in_an_event_loop() -> None:
    """Leaving `async with` while a client holds an unread 200,000-token stream leaves no unclosed socket."""
    # Regression: a client that stopped reading kept astop() waiting, then leaked the socket.
    clients: list[socket.socket] = []

    async def serve_and_stop() -> None:
        async with _long_stream_server() as server:
            clients.append(await asyncio.to_thread(_request_unread_stream, server.port))
            await asyncio.to_thread(wait_until, lambda: _streaming(server))
            await asyncio.wait_for(server.astop(), WAIT)

    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        try:
            # A loop of its own, closed before the client hangs up: a client's reset would close a
            # leaked server socket, and only a closed loop shows the leak.
            asyncio.run(serve_and_stop())
        finally:
            for sock in clients:
                sock.close()
        gc.collect()
    assert [str(w.message) for w in leaks] == []


def test_stop_while_threads_connect_in_a_tight_loop_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """stop() while two threads keep connecting leaves no unclosed socket and no asyncio error (20 runs)."""
    # Regression: a connection accepted as the listener closed leaked its socket (CPython gh-109564).
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(20):
            server = FakeNebulaServer().start()
            done, connected = threading.Event(), threading.Event()

            def hammer(
                port: int = server.port, done: threading.Event = done, connected: threading.Event = connected
            ) -> None:
                while not done.is_set():
                    # A short timeout: once the listener's backlog is full, a SYN waits a second for a retry.
                    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                        connected.set()

            # Two of them: one alone hits the moment of closing in only some runs of twenty.
            threads = [threading.Thread(target=hammer) for _ in range(2)]
            for thread in threads:
                thread.start()
            try:
                assert connected.wait(WAIT)
                server.stop()
            finally:
                done.set()
                for thread in threads:
                    thread.join(WAIT)
                server.stop()
            gc.collect()
    assert [str(w.message) for w in leaks] == []
    assert "Error on transport creation" not in caplog.text
    assert [r.getMessage() for r in caplog.records] == []


# --- exit and fork --------------------------------------------------------------------------------


def test_importing_the_testing_package_loads_no_sync_runtime() -> None:
    """`import nebula_async.testing` loads neither nebula_sync nor anyio; start() loads the runtime."""
    script = (
        "import sys; import nebula_async.testing as t;"
        "print(sorted(m for m in ('nebula_sync', 'anyio') if m in sys.modules));"
        "t.FakeNebulaServer().start().stop(); print('nebula_sync._runtime' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\nTrue\n", "")


def test_a_server_never_stopped_lets_the_interpreter_exit() -> None:
    """A script that start()s a server, uses it and never stops it exits 0 with nothing on stderr."""
    script = textwrap.dedent(
        """
        import json, urllib.request
        from nebula_async.testing import FakeNebulaServer

        server = FakeNebulaServer().start()
        request = urllib.request.Request(
            server.base_url + "/text/generate",
            data=json.dumps({"model": "Llama3.3-70B", "prompt": "Hi"}).encode(),
            headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            print(response.status, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "200\n", "")


FORK_SCRIPT = """
import os, signal, sys, time, warnings

# Python 3.12+ warns about fork() with threads running; the server's thread is the point here.
warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*fork\\(\\)")

from nebula_async.testing import FakeNebulaServer

server = FakeNebulaServer().start()
pid = os.fork()
if pid == 0:
    if sys.argv[1] == "stop":
        server.stop()
    sys.exit(0)  # a normal exit: atexit handlers run
deadline = time.monotonic() + 3
while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
if done[0] == 0:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("child hung", flush=True)
else:
    print("child exit", os.waitstatus_to_exitcode(done[1]), flush=True)
server.stop()
"""


def _run_fork_script(child: str) -> tuple[int, str, str]:
    """Run FORK_SCRIPT with ``child`` ("exit" or "stop"); return its status, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FORK_SCRIPT, child],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the forked child too can be killed with its group
    )
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@needs_fork
def test_a_forked_child_of_a_process_with_a_started_server_exits_0() -> None:
    """A child forked while start()'s server runs exits 0 at once; the parent still stops its server."""
    # Regression: the child's atexit stop() waited forever on the parent's server thread.
    assert _run_fork_script("exit") == (0, "child exit 0\n", "")


@needs_fork
def test_stop_in_a_forked_child_returns_at_once() -> None:
    """stop() in a child forked while start()'s server runs returns at once, and the child exits 0."""
    # Regression: stop() in a forked child waited forever on the parent's server thread.
    assert _run_fork_script("stop") == (0, "child exit 0\n", "")


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"api_keys": []}, ValueError, "api_keys must hold at least one key"),
        (
            {"api_keys": ["ok", " "]},
            ValueError,
            "api_keys must hold at least one key, each a non-empty string",
        ),
        ({"token_delay": -0.1}, ValueError, r"token_delay must be a finite number of seconds >= 0, got -0.1"),
        ({"time_to_first_token": float("inf")}, ValueError, "time_to_first_token must be a finite number"),
        ({"token_delay": "0.1"}, TypeError, "token_delay must be a number of seconds, got str"),
        (
            {"requests_per_second": 0},
            ValueError,
            r"requests_per_second must be an int >= 1 or None \(no limit\), got 0",
        ),
        (
            {"requests_per_minute": 1.5},
            TypeError,
            r"requests_per_minute must be an int or None \(no limit\), got float",
        ),
        ({"token_quota": -5}, ValueError, "token_quota must be an int >= 1"),
        ({"port": -1}, ValueError, r"port must be an int from 0 to 65535 \(0: any free port\), got -1"),
        ({"port": 65536}, ValueError, "port must be an int from 0"),
        ({"port": "8080"}, TypeError, r"port must be an int \(0: any free port\), got str"),
        ({"reply": "Hello"}, TypeError, "reply must be a function from a GenerateRequest to the reply text"),
        ({"models": "gpt-4"}, TypeError, "models must be a list of names or FakeModel objects"),
        ({"models": [], "default_models": False}, ValueError, "needs at least one model"),
        ({"max_recorded": -1}, ValueError, r"max_recorded must be an int >= 0 or None \(keep all\), got -1"),
        ({"max_recorded": True}, TypeError, r"max_recorded must be an int or None \(keep all\), got bool"),
        ({"max_recorded": "3"}, TypeError, r"max_recorded must be an int or None \(keep all\), got str"),
        ({"stream_usage": 1}, TypeError, r"stream_usage must be True or False, got int"),
    ],
)
def test_constructor_arguments_are_checked(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A bad constructor argument raises a clear TypeError or ValueError before anything starts."""
    with pytest.raises(error, match=match):
        FakeNebulaServer(**kwargs)


def test_api_keys_as_one_str_raises_without_echoing_the_key() -> None:
    """api_keys given one str raises TypeError whose message and repr do not contain the key."""
    # Regression: the TypeError echoed the key back, as api_keys={'sk-...'}.
    with pytest.raises(TypeError) as caught:
        FakeNebulaServer(api_keys=FAKE_KEY)
    assert str(caught.value) == "api_keys must be a collection of keys, e.g. api_keys={'my-key'}, not one str"
    assert FAKE_KEY not in repr(caught.value)


def test_api_key_from_a_set_is_the_smallest_and_from_a_list_the_first() -> None:
    """api_key is the smallest key of a set (whatever its order) and the first key of a list."""
    # Regression: from a set, api_key was whichever key came first, different from run to run.
    assert FakeNebulaServer(api_keys={"b-key", "a-key"}).api_key == "a-key"
    assert FakeNebulaServer(api_keys={"b-key": 1, "a-key": 1}.keys()).api_key == "a-key"  # b-key first
    assert FakeNebulaServer(api_keys=["b-key", "a-key"]).api_key == "b-key"
    assert FakeNebulaServer(api_keys=("b-key", "a-key")).api_key == "b-key"
