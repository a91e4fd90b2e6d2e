"""Interrupting and closing the sync client while a call is in flight.

The hand-rolled ThreadedServer holds calls until released and counts the handlers cancelled when a
client goes away, which the FakeNebulaServer doesn't; it serves the rest.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, RetryPolicy
from tests.helpers import KEY
from tests.sync._server import ThreadedServer, call_in_thread, slow, stalled_stream, wait_for


def _portal_tasks(client: NebulaClient) -> int:
    """Count the tasks alive in the client's event loop, asked from inside that loop."""
    return client._portal.call(lambda: len(asyncio.all_tasks()))


@pytest.fixture
def interrupt_main() -> Iterator[Callable[[Callable[[], bool]], None]]:
    """Return a function that, from a helper thread, sends SIGINT to the main thread once ``condition()``."""
    assert threading.current_thread() is threading.main_thread()  # SIGINT lands in the main thread only
    # A process started in the background by a non-interactive shell (as some CI runners do)
    # inherits SIGINT as ignored: install Python's handler so Ctrl-C is what is tested.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threads: list[threading.Thread] = []

    def arm(condition: Callable[[], bool]) -> None:
        def fire() -> None:
            if wait_for(condition, 5.0):
                time.sleep(0.05)  # let the caller settle into its blocking wait
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]  # the main thread has an ident

        thread = threading.Thread(target=fire, daemon=True)
        threads.append(thread)
        thread.start()

    try:
        yield arm
    finally:
        for thread in threads:
            thread.join(5)
        signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_cancels_the_call_underneath(
    threaded_server: ThreadedServer, interrupt_main: Callable[[Callable[[], bool]], None]
) -> None:
    """Ctrl-C in a blocked call raises KeyboardInterrupt at once, cancels the async call, leaves no task."""
    threaded_server.behaviour = slow
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1) as client:
        idle_tasks = _portal_tasks(client)
        interrupt_main(lambda: threaded_server.request_count == 1)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.generate_text(model="m", prompt="p")
        assert time.monotonic() - started < 2.0
        # The request's connection was closed: the server's handler saw the cancellation.
        assert wait_for(lambda: threaded_server.cancelled == 1)
        assert wait_for(lambda: _portal_tasks(client) == idle_tasks)
        # The only pooled connection is free again, and the client still works.
        threaded_server.release()
        assert client.generate_text(model="m", prompt="again").text == "echo: again"


def test_keyboard_interrupt_during_a_stream_releases_it(
    threaded_server: ThreadedServer, interrupt_main: Callable[[Callable[[], bool]], None]
) -> None:
    """Ctrl-C while a stream waits for its next chunk releases the stream's connection and leaves no task."""
    threaded_server.behaviour = stalled_stream(events=2)
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1, timeout=5) as client:
        idle_tasks = _portal_tasks(client)
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
        assert wait_for(lambda: _portal_tasks(client) == idle_tasks)
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
