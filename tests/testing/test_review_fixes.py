"""Pins for the fake server's review fixes: each test here fails if its fix is undone."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nebula_async import GenerateRequest
from nebula_async.testing import FakeModel, FakeNebulaServer, RecordedRequest, _generate
from tests.testing._support import refuses, run_pytest

KEY = "sk-distinctive-SECRET-4fQ9zW"  # any sighting of it in a log or a diff is a leak
MODEL = "Llama3.3-70B"
WAIT = 10.0  # seconds: generous, only reached when something is broken
BANNER = re.compile(r"^FakeNebulaServer at (http://127\.0\.0\.1:\d+/v1) ")


@contextlib.contextmanager
def _serving(**kwargs: Any) -> Iterator[FakeNebulaServer]:
    """Run a FakeNebulaServer that accepts KEY in a thread for the with block."""
    with FakeNebulaServer(api_keys=[KEY], **kwargs).run_in_thread() as server:
        yield server


def _post(
    base_url: str, body: object = None, *, data: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST to the generate endpoint with KEY; return the status, the headers and the decoded JSON."""
    if data is None:
        data = json.dumps(body if body is not None else {"model": MODEL, "prompt": "Hi"}).encode()
    request = urllib.request.Request(
        f"{base_url}/text/generate",
        data=data,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


# --- 1. api_keys="one str" -----------------------------------------------------------------------


def test_api_keys_as_one_str_raises_without_echoing_the_key() -> None:
    """api_keys given one str raises TypeError whose message and repr do not contain the key."""
    with pytest.raises(TypeError, match="api_keys must be a collection of keys") as caught:
        FakeNebulaServer(api_keys="sk-distinctive-SECRET")
    assert "SECRET" not in str(caught.value)
    assert "SECRET" not in repr(caught.value)


# --- 2. aiohttp's log of a malformed request -----------------------------------------------------


@pytest.mark.parametrize(
    "header_line",
    [
        b"Authorization: Bearer %s\x01",  # a control character in the value
        b"Authorization Bearer %s",  # no colon
    ],
    ids=["control-char", "no-colon"],
)
def test_malformed_request_log_hides_the_key(caplog: pytest.LogCaptureFixture, header_line: bytes) -> None:
    """aiohttp's log of a malformed Authorization line says what went wrong with the key redacted."""
    caplog.set_level(logging.DEBUG, logger="nebula_async.testing.server")
    raw = b"POST /v1/text/generate HTTP/1.1\r\nHost: x\r\n" + header_line % KEY.encode() + b"\r\n\r\n"
    with _serving() as server, socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert [r.name for r in caplog.records] == ["nebula_async.testing.server"]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert KEY not in logged
    assert KEY not in caplog.text
    assert "Error handling request" in logged
    assert "Bearer <redacted>" in logged


# --- 3. RecordedRequest equality -----------------------------------------------------------------


def _record(api_key: str, status: int = 200) -> RecordedRequest:
    return RecordedRequest(
        method="POST",
        path="/v1/text/generate",
        headers={"Content-Type": "application/json"},
        body=b"{}",
        json={},
        time=1.0,
        request_id="req_1",
        api_key=api_key,
        status=status,
    )


def test_recorded_requests_differing_only_in_api_key_are_equal(request: pytest.FixtureRequest) -> None:
    """Records differing only in api_key compare equal, and pytest's diff of two records never shows it."""
    assert _record(KEY) == _record("sk-other-key")
    explanations = request.config.hook.pytest_assertrepr_compare(
        config=request.config, op="==", left=_record(KEY, 200), right=_record("sk-other-key", 500)
    )
    diff = "\n".join(line for explanation in explanations for line in explanation or [])
    assert "status" in diff
    assert KEY not in diff
    assert "api_key" not in diff


# --- 4. max_recorded -----------------------------------------------------------------------------


def test_max_recorded_keeps_only_the_last_n_requests() -> None:
    """max_recorded=3 keeps the last three of five requests; max_recorded=0 answers them but keeps none."""
    with _serving(max_recorded=3) as server:
        for i in range(5):
            assert _post(server.base_url, {"model": MODEL, "prompt": f"p{i}"})[0] == 200
        assert [r.json["prompt"] for r in server.requests] == ["p2", "p3", "p4"]
    with _serving(max_recorded=0) as server:
        assert _post(server.base_url)[0] == 200
        assert server.requests == []


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, r"max_recorded must be an int >= 0 or None \(keep all\), got -1"),
        (True, TypeError, r"max_recorded must be an int or None \(keep all\), got bool"),
        ("3", TypeError, r"max_recorded must be an int or None \(keep all\), got str"),
    ],
)
def test_max_recorded_rejects_a_bad_value(value: object, error: type[Exception], match: str) -> None:
    """max_recorded that is negative raises ValueError; a bool or a str raises TypeError."""
    with pytest.raises(error, match=match):
        FakeNebulaServer(max_recorded=value)  # type: ignore[arg-type]  # deliberately not an int


# --- 5. default_reply's cache --------------------------------------------------------------------


def test_default_reply_caches_only_short_prompts() -> None:
    """A prompt over 4096 characters is not cached, a short one is; either way the text is the same."""
    cache = _generate._cached_reply
    cache.cache_clear()  # a full cache would not grow: start from empty
    long_prompt = "word " * 1000 + "unique long prompt"
    assert len(long_prompt) > 4096
    first = _generate.default_reply(MODEL, long_prompt, 0.7, 1.0)
    assert _generate.default_reply(MODEL, long_prompt, 0.7, 1.0) == first
    assert cache.cache_info().currsize == 0
    assert cache(MODEL, long_prompt, 0.7, 1.0) == first  # the cached path would have said the same
    cache.cache_clear()
    short = _generate.default_reply(MODEL, "a short prompt", 0.7, 1.0)
    assert cache.cache_info().currsize == 1
    assert _generate.default_reply(MODEL, "a short prompt", 0.7, 1.0) == short
    assert cache.cache_info().hits == 1
    assert _generate._make_reply(MODEL, "a short prompt", 0.7, 1.0) == short


# --- 6. fork -------------------------------------------------------------------------------------

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
    assert _run_fork_script("exit") == (0, "child exit 0\n", "")


@needs_fork
def test_stop_in_a_forked_child_returns_at_once() -> None:
    """stop() in a child forked while start()'s server runs returns at once, and the child exits 0."""
    assert _run_fork_script("stop") == (0, "child exit 0\n", "")


# --- 7, 8. stop() from the wrong place -----------------------------------------------------------


def test_stop_inside_a_reply_function_raises_and_the_server_keeps_serving() -> None:
    """stop() in a reply function raises RuntimeError (a 500 naming it); the server serves on until stop()."""

    def reply(request: GenerateRequest) -> str:
        if request.prompt == "stop now":
            server.stop()
        return "Fine."

    server = FakeNebulaServer(api_keys=[KEY], reply=reply).start()
    try:
        status, headers, answer = _post(server.base_url, {"model": MODEL, "prompt": "stop now"})
        assert status == 500
        assert answer["error"]["code"] == "server_error"
        assert "RuntimeError: stop() was called from the server's own thread" in answer["error"]["message"]
        assert headers["x-request-id"].startswith("req_")
        status, _, answer = _post(server.base_url, {"model": MODEL, "prompt": "go on"})
        assert (status, answer["data"]["text"]) == (200, "Fine.")
        port = server.port
    finally:
        server.stop()
    assert refuses(port)


def test_astop_from_another_event_loop_raises_and_leaves_it_running() -> None:
    """astop() from a loop other than start()'s raises RuntimeError; the server serves on until stop()."""
    server = FakeNebulaServer(api_keys=[KEY]).start()
    try:
        with pytest.raises(RuntimeError, match="runs in another event loop"):
            asyncio.run(server.astop())
        assert _post(server.base_url)[0] == 200
        port = server.port
    finally:
        server.stop()
    assert refuses(port)


# --- 9, 10. stopping leaks nothing ---------------------------------------------------------------

LONG_REPLY = " word" * 200_000  # 200,000 tokens: megabytes that a client which never reads leaves unsent


def _long_stream_server() -> FakeNebulaServer:
    return FakeNebulaServer(
        api_keys=[KEY], models=[FakeModel("big", 1_000_000)], replies={"long": LONG_REPLY}, token_delay=0
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
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _streaming(server: FakeNebulaServer) -> bool:
    return [r.status for r in server.requests] == [200]


def test_stop_with_an_unread_long_stream_leaks_nothing_in_a_thread() -> None:
    """stop() while a client holds an unread 200,000-token stream leaves no unclosed socket (start/stop)."""
    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        server = _long_stream_server().start()
        sock = _request_unread_stream(server.port)
        try:
            _wait_until(lambda: _streaming(server))
            server.stop()
        finally:
            sock.close()
            server.stop()
        gc.collect()
    assert [str(w.message) for w in leaks] == []


def test_stop_with_an_unread_long_stream_leaks_nothing_in_an_event_loop() -> None:
    """Leaving `async with` while a client holds an unread 200,000-token stream leaves no unclosed socket."""
    clients: list[socket.socket] = []

    async def serve_and_stop() -> None:
        async with _long_stream_server() as server:
            clients.append(await asyncio.to_thread(_request_unread_stream, server.port))
            await asyncio.to_thread(_wait_until, lambda: _streaming(server))
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


# --- 11. stream faults on a short stream ---------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeNebulaServer]:
    """Run a FakeNebulaServer that accepts KEY, in the test's event loop."""
    async with FakeNebulaServer(api_keys=[KEY]) as server:
        yield server


async def _read_stream(server: FakeNebulaServer) -> tuple[list[Any], bool]:
    """Stream a 5-token reply; return the decoded events and whether the body broke off."""
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": True}
    received = b""
    broke = False
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(
            f"{server.base_url}/text/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as resp,
    ):
        assert resp.status == 200
        try:
            while chunk := await resp.content.readany():
                received += chunk
        except aiohttp.ClientPayloadError:
            broke = True
    events = [json.loads(b.removeprefix(b"data: ")) for b in received.split(b"\n\n") if b.strip()]
    return events, broke


async def test_drop_stream_after_more_events_than_the_stream_has_still_cuts(fake: FakeNebulaServer) -> None:
    """drop_stream_after(events=50) on a 5-event stream cuts it before the final event."""
    fake.drop_stream_after(events=50)
    events, broke = await _read_stream(fake)
    assert broke
    assert len(events) == 4
    assert [e["finish_reason"] for e in events] == [None] * 4
    assert fake.pending_faults == 0


async def test_error_event_after_more_events_than_the_stream_has_still_fires(fake: FakeNebulaServer) -> None:
    """error_event_after(events=50) on a 5-event stream sends the error in place of the final event."""
    fake.error_event_after(events=50, code="server_error", message="boom")
    events, broke = await _read_stream(fake)
    assert not broke
    assert len(events) == 5
    assert all(e.get("finish_reason") is None for e in events)
    assert events[-1] == {"status": "error", "error": {"code": "server_error", "message": "boom"}}
    assert fake.pending_faults == 0


# --- 12. replies that are not str ----------------------------------------------------------------


def test_a_non_str_reply_raises_at_construction() -> None:
    """replies={"hi": 5} raises TypeError naming the bad entry."""
    with pytest.raises(TypeError, match="replies must map prompt strings to reply strings"):
        FakeNebulaServer(replies={"hi": 5})  # type: ignore[dict-item]  # deliberately not a str


def test_a_non_str_reply_added_later_gets_a_json_500() -> None:
    """A non-str put in server.replies later gets a JSON server_error with x-request-id, not plain text."""
    with _serving() as server:
        server.replies["hi"] = 5  # type: ignore[assignment]  # deliberately not a str
        status, headers, answer = _post(server.base_url, {"model": MODEL, "prompt": "hi"})
    assert status == 500
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "server_error"
    assert "TypeError" in answer["error"]["message"]
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-request-id"].startswith("req_")


# --- 13. fail_next's status from the code --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"code": "insufficient_quota"}, 429, "insufficient_quota"),
        ({"code": "model_not_found"}, 404, "model_not_found"),
        ({"code": "context_length_exceeded"}, 400, "context_length_exceeded"),
        ({}, 500, "server_error"),
        ({"status": 429}, 429, "rate_limit_exceeded"),
    ],
    ids=["insufficient_quota", "model_not_found", "context_length_exceeded", "nothing", "status-429"],
)
def test_fail_next_matches_the_status_to_the_code(kwargs: dict[str, Any], status: int, code: str) -> None:
    """fail_next with only a code answers that code's documented status, and with neither a 500."""
    with _serving() as server:
        server.fail_next(**kwargs)
        got_status, _, answer = _post(server.base_url)
    assert (got_status, answer["error"]["code"]) == (status, code)


# --- 14, 15. models and api_keys arguments -------------------------------------------------------


def test_models_as_a_mapping_raises_with_a_hint() -> None:
    """models={"tiny": 16} raises TypeError showing the FakeModel spelling."""
    with pytest.raises(TypeError, match=re.escape("FakeModel('tiny', context_length=16)")):
        FakeNebulaServer(models={"tiny": 16})


def test_models_mixing_names_and_fake_models_work() -> None:
    """models=["gpt-4", FakeModel("tiny", context_length=16)] serves both, tiny with a 16-token context."""
    with _serving(models=["gpt-4", FakeModel("tiny", context_length=16)]) as server:
        assert server.models["gpt-4"] == FakeModel("gpt-4")
        assert _post(server.base_url, {"model": "gpt-4", "prompt": "Hi"})[0] == 200
        assert _post(server.base_url, {"model": "tiny", "prompt": " word" * 16})[0] == 200
        status, _, answer = _post(server.base_url, {"model": "tiny", "prompt": " word" * 17})
    assert (status, answer["error"]["code"]) == (400, "context_length_exceeded")


def test_api_key_from_a_set_is_the_smallest_and_from_a_list_the_first() -> None:
    """api_key is the smallest key of a set (whatever its order) and the first key of a list."""
    assert FakeNebulaServer(api_keys={"b-key", "a-key"}).api_key == "a-key"
    assert FakeNebulaServer(api_keys={"b-key": 1, "a-key": 1}.keys()).api_key == "a-key"  # b-key first
    assert FakeNebulaServer(api_keys=["b-key", "a-key"]).api_key == "b-key"
    assert FakeNebulaServer(api_keys=("b-key", "a-key")).api_key == "b-key"


# --- 16. the pytest plugin's markers -------------------------------------------------------------

# A user's project: asyncio_mode=auto, warnings as errors (markers are checked with --strict-markers).
PLUGIN_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

PLUGIN_TESTS = """
import pytest

from nebula_async import ServerError

pytestmark = pytest.mark.nebula_server(default_models=False, models=["module-model"], api_keys=["module-key"])


@pytest.mark.nebula_server(api_keys=["class-key"], models=["class-model"])
class TestMarkers:
    @pytest.mark.nebula_server(models=["method-model"])
    def test_method_marker_wins_per_key(self, nebula_server):
        assert nebula_server.api_key == "class-key"
        assert set(nebula_server.models) == {"method-model"}

    def test_class_marker_alone(self, nebula_server):
        assert nebula_server.api_key == "class-key"
        assert set(nebula_server.models) == {"class-model"}


@pytest.mark.nebula_client(max_retries=0)
def test_sync_client_gets_the_marker(nebula_server, nebula_sync_client):
    nebula_server.fail_next(status=500)
    with pytest.raises(ServerError):
        nebula_sync_client.generate_text(model="module-model", prompt="Hi")
    assert len(nebula_server.requests) == 1


@pytest.mark.nebula_client(max_retries=0)
async def test_async_client_gets_the_marker(nebula_server, nebula_client):
    nebula_server.fail_next(status=500)
    with pytest.raises(ServerError):
        await nebula_client.generate_text(model="module-model", prompt="Hi")
    assert len(nebula_server.requests) == 1
"""


def test_plugin_markers_merge_and_reach_both_clients(tmp_path: Path) -> None:
    """nebula_server markers merge per key, the closest winning; nebula_client reaches both clients."""
    code, output = run_pytest(tmp_path, PLUGIN_TESTS, PLUGIN_INI, "--strict-markers")
    assert code == 0, output
    assert re.search(r"^4 passed in ", output, flags=re.MULTILINE), output


# --- 17. the CLI's --model -----------------------------------------------------------------------


def test_cli_model_name_with_a_colon_keeps_it_and_a_number_is_a_context() -> None:
    """--model llama3:8b adds "llama3:8b" with the default context; --model gpt-4:16 gives gpt-4 16 tokens."""
    args = ["--port", "0", "--quiet", "--model", "llama3:8b", "--model", "gpt-4:16"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nebula_async.testing", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(WAIT), "no banner"
        line = proc.stdout.readline()
        banner = BANNER.match(line)
        assert banner, f"no banner, got {line!r}"  # a CLI that rejected llama3:8b exits at once
        base_url = banner.group(1)
        many = " word" * 100  # well over 8 tokens: "8b" is not a context length
        assert _post(base_url, {"model": "llama3:8b", "prompt": many})[0] == 200
        status, _, answer = _post(base_url, {"model": "llama3", "prompt": "Hi"})
        assert (status, answer["error"]["code"]) == (404, "model_not_found")
        assert _post(base_url, {"model": "gpt-4", "prompt": " word" * 16})[0] == 200
        status, _, answer = _post(base_url, {"model": "gpt-4", "prompt": " word" * 17})
        assert (status, answer["error"]["code"]) == (400, "context_length_exceeded")
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)


# --- 18. a body over the cap ---------------------------------------------------------------------


def test_a_body_over_32_mib_gets_413_naming_the_body() -> None:
    """A body one byte over 32 MiB gets 413 invalid_request with details naming "body", and x-request-id."""
    with _serving() as server:
        status, headers, answer = _post(server.base_url, data=b" " * (32 * 1024 * 1024 + 1))
    assert status == 413
    assert answer["error"]["code"] == "invalid_request"
    assert set(answer["error"]["details"]) == {"body"}
    assert headers["x-request-id"].startswith("req_")
