"""Fixtures for the sync client: a server in its own thread, and a client pointed at it.

``fake_thread`` (a FakeNebulaServer) and ``fake_client`` serve most tests; ``threaded_server`` (a
hand-rolled ThreadedServer) and ``client`` those that need what the fake can't do: hold a call until
the test releases it, count handlers cancelled and connections open, stall a stream after a burst.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from nebula_async import GenerateRequest
from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, RetryPolicy
from tests.helpers import KEY
from tests.sync._server import ThreadedServer

PORTAL_THREAD = "nebula-sync"  # the name NebulaClient gives its event-loop thread


def portal_threads() -> list[threading.Thread]:
    """Return the live event-loop threads of sync clients."""
    return [t for t in threading.enumerate() if t.name == PORTAL_THREAD]


def echo(request: GenerateRequest) -> str:
    """Reply ``"echo: <prompt>"``, as the ThreadedServer does; streamed as "echo", ":", " <prompt>"."""
    return f"echo: {request.prompt}"


@pytest.fixture
def fake_thread() -> Iterator[FakeNebulaServer]:
    """Run a FakeNebulaServer in a thread of its own that knows the models "m" and "gpt-4" and echoes."""
    with FakeNebulaServer(models=["m", "gpt-4"], reply=echo).run_in_thread() as server:
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
