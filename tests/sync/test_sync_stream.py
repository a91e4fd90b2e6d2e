"""The sync TextStream: iterating, closing (from any thread, after the client), retries, hops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import textwrap
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from nebula_async.testing import FakeNebulaServer
from nebula_sync import (
    NebulaClient,
    Usage,
)
from nebula_sync._runtime import LoopThread
from tests.helpers import expect_clean_exit
from tests.sync._support import (
    KEY,
    PRELUDE,
    ThreadedServer,
    call_in_thread,
    echo,
    sse,
    stalled_stream,
    wait_for,
)


def test_stream_as_context_manager(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """A stream used with ``with`` yields the server's chunks and ends with its text and finish reason."""
    stream = fake_client.stream_text(model="m", prompt="héllo")
    assert fake_thread.requests == []  # nothing is sent before the stream is entered
    with stream as entered:
        assert entered is stream
        assert len(fake_thread.requests) == 1
        chunks = [(chunk.text, chunk.finish_reason) for chunk in stream]
    assert chunks == [("echo", None), (":", None), (" héllo", "stop")]
    assert stream.text == "echo: héllo"
    assert stream.finish_reason == "stop"
    assert stream.request_id == fake_thread.requests[0].request_id
    assert stream.retries == 0
    assert [r.json for r in fake_thread.requests] == [{"model": "m", "prompt": "héllo", "stream": True}]


def test_stream_as_plain_iterator_releases_its_connection(fake_thread: FakeNebulaServer) -> None:
    """A stream iterated to its end with a plain ``for`` hands its only connection back for the next call."""
    with NebulaClient(KEY, base_url=fake_thread.base_url, max_connections=1, timeout=5) as client:
        stream = client.stream_text(model="m", prompt="a")
        assert [chunk.text for chunk in stream] == ["echo", ":", " a"]
        assert stream.finish_reason == "stop"
        assert list(stream) == []  # an ended stream stays ended
        started = time.monotonic()
        assert client.generate_text(model="m", prompt="next").text == "echo: next"
        assert time.monotonic() - started < 1.0


def test_break_inside_with_releases_the_connection(threaded_server: ThreadedServer) -> None:
    """Breaking out of a stream after 3 chunks inside ``with`` frees the only connection at once."""
    threaded_server.behaviour = stalled_stream(events=5)  # 5 chunks, then the server stalls
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1, timeout=5) as client:
        with client.stream_text(model="m", prompt="p") as stream:
            for n, _chunk in enumerate(stream, 1):
                if n == 3:
                    break
        assert stream.text == "w0 w1 w2 "
        assert stream.finish_reason is None
        started = time.monotonic()
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
        assert time.monotonic() - started < 1.0
        # The server saw the stream's connection go away: its handler was cancelled.
        deadline = time.monotonic() + 2
        while threaded_server.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threaded_server.cancelled == 1


def test_a_stream_closed_early_cannot_be_iterated_again(
    client: NebulaClient, threaded_server: ThreadedServer
) -> None:
    """After leaving ``with`` early the next iteration raises RuntimeError, even with chunks already read."""
    threaded_server.behaviour = stalled_stream(events=5)  # all 5 chunks arrive in one read
    with client.stream_text(model="m", prompt="p") as stream:
        next(stream)
    with pytest.raises(RuntimeError, match="closed before its end"):
        next(stream)
    assert stream.text == "w0 "


def test_stream_is_retried_before_its_first_chunk(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer
) -> None:
    """A stream whose first attempt gets a 429 is retried and then read whole."""
    fake_thread.fail_next(status=429, code="rate_limit_exceeded", retry_after=0)
    with fake_client.stream_text(model="m", prompt="p") as stream:
        assert [chunk.text for chunk in stream] == ["echo", ":", " p"]
    assert stream.retries == 1
    assert len(fake_thread.requests) == 2


def test_a_forgotten_half_read_stream_warns_and_is_released(threaded_server: ThreadedServer) -> None:
    """A sync stream dropped half-read and never closed warns ResourceWarning and frees its connection."""
    threaded_server.behaviour = stalled_stream(events=3)
    with NebulaClient(KEY, base_url=threaded_server.base_url, max_connections=1, timeout=5) as client:
        stream = client.stream_text(model="m", prompt="p")
        assert next(stream).text == "w0 "
        with pytest.warns(ResourceWarning, match="TextStream was not closed"):
            del stream  # its last reference: CPython collects it here
        started = time.monotonic()
        assert client.generate_text(model="m", prompt="next").text == "echo: next"
        assert time.monotonic() - started < 1.0


def test_closing_a_finished_stream_after_the_client_is_a_no_op(threaded_server: ThreadedServer) -> None:
    """A stream read to its end can still be closed, and left by ``with``, after client.close()."""
    client = NebulaClient(KEY, base_url=threaded_server.base_url)
    stream = client.stream_text(model="m", prompt="p")
    assert [chunk.text for chunk in stream] == ["echo", ": ", "p"]
    with client.stream_text(model="m", prompt="q") as in_with:
        assert in_with.text == ""
        assert [chunk.text for chunk in in_with] == ["echo", ": ", "q"]
        client.close()
    stream.close()
    stream.close()
    assert stream.text == "echo: p"
    assert stream.finish_reason == "stop"
    assert wait_for(lambda: threaded_server.open_connections == 0)


def test_client_close_closes_a_half_read_stream(threaded_server: ThreadedServer) -> None:
    """client.close() drops a half-read stream's connection; closing the stream afterwards is a no-op."""
    threaded_server.behaviour = stalled_stream(events=3)
    client = NebulaClient(KEY, base_url=threaded_server.base_url, timeout=5)
    stream = client.stream_text(model="m", prompt="p")
    assert next(stream).text == "w0 "
    assert threaded_server.open_connections == 1
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    # The server sees the connection go away while its handler still waits to finish the stream.
    assert wait_for(lambda: threaded_server.open_connections == 0)
    assert wait_for(lambda: threaded_server.cancelled == 1)
    stream.close()
    stream.close()


def test_closing_a_half_read_stream_after_the_client_is_quiet_at_exit() -> None:
    """In dev mode, stream.close() after client.close() on a half-read stream prints nothing and exits 0."""
    code = PRELUDE + textwrap.dedent(
        """\
        server.behaviour = stalled_stream(events=3)
        client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
        stream = client.stream_text(model="gpt-4", prompt="hi")
        print(next(stream).text)
        client.close()
        stream.close()
        del stream
        import gc
        gc.collect()
        print("closed")
        """
    )
    expect_clean_exit(code, "w0 \nclosed\n", "-X", "dev")


async def _stubborn(seconds: float) -> None:
    """Shrug off every cancellation for ``seconds``: a client.close() waits that long for this call."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(deadline - time.monotonic())


def test_closing_a_stream_while_another_thread_closes_the_client_closes_it_quietly(
    threaded_server: ThreadedServer,
) -> None:
    """stream.close() while another thread closes the client: its connection closes, no ResourceWarning."""
    threaded_server.behaviour = stalled_stream(events=3)
    client = NebulaClient(KEY, base_url=threaded_server.base_url)
    stream = client.stream_text(model="m", prompt="p")
    next(stream)  # the response is open, half read
    stubborn, stubborn_outcome = call_in_thread(lambda: client._run(_stubborn, 0.5))
    time.sleep(0.05)
    closer, outcome = call_in_thread(client.close)  # waits 0.5 s for the stubborn call
    assert wait_for(lambda: client.closed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ResourceWarning from the stream's __del__ would fail the test
        stream.close()  # handed to the loop, not waited for: it must not wait for the client's close
        # Closed by the loop long before the client's own close gets to it (0.5 s from now).
        assert wait_for(lambda: threaded_server.open_connections == 0, timeout=0.3)
        del stream
        gc.collect()
    closer.join(5)
    stubborn.join(5)
    assert outcome == {"result": None}
    assert stubborn_outcome == {"result": None}  # it shrugged off every cancel and ended by itself


def test_a_stream_closed_from_another_thread_while_it_waits_fails_clearly(
    client: NebulaClient, threaded_server: ThreadedServer
) -> None:
    """close() from another thread while the reader waits on the network: the reader gets RuntimeError."""
    threaded_server.behaviour = stalled_stream(events=1)
    stream = client.stream_text(model="m", prompt="p")
    assert next(stream).text == "w0 "
    reader, outcome = call_in_thread(lambda: next(stream))
    time.sleep(0.1)  # the reader is waiting for the server's next event
    stream.close()
    reader.join(2)
    assert not reader.is_alive()
    assert isinstance(outcome.get("error"), RuntimeError), outcome
    assert "closed while it was being read" in str(outcome["error"])
    assert stream.text == "w0 "
    assert client.generate_text(model="m", prompt="after").text == "echo: after"


def test_text_and_finish_reason_describe_the_chunks_delivered(fake_client: NebulaClient) -> None:
    """A read that brings every event at once still shows only what next() returned so far."""
    with fake_client.stream_text(model="m", prompt="one two three") as stream:
        first = next(stream)
        assert stream.text == first.text
        assert stream.finish_reason is None  # the final event is read, but not delivered yet
        rest = list(stream)
    assert rest[-1].finish_reason == "stop"
    assert stream.text == "echo: one two three"
    assert stream.finish_reason == "stop"


async def _with_usage(
    server: ThreadedServer, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Stream "Hi" and "!", the final event carrying usage, as the reference's streaming example ends."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    # One write, so that both events reach the client in one read.
    await response.write(
        sse({"text": "Hi", "finish_reason": None}, {"text": "!", "finish_reason": "stop", "usage": usage})
    )
    await response.write_eof()
    return response


def test_usage_comes_from_the_event_that_carried_it(
    client: NebulaClient, threaded_server: ThreadedServer
) -> None:
    """usage is None until the chunk that carried it was delivered, then a Usage; without one, None."""
    threaded_server.behaviour = _with_usage
    with client.stream_text(model="m", prompt="p") as stream:
        first = next(stream)  # both chunks came in one read: the last one waits in this thread
        assert (first.text, stream.usage) == ("Hi", None)
        assert next(stream).text == "!"
    assert stream.usage == Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    threaded_server.behaviour = echo
    with client.stream_text(model="m", prompt="p") as plain:
        assert "".join(chunk.text for chunk in plain) == "echo: p"
    assert plain.usage is None


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


EVENTS = 1000

TEXTS = [f" {i}," for i in range(EVENTS // 2)]  # two tokens each: " 0" and ","


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap LoopThread.run, every sync call's one way into its event loop; return what went through it."""
    hops: list[str] = []
    real_run = LoopThread.run

    def counting_run(self: LoopThread, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return real_run(self, fn, *args, **kwargs)

    monkeypatch.setattr(LoopThread, "run", counting_run)
    return hops


def _burst(fake: FakeNebulaServer) -> None:
    """Make the fake answer "p" with EVENTS events; without a token_delay it sends them in one write."""
    fake.replies["p"] = "".join(TEXTS)
    assert fake.token_delay == 0


def test_a_burst_of_events_takes_a_handful_of_hops(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1000 events sent in one write are all delivered in order with far fewer than 1000 loop hops."""
    _burst(fake_thread)
    hops = _count_hops(monkeypatch)
    with fake_client.stream_text(model="m", prompt="p", max_tokens=EVENTS) as stream:
        chunks = list(stream)
    assert [chunk.text for chunk in chunks] == [piece for text in TEXTS for piece in (text[:-1], ",")]
    assert [chunk.finish_reason for chunk in chunks[-2:]] == [None, "stop"]
    assert stream.text == "".join(TEXTS)
    assert stream.finish_reason == "stop"
    # Enter, a few reads (one write may reach us in several socket reads), the end, close.
    assert len(hops) <= 12, hops
    assert hops.count("next_chunks") <= 8, hops


def test_a_plain_iterator_also_takes_a_handful_of_hops(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iterating a stream without ``with`` batches its hops too, and ends with the whole text."""
    _burst(fake_thread)
    hops = _count_hops(monkeypatch)
    stream = fake_client.stream_text(model="m", prompt="p", max_tokens=EVENTS)
    count = sum(1 for _ in stream)
    assert count == EVENTS
    assert stream.finish_reason == "stop"
    assert stream.text == "".join(TEXTS)
    assert len(hops) <= 10, hops
