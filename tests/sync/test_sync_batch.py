"""The sync client's as_completed and run_batch: the caller's thread, early exits and Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, Outcome
from tests.sync._support import KEY, ThreadedServer, slow, wait_for

Arm = Callable[[Callable[[], bool]], None]


async def _pool_tasks() -> int:
    coroutines = [t.get_coro() for t in asyncio.all_tasks()]
    return sum(1 for coro in coroutines if "_Pool._work" in getattr(coro, "__qualname__", ""))


def pool_tasks(client: NebulaClient) -> int:
    """Count as_completed's worker tasks alive in the client's loop."""
    return client._run(_pool_tasks)


def write_input(path: Path, count: int) -> Path:
    """Write ``count`` prompt lines p1..pN, ids 1..N."""
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(1, count + 1)))
    return path


def test_a_plain_iterable_is_read_in_the_callers_thread(fake_client: NebulaClient) -> None:
    """The caller's generator runs in the caller's thread, never far ahead of the outcomes taken."""
    readers: set[int] = set()
    read = 0

    def items() -> Iterator[dict[str, str]]:
        nonlocal read
        for i in range(50):
            readers.add(threading.get_ident())
            read += 1
            yield {"model": "m", "prompt": f"p{i}"}

    got: list[Outcome] = []
    with fake_client.as_completed(items(), concurrency=4) as outcomes:
        for outcome in outcomes:
            assert read - len(got) <= 4 + 1
            got.append(outcome)
    assert readers == {threading.get_ident()}
    assert sorted(o.index for o in got) == list(range(50))
    assert all(o.result is not None and o.result.text == f"echo: p{o.index}" for o in got)


def test_a_slow_generator_gets_each_result_without_waiting_for_more_items(
    fake_thread: FakeNebulaServer,
) -> None:
    """Each item read is sent at once, and its outcome comes back before a slow input is read to the end."""
    # Broke: concurrency items (or the whole input) were read before any was sent or any outcome
    # came back: five items 0.3 s apart gave their first result after 1.5 s, all five at once.
    yielded_at: list[float] = []  # time.time(), as the fake records each request's arrival

    def slow_prompts() -> Iterator[dict[str, str]]:
        for i in range(5):
            yielded_at.append(time.time())
            yield {"model": "m", "prompt": f"p{i}"}
            time.sleep(0.3)

    got_at: list[float] = []
    with (
        NebulaClient(KEY, base_url=fake_thread.base_url) as client,
        client.as_completed(slow_prompts(), concurrency=16) as outcomes,
    ):
        for _ in outcomes:
            got_at.append(time.time())
    # How many items the generator had yielded when each request arrived: the first, one.
    sent = [sum(at <= request.time for at in yielded_at) for request in fake_thread.requests]
    assert sent[0] == 1, f"the first request waited until {sent[0]} items were read"
    # The first outcome is taken while the generator still has items to give.
    assert got_at[0] < yielded_at[-1], "the first outcome waited for the whole input"


def test_an_async_iterable_runs_in_the_loop(fake_client: NebulaClient) -> None:
    """An async generator is accepted too, and its items complete."""

    async def items() -> AsyncIterator[dict[str, str]]:
        for i in range(5):
            yield {"model": "m", "prompt": f"p{i}"}

    with fake_client.as_completed(items(), concurrency=2) as outcomes:
        assert sorted(o.index for o in outcomes) == [0, 1, 2, 3, 4]


def test_leaving_early_cancels_the_calls_in_flight(
    fake_thread: FakeNebulaServer, fake_client: NebulaClient
) -> None:
    """Breaking out of the with block cancels what is in flight: no worker task is left in the loop."""
    fake_thread.time_to_first_token = 0.05
    items = ({"model": "m", "prompt": f"p{i}"} for i in range(1000))
    with fake_client.as_completed(items, concurrency=8) as outcomes:
        for _ in outcomes:
            break
    assert pool_tasks(fake_client) == 0
    assert next(outcomes, None) is None  # a closed iterator is exhausted


def test_ctrl_c_while_waiting_cancels_the_calls_in_flight(
    threaded_server: ThreadedServer, interrupt_main: Arm
) -> None:
    """Ctrl-C while the iterator waits raises KeyboardInterrupt and cancels every call in flight."""
    threaded_server.behaviour = slow
    with NebulaClient(KEY, base_url=threaded_server.base_url) as client:
        interrupt_main(lambda: threaded_server.request_count == 3)
        items = ({"model": "m", "prompt": f"p{i}"} for i in range(10))
        with pytest.raises(KeyboardInterrupt), client.as_completed(items, concurrency=3) as outcomes:
            next(outcomes)
        assert wait_for(lambda: threaded_server.cancelled == 3)
        assert pool_tasks(client) == 0
        assert threaded_server.request_count == 3


def test_run_batch_runs_and_resumes(fake_client: NebulaClient, tmp_path: Path) -> None:
    """The sync run_batch writes a record per id and skips them on a rerun."""
    source, output = write_input(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    first = fake_client.run_batch(source, output, model="m", concurrency=4)
    again = fake_client.run_batch(str(source), str(output), model="m")
    assert (first.succeeded, again.skipped, again.succeeded) == (20, 20, 0)
    assert sorted(json.loads(line)["id"] for line in output.read_text().splitlines()) == list(range(1, 21))


def test_first_ctrl_c_lets_the_calls_in_flight_finish(
    threaded_server: ThreadedServer, interrupt_main: Arm, tmp_path: Path
) -> None:
    """The first Ctrl-C starts no new request, writes the ones in flight as they finish, then raises."""
    threaded_server.behaviour = slow
    source, output = write_input(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    interrupt_main(lambda: threaded_server.request_count == 4)

    def release_later() -> None:
        if wait_for(lambda: threaded_server.request_count == 4, 5.0):
            time.sleep(0.3)  # after the Ctrl-C
            threaded_server.release()

    releaser = threading.Thread(target=release_later, daemon=True)
    releaser.start()
    with NebulaClient(KEY, base_url=threaded_server.base_url) as client, pytest.raises(KeyboardInterrupt):
        client.run_batch(source, output, model="m", concurrency=4)
    releaser.join(5)
    assert len(output.read_text().splitlines()) == 4
    assert threaded_server.request_count == 4


def test_a_second_ctrl_c_cancels_the_calls_in_flight(
    threaded_server: ThreadedServer, interrupt_main: Arm, tmp_path: Path
) -> None:
    """A second Ctrl-C during the grace period cancels the calls in flight; nothing is written."""
    threaded_server.behaviour = slow
    source, output = write_input(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    first_at: list[float] = []

    def first() -> bool:
        if threaded_server.request_count == 4:
            first_at.append(time.monotonic())
            return True
        return False

    interrupt_main(first)
    interrupt_main(lambda: bool(first_at) and time.monotonic() - first_at[0] > 0.5)
    started = time.monotonic()
    with NebulaClient(KEY, base_url=threaded_server.base_url) as client, pytest.raises(KeyboardInterrupt):
        client.run_batch(source, output, model="m", concurrency=4, grace_period=30)
    assert time.monotonic() - started < 10
    assert output.read_text() == ""
    assert wait_for(lambda: threaded_server.cancelled == 4)


def test_an_abandoned_iterator_is_closed_when_collected(
    fake_thread: FakeNebulaServer, fake_client: NebulaClient
) -> None:
    """A sync iterator dropped mid-way, never closed, has its calls cancelled once it is collected."""
    fake_thread.time_to_first_token = 0.05
    outcomes = fake_client.as_completed(
        ({"model": "m", "prompt": f"p{i}"} for i in range(1000)), concurrency=4
    )
    next(outcomes)
    del outcomes
    gc.collect()
    assert wait_for(lambda: pool_tasks(fake_client) == 0)
