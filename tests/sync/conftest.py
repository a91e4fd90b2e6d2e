"""Fixtures for the sync client: a server in its own thread, and a client pointed at it."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from nebula_sync import NebulaClient, RetryPolicy
from tests.helpers import KEY
from tests.sync._server import ThreadedServer

PORTAL_THREAD = "nebula-sync"  # the name NebulaClient gives its event-loop thread


def portal_threads() -> list[threading.Thread]:
    """Return the live event-loop threads of sync clients."""
    return [t for t in threading.enumerate() if t.name == PORTAL_THREAD]


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


@pytest.fixture(autouse=True)
def no_portal_thread_left() -> Iterator[None]:
    """Fail a test that leaves a sync client's event-loop thread running after its clients are gone."""
    before = set(portal_threads())
    yield
    gc.collect()  # a dropped client is shut down by its finalizer
    deadline = time.monotonic() + 5
    while set(portal_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(portal_threads()) - before, "a NebulaClient thread is still running after the test"
