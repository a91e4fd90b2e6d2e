"""Fixtures for the sync tests: servers in their own threads, clients pointed at them, Ctrl-C.

``fake_thread`` (a FakeNebulaServer) and ``fake_client`` serve most tests; ``threaded_server`` (the
hand-rolled ThreadedServer of _support) and ``client`` those that need what the fake can't do: hold
a call until the test releases it, count handlers cancelled and connections open, stall a stream
after a burst.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, RetryPolicy
from tests.sync._server import ThreadedServer
from tests.sync._support import KEY, LOOP_THREAD, echo_reply, loop_threads, wait_for

# The old names, until every test file imports from _support.
PORTAL_THREAD = LOOP_THREAD
portal_threads = loop_threads
echo = echo_reply


@pytest.fixture
def fake_thread() -> Iterator[FakeNebulaServer]:
    """Run a FakeNebulaServer in a thread of its own that knows the models "m" and "gpt-4" and echoes."""
    with FakeNebulaServer(models=["m", "gpt-4"], reply=echo_reply).run_in_thread() as server:
        yield server


@pytest.fixture
def fake_client(fake_thread: FakeNebulaServer) -> Iterator[NebulaClient]:
    """A NebulaClient for ``fake_thread``, with near-zero backoff; closed at teardown."""
    with NebulaClient(KEY, base_url=fake_thread.base_url, retry=RetryPolicy(initial_delay=0.001)) as c:
        yield c


@pytest.fixture
def threaded_server() -> Iterator[ThreadedServer]:
    """Start a ThreadedServer on an ephemeral port; stop it and its loop thread at teardown."""
    server = ThreadedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(threaded_server: ThreadedServer) -> Iterator[NebulaClient]:
    """A NebulaClient for the threaded server, with near-zero backoff; closed at teardown."""
    with NebulaClient(KEY, base_url=threaded_server.base_url, retry=RetryPolicy(initial_delay=0.001)) as c:
        yield c


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


@pytest.fixture(autouse=True)
def no_loop_thread_left() -> Iterator[None]:
    """Fail a test that leaves a sync client's event-loop thread running after its clients are gone."""
    before = set(loop_threads())
    yield
    gc.collect()  # a dropped client is shut down by its finalizer
    deadline = time.monotonic() + 5
    while set(loop_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(loop_threads()) - before, "a NebulaClient thread is still running after the test"
