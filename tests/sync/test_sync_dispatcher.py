"""The sync client's one-hop dispatcher: a call's failure stays its own; close() ends every call cleanly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import threading
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient
from tests.helpers import KEY
from tests.sync._server import call_in_thread, wait_for
from tests.sync.test_sync_exit import expect_clean_exit


async def _requests_awaiting_a_cancelled_future() -> AsyncIterator[dict[str, Any]]:
    """An input generator that awaits a future someone else gave up on: a CancelledError of its own."""
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)
    await future
    yield {"model": "m", "prompt": "never sent"}  # pragma: no cover - the await above raises


def test_a_stray_cancellation_in_one_call_spares_the_others(fake_thread: FakeNebulaServer) -> None:
    """A call ending in its own CancelledError fails alone: another thread's call and later calls succeed."""
    with NebulaClient(KEY, base_url=fake_thread.base_url, max_retries=0) as client:
        fake_thread.delay_next(1, seconds=0.5)
        other: dict[str, object] = {}

        def slow_call() -> None:
            other["text"] = client.generate_text(model="m", prompt="other thread").text

        thread = threading.Thread(target=slow_call)
        thread.start()
        time.sleep(0.15)  # the slow call is running in the loop
        with pytest.raises(concurrent.futures.CancelledError):
            client.generate_many(_requests_awaiting_a_cancelled_future())
        thread.join(5)
        assert other == {"text": "echo: other thread"}
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
        assert not client.closed


def test_a_call_cancelled_before_the_loop_takes_it_never_runs(fake_thread: FakeNebulaServer) -> None:
    """Cancelled while the loop is busy: the call's coroutine never starts, and nothing of it is kept."""
    started: list[str] = []

    async def block_the_loop() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - blocking on purpose: the loop can't take the next call meanwhile

    async def must_not_run() -> None:
        started.append("ran")  # pragma: no cover - the point is that this never runs

    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        blocker, outcome = call_in_thread(lambda: client._run(block_the_loop))
        time.sleep(0.1)  # the loop is now inside block_the_loop
        dispatcher = client._dispatcher
        future = dispatcher.submit(must_not_run)
        dispatcher.cancel(future)
        blocker.join(5)
        assert outcome == {"result": None}
        assert future.cancelled()
        assert wait_for(lambda: not dispatcher._calls)
        assert started == []
        assert client.generate_text(model="m", prompt="after").text == "echo: after"


@pytest.mark.parametrize("exit_exception", [SystemExit(4), KeyboardInterrupt()])
def test_an_exit_raised_in_the_loop_reaches_the_caller_and_the_loop_goes_on(
    fake_thread: FakeNebulaServer, exit_exception: BaseException
) -> None:
    """SystemExit or KeyboardInterrupt raised in a call is raised in the caller's thread, not the loop's."""

    async def exits() -> None:
        raise exit_exception

    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        with pytest.raises(type(exit_exception)) as info:
            client._run(exits)
        assert info.value is exit_exception
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
        assert not client._dispatcher._calls


def test_close_ends_every_running_call_and_keeps_none(fake_thread: FakeNebulaServer) -> None:
    """close() with calls in flight in several threads: each fails at once with RuntimeError; none is kept."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url, max_retries=0)
    fake_thread.delay_next(3, seconds=5)
    calls = [call_in_thread(lambda: client.generate_text(model="m", prompt="p")) for _ in range(3)]
    assert wait_for(lambda: len(client._dispatcher._calls) == 3 and all(client._dispatcher._calls.values()))
    started = time.monotonic()
    client.close()
    for thread, _ in calls:
        thread.join(5)
    assert time.monotonic() - started < 2.0
    for _, outcome in calls:
        assert isinstance(outcome.get("error"), RuntimeError), outcome
        assert "closed while the call was running" in str(outcome["error"])
    assert client._dispatcher._calls == {}


def test_a_call_after_close_fails_at_once(fake_thread: FakeNebulaServer) -> None:
    """A call made after close() raises RuntimeError saying so, and leaves nothing pending."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.generate_text(model="m", prompt="p")
    assert client._dispatcher._calls == {}


def test_a_chunk_dropped_by_a_close_from_another_thread_is_a_clear_error(
    fake_thread: FakeNebulaServer,
) -> None:
    """A close() between the loop buffering a chunk and the caller taking it: RuntimeError, not an assert."""
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        stream = client.stream_text(model="m", prompt="a b c")
        inner = stream._stream
        fill = inner._fill

        async def fill_then_closed() -> bool:
            filled = await fill()
            inner._close()  # what a close() from another thread does, at the worst moment
            return filled

        inner._fill = fill_then_closed  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="stream was closed while it was being read"):
            next(stream)
        stream.close()
        assert client.generate_text(model="m", prompt="after").text == "echo: after"


def test_closing_a_stream_while_another_thread_closes_the_client_closes_it_quietly(
    fake_thread: FakeNebulaServer,
) -> None:
    """stream.close() while another thread closes the client: its connection closes, no ResourceWarning."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    stream = client.stream_text(model="m", prompt="a b c d")
    next(stream)  # the response is open, half read
    inner = [stream._stream]  # in a list, to be dropped before the garbage collection below
    close_pool = client._async.aclose

    async def slow_close() -> None:
        await asyncio.sleep(0.5)
        await close_pool()

    client._async.aclose = slow_close  # type: ignore[method-assign]
    closer, outcome = call_in_thread(client.close)
    assert wait_for(lambda: client.closed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ResourceWarning from the stream's __del__ would fail the test
        stream.close()
        # Closed by the loop long before the client's own close gets to it (0.5 s from now).
        assert wait_for(lambda: inner[0]._response is None, timeout=0.3)
        del stream
        inner.clear()
        gc.collect()
    closer.join(5)
    assert outcome == {"result": None}


_FREED_DURING_CLOSE = """\
import gc
from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient

server = FakeNebulaServer(models=["m"]).start()
client = NebulaClient("sk-test", base_url=server.base_url)
stream = client.stream_text(model="m", prompt="a b c d")
next(stream)

class Holder:  # your object that releases its stream when dropped, in a reference cycle
    def __init__(self, stream):
        self.stream, self.me = stream, self

    def __del__(self):
        self.stream.close()
        print("stream closed in __del__")

gc.collect()
gc.disable()
Holder(stream)
del stream
gc.set_threshold(1)  # the next allocations, inside close(), collect it
gc.enable()
client.close()
print("close() returned")
server.stop()
"""


def test_a_stream_closed_by_an_object_freed_inside_close_does_not_hang_it() -> None:
    """A __del__ closing a stream, run by the cyclic GC inside client.close() in its thread: no deadlock."""
    expect_clean_exit(_FREED_DURING_CLOSE, "stream closed in __del__\nclose() returned\n")


async def _swallows_one_cancel() -> None:
    """A call that shrugs off one cancellation, as aiohttp does when it lands with its own timeout."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    await asyncio.sleep(10)


def test_close_is_prompt_when_a_call_swallows_a_cancellation(fake_thread: FakeNebulaServer) -> None:
    """close() cancels until the call ends: it returns at once, and the caller gets the "closed" error."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    caller, outcome = call_in_thread(lambda: client._run(_swallows_one_cancel))
    assert wait_for(lambda: len(client._dispatcher._calls) == 1 and all(client._dispatcher._calls.values()))
    started = time.monotonic()
    client.close()
    caller.join(5)
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome.get("error"), RuntimeError), outcome
    assert "closed while the call was running" in str(outcome["error"])


def test_cancelling_a_call_that_swallows_a_cancellation_still_ends_it(fake_thread: FakeNebulaServer) -> None:
    """The caller's cancel (Ctrl-C) is delivered again until the call's task has ended."""
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        dispatcher = client._dispatcher
        future = dispatcher.submit(_swallows_one_cancel)
        assert wait_for(lambda: dispatcher._calls.get(future) is not None)
        dispatcher.cancel(future)
        assert wait_for(lambda: not dispatcher._calls, timeout=1.0)
        assert future.cancelled()
