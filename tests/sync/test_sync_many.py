"""The sync generate_many: results in order, the caller's input read in the caller's thread, exits."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import (
    GenerateRequest,
    NebulaClient,
    TextGeneration,
)
from tests.sync._support import (
    CLOSED_MID_CALL,
    KEY,
    LOOP_THREAD,
    call_in_thread,
)


def test_generate_many_keeps_input_order(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """generate_many from sync code returns one result per request in input order, dicts and models mixed."""
    requests: list[Any] = [
        GenerateRequest(model="m", prompt=f"p{i}") if i % 2 else {"model": "m", "prompt": f"p{i}"}
        for i in range(40)
    ]
    results = fake_client.generate_many(iter(requests), concurrency=5)
    assert [r.text for r in results] == [f"echo: p{i}" for i in range(40)]
    assert sorted(r.json["prompt"] for r in fake_thread.requests) == sorted(f"p{i}" for i in range(40))


def test_generate_many_return_exceptions(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """With return_exceptions a bad item's error stands in its place and the others still run."""
    results = fake_client.generate_many(
        [
            {"model": "m", "prompt": "a"},
            {"model": "m", "prompt": "b", "max_tokens": 0},
            {"model": "m", "prompt": "c"},
        ],
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert "max_tokens" in str(results[1])
    assert [r.text for r in results if isinstance(r, TextGeneration)] == ["echo: a", "echo: c"]
    assert len(fake_thread.requests) == 2


def test_generate_many_reads_the_iterable_in_the_calling_thread(fake_client: NebulaClient) -> None:
    """The caller's generator runs in the caller's own thread, never in the client's event-loop thread."""
    seen: list[threading.Thread] = []

    def prompts() -> Iterator[dict[str, str]]:
        for i in range(5):
            seen.append(threading.current_thread())
            yield {"model": "m", "prompt": f"p{i}"}
        seen.append(threading.current_thread())

    results = fake_client.generate_many(prompts(), concurrency=2)
    assert [r.text for r in results] == [f"echo: p{i}" for i in range(5)]
    assert len(seen) == 6
    assert seen == [threading.current_thread()] * 6  # thread-bound inputs (a sqlite3 cursor) work


def test_base_exception_in_the_generator_reaches_the_caller_and_the_client_survives(
    fake_client: NebulaClient,
) -> None:
    """KeyboardInterrupt raised by the caller's generator propagates as is, and the client keeps working."""

    def interrupted() -> Iterator[dict[str, str]]:
        yield {"model": "m", "prompt": "p0"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fake_client.generate_many(interrupted(), concurrency=1)
    assert fake_client.generate_text(model="m", prompt="after").text == "echo: after"


def test_an_error_in_the_generator_fails_the_call_with_that_error(fake_client: NebulaClient) -> None:
    """A ValueError raised by the caller's generator is what generate_many raises."""

    def broken() -> Iterator[dict[str, str]]:
        yield {"model": "m", "prompt": "p0"}
        raise ValueError("bad row 2")

    with pytest.raises(ValueError, match="bad row 2"):
        fake_client.generate_many(broken(), concurrency=1)


def test_a_slow_generator_does_not_stall_other_threads(fake_client: NebulaClient) -> None:
    """While generate_many waits on a slow generator, a generate_text from another thread takes < 0.3 s."""
    started = threading.Event()
    exhausted = threading.Event()

    def slow_prompts() -> Iterator[dict[str, str]]:
        started.set()
        for i in range(3):
            time.sleep(0.5)  # a slow source: a database cursor, a queue, a network file
            yield {"model": "m", "prompt": f"p{i}"}
        exhausted.set()

    worker, outcome = call_in_thread(lambda: fake_client.generate_many(slow_prompts(), concurrency=2))
    try:
        assert started.wait(2)
        for i in range(3):
            begun = time.monotonic()
            assert fake_client.generate_text(model="m", prompt=f"other{i}").text == f"echo: other{i}"
            took = time.monotonic() - begun
            assert took < 0.3, f"an unrelated call waited {took:.2f} s for the batch's generator"
            time.sleep(0.1)
        assert not exhausted.is_set()  # the calls above really overlapped the slow generator
    finally:
        worker.join(10)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert [r.text for r in outcome["result"]] == ["echo: p0", "echo: p1", "echo: p2"]


def test_a_generator_that_calls_the_client_works(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer
) -> None:
    """A generate_many input generator may itself call client.generate_text for each item."""

    def seeded() -> Iterator[dict[str, str]]:
        for i in range(3):
            yield {"model": "m", "prompt": fake_client.generate_text(model="m", prompt=f"seed{i}").text}

    worker, outcome = call_in_thread(lambda: fake_client.generate_many(seeded(), concurrency=2))
    worker.join(10)
    assert not worker.is_alive(), "generate_many hung on a generator that calls the client"
    assert "error" not in outcome, outcome.get("error")
    assert [r.text for r in outcome["result"]] == [f"echo: echo: seed{i}" for i in range(3)]
    assert len(fake_thread.requests) == 6


def test_each_batch_request_is_sent_as_soon_as_its_item_is_read(fake_thread: FakeNebulaServer) -> None:
    """With a slow generator, generate_many sends each request when its item is read, not a batch later."""
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        yielded_at: list[
            float
        ] = []  # when the generator yielded each item (time.time(), as the fake records)

        def slow_prompts() -> Iterator[dict[str, str]]:
            for i in range(3):
                time.sleep(0.2)
                yielded_at.append(time.time())
                yield {"model": "m", "prompt": f"p{i}"}

        results = client.generate_many(slow_prompts())  # the default concurrency, 16, exceeds the input
    assert [r.text for r in results] == ["echo: p0", "echo: p1", "echo: p2"]
    # How many items the generator had yielded when each request arrived: the first, one.
    sent = [sum(at <= request.time for at in yielded_at) for request in fake_thread.requests]
    assert sent[0] == 1, f"the first request waited until {sent[0]} items were read"


def test_close_does_not_wait_for_a_blocked_input_generator(fake_thread: FakeNebulaServer) -> None:
    """close() returns in < 1 s while generate_many's thread waits in its generator; the call then fails."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    gate = threading.Event()
    waiting = threading.Event()

    def queue_fed() -> Iterator[dict[str, str]]:
        waiting.set()
        gate.wait(10)  # say, queue.get() on a queue nobody feeds any more
        yield {"model": "m", "prompt": "late"}

    def close() -> None:
        client.close()
        outcome["closed_in"] = time.monotonic() - started

    worker, outcome = call_in_thread(lambda: client.generate_many(queue_fed(), concurrency=1), daemon=True)
    assert waiting.wait(2)
    time.sleep(0.05)
    started = time.monotonic()
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    try:
        closer.join(1.0)
        assert not closer.is_alive(), "close() is waiting for the caller's generator to yield"
        # The generator runs in the caller's own thread, so the call can only end once it yields.
        gate.set()
        worker.join(2.0)
        assert isinstance(outcome.get("error"), RuntimeError), outcome
        assert CLOSED_MID_CALL in str(outcome["error"])
    finally:
        gate.set()  # let the generator go, so a failing run still ends its threads
        closer.join(5)
        worker.join(5)
    assert fake_thread.requests == []


@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("items_before", [0, 1], ids=["at-the-first-item", "after-an-item"])
def test_system_exit_in_the_generator_propagates_and_the_client_survives(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, concurrency: int, items_before: int
) -> None:
    """SystemExit raised by the caller's generator reaches the caller as is, and the client keeps working."""

    def requests() -> Iterator[dict[str, str]]:
        for i in range(items_before):
            yield {"model": "m", "prompt": f"p{i}"}
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        fake_client.generate_many(requests(), concurrency=concurrency)
    assert info.value.code == 3
    assert fake_client.closed is False
    assert fake_client.generate_text(model="m", prompt="after").text == "echo: after"
    assert fake_thread.requests[-1].json["prompt"] == "after"
    assert len(fake_thread.requests) <= items_before + 1  # the items read before, and "after"


@pytest.mark.parametrize("exit_exception", [SystemExit(3), KeyboardInterrupt()])
def test_exit_raised_by_an_async_generator_reaches_the_caller_and_the_client_survives(
    fake_thread: FakeNebulaServer, exit_exception: BaseException
) -> None:
    """SystemExit or Ctrl-C from an async generator given to sync generate_many reaches the caller as is."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    try:

        async def prompts() -> AsyncIterator[dict[str, str]]:
            yield {"model": "m", "prompt": "p0"}
            raise exit_exception

        with pytest.raises(type(exit_exception)):
            client.generate_many(prompts(), concurrency=1)
        assert not client.closed
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
    finally:
        client.close()


def test_an_async_generator_is_read_in_the_loop(fake_client: NebulaClient) -> None:
    """An async generator given to sync generate_many runs in the client's loop; results keep its order."""
    threads: list[str] = []

    async def prompts() -> AsyncIterator[dict[str, str]]:
        for i in range(4):
            threads.append(threading.current_thread().name)
            yield {"model": "m", "prompt": f"p{i}"}

    results = fake_client.generate_many(prompts(), concurrency=2)
    assert [r.text for r in results] == [f"echo: p{i}" for i in range(4)]
    assert set(threads) == {LOOP_THREAD}


@pytest.mark.parametrize(
    ("requests", "kwargs", "error"),
    [
        ("not a list", {}, TypeError),
        ({"model": "m", "prompt": "p"}, {}, TypeError),
        ([], {"concurrency": 0}, ValueError),
        ([], {"concurrency": True}, TypeError),
    ],
    ids=["str", "dict", "concurrency-0", "concurrency-bool"],
)
def test_bad_input_or_concurrency_raises(
    fake_client: NebulaClient,
    fake_thread: FakeNebulaServer,
    requests: Any,
    kwargs: dict[str, Any],
    error: type,
) -> None:
    """A str or dict for requests, or a concurrency that isn't an int >= 1, raises before anything is sent."""
    with pytest.raises(error):
        fake_client.generate_many(requests, **kwargs)
    assert fake_thread.requests == []
