"""Interrupting (Ctrl-C) and closing the sync client while calls are in flight in other threads.

The hand-rolled ThreadedServer holds calls until released and counts the handlers cancelled when a
client goes away, which the FakeNebulaServer doesn't; it serves the rest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from nebula_async.testing import FakeNebulaServer
from nebula_sync import (
    NebulaClient,
    RetryPolicy,
)
from tests.sync._support import (
    CLOSED_MID_CALL,
    KEY,
    ThreadedServer,
    call_in_thread,
    echo,
    error_body,
    loop_threads,
    slow,
    stalled_stream,
    wait_for,
)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


def _loop_tasks(client: NebulaClient) -> int:
    """Count the tasks alive in the client's event loop, asked from inside that loop."""
    return client._run(_count_tasks)


def test_keyboard_interrupt_cancels_the_call_underneath(
    threaded_server: ThreadedServer, interrupt_main: Callable[[Callable[[], bool]], None]
) -> None:
    """Ctrl-C in a blocked call raises KeyboardInterrupt at once, cancels the async call, leaves no task."""
    threaded_server.behaviour = slow
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1) as client:
        idle_tasks = _loop_tasks(client)
        interrupt_main(lambda: threaded_server.request_count == 1)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.generate_text(model="m", prompt="p")
        assert time.monotonic() - started < 2.0
        # The request's connection was closed: the server's handler saw the cancellation.
        assert wait_for(lambda: threaded_server.cancelled == 1)
        assert wait_for(lambda: _loop_tasks(client) == idle_tasks)
        # The only pooled connection is free again, and the client still works.
        threaded_server.release()
        assert client.generate_text(model="m", prompt="again").text == "echo: again"


def test_keyboard_interrupt_during_a_stream_releases_it(
    threaded_server: ThreadedServer, interrupt_main: Callable[[Callable[[], bool]], None]
) -> None:
    """Ctrl-C while a stream waits for its next chunk releases the stream's connection and leaves no task."""
    threaded_server.behaviour = stalled_stream(events=2)
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1, timeout=5) as client:
        idle_tasks = _loop_tasks(client)
        got: list[str] = []
        interrupt_main(lambda: len(got) == 2)

        def read_all() -> None:
            with client.stream_text(model="m", prompt="p") as stream:
                for chunk in stream:
                    got.append(chunk.text)

        with pytest.raises(KeyboardInterrupt):
            read_all()
        assert got == ["w0 ", "w1 "]
        assert wait_for(lambda: threaded_server.cancelled == 1)
        assert wait_for(lambda: _loop_tasks(client) == idle_tasks)
        started = time.monotonic()
        assert client.generate_text(model="m", prompt="next").text == "echo: next"
        assert time.monotonic() - started < 1.0


def test_close_is_prompt_while_a_call_waits_on_the_server(threaded_server: ThreadedServer) -> None:
    """close() returns at once while another thread's call waits on a silent server; that call fails."""
    threaded_server.behaviour = slow
    client = NebulaClient(KEY, base_url=threaded_server.base_url, retry=RetryPolicy(initial_delay=0.001))
    worker, outcome = call_in_thread(lambda: client.generate_text(model="m", prompt="p"))
    assert wait_for(lambda: threaded_server.request_count == 1)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    worker.join(2)
    assert not worker.is_alive()
    assert "result" not in outcome
    # The pending call ends with an error the caller can understand, not a hang.
    assert isinstance(outcome["error"], RuntimeError)
    assert "closed while the call was running" in str(outcome["error"])
    assert wait_for(lambda: threaded_server.cancelled == 1)


def test_close_is_prompt_while_a_call_waits_to_retry(fake_thread: FakeNebulaServer) -> None:
    """close() returns at once while another thread's call sleeps before a retry (Retry-After: 3)."""
    fake_thread.fail_next(3, status=429, code="rate_limit_exceeded", retry_after=3)
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    worker, outcome = call_in_thread(lambda: client.generate_text(model="m", prompt="p"), daemon=True)
    assert wait_for(lambda: len(fake_thread.requests) == 1)
    time.sleep(0.1)  # the call is now sleeping out the Retry-After
    started = time.monotonic()
    client.close()
    elapsed = time.monotonic() - started
    worker.join(10)
    assert elapsed < 1.0, f"close() waited {elapsed:.1f} s for a pending retry sleep"
    assert isinstance(outcome.get("error"), RuntimeError)
    assert "closed while the call was running" in str(outcome["error"])
    assert len(fake_thread.requests) == 1  # no retry was sent after close()


async def _by_prompt(
    server: ThreadedServer, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Answer "retry" with 503, Retry-After: 5; "slow" once released; a stream with one event, then stall.

    503, not 429: a 429 closes the client-wide rate-limit gate, which would hold the other calls unsent.
    """
    if body.get("stream"):
        return await stalled_stream(events=1)(server, request, body)
    if body.get("prompt") == "retry":
        return web.json_response(error_body("overloaded"), status=503, headers={"Retry-After": "5"})
    if body.get("prompt") == "slow":
        await server.wait_released()
    return await echo(server, request, body)


def test_close_ends_every_running_call_promptly(threaded_server: ThreadedServer) -> None:
    """close() returns in < 1 s while 5 threads are mid-call, and each call raises "closed while running"."""
    threaded_server.behaviour = _by_prompt
    client = NebulaClient(KEY, base_url=threaded_server.base_url)
    chunks: list[str] = []

    def read_stream() -> None:
        with client.stream_text(model="m", prompt="s") as stream:
            for chunk in stream:
                chunks.append(chunk.text)

    calls: dict[str, Callable[[], object]] = {
        "retry-1": lambda: client.generate_text(model="m", prompt="retry"),
        "retry-2": lambda: client.generate_text(model="m", prompt="retry"),
        "slow": lambda: client.generate_text(model="m", prompt="slow"),
        "stream": read_stream,
        "batch": lambda: client.generate_many(
            [{"model": "m", "prompt": "retry"}, {"model": "m", "prompt": "slow"}]
        ),
    }
    outcomes: dict[str, tuple[object, float]] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            result: object = call()
        except BaseException as exc:  # whatever it is, the test inspects it
            result = exc
        outcomes[name] = (result, time.monotonic())

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: threaded_server.request_count == 6 and chunks == ["w0 "])
    time.sleep(0.1)  # the 429s are now being slept out
    started = time.monotonic()
    client.close()
    closed_in = time.monotonic() - started
    for thread in threads:
        thread.join(max(0.1, started + 3 - time.monotonic()))
    assert closed_in < 1.0, f"close() took {closed_in:.1f} s"
    assert not [t.name for t in threads if t.is_alive()]
    for name, (result, ended) in outcomes.items():
        assert isinstance(result, RuntimeError), (name, result)
        # Every call still running, a stream's wait for its next chunk too, is ended before the pool closes.
        assert CLOSED_MID_CALL in str(result), (name, result)
        assert ended - started < 1.0, f"{name} ended {ended - started:.1f} s after close()"
    assert sorted(outcomes) == sorted(calls)
    time.sleep(0.1)
    assert threaded_server.request_count == 6  # no retry was sent after close()


def _race_close(base_url: str) -> None:
    """Start 8 threads calling in a loop, close the client once each has an answer, check how all ended."""
    client = NebulaClient(KEY, base_url=base_url, retry=RetryPolicy(initial_delay=0.001))
    results: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException | None] = [None] * 8

    def hammer(index: int) -> None:
        while True:
            try:
                results[index].append(client.generate_text(model="m", prompt=str(index)).text)
            except BaseException as exc:  # whatever it is, the test inspects it
                errors[index] = exc
                return

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: all(results))
    client.close()
    deadline = time.monotonic() + 5
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "a call hung across close()"
    for index, error in enumerate(errors):
        assert isinstance(error, RuntimeError), error
        assert "closed" in str(error), error
        assert set(results[index]) == {f"echo: {index}"}
    assert loop_threads() == []


def test_threads_racing_close_all_end(fake_thread: FakeNebulaServer) -> None:
    """8 threads calling in a loop while close() runs all end with results and a RuntimeError, 10 rounds."""
    for _ in range(10):
        _race_close(fake_thread.base_url)
