"""as_completed over a real server: completion order, the concurrency bound, early exits and errors."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from nebula_async import GenerateRequest, ModelNotFoundError, Outcome
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.integration._support import echo, make_client
from tests.integration.test_generate_many import Counting


def pool_tasks() -> set[asyncio.Task[Any]]:
    """The running tasks that are as_completed's workers (the fake server's own tasks share the loop)."""
    return {t for t in asyncio.all_tasks() if "_Pool._work" in getattr(t.get_coro(), "__qualname__", "")}


async def test_outcomes_come_in_completion_order_with_their_index(server: LocalServer) -> None:
    """A slow first item comes last; each Outcome carries its input index and the item as given."""
    handler = Counting(delays={"p0": 0.2})
    server.handler = handler
    items = [{"model": "m", "prompt": f"p{i}"} for i in range(4)]
    async with make_client(server.base_url) as client, client.as_completed(items, concurrency=4) as outcomes:
        got = [outcome async for outcome in outcomes]
    assert got[-1].index == 0
    assert sorted(o.index for o in got) == [0, 1, 2, 3]
    for outcome in got:
        assert outcome.ok
        assert outcome.request is items[outcome.index]
        assert outcome.result is not None
        assert outcome.result.text == f"echo:p{outcome.index}"


async def test_concurrency_bounds_the_calls_in_flight(server: LocalServer) -> None:
    """No more than ``concurrency`` requests are ever in flight at once."""
    handler = Counting(delay=0.01)
    server.handler = handler
    items = ({"model": "m", "prompt": f"p{i}"} for i in range(40))
    async with make_client(server.base_url) as client, client.as_completed(items, concurrency=3) as outcomes:
        count = sum([1 async for _ in outcomes])
    assert count == 40
    assert handler.highest == 3


async def test_a_concurrency_far_above_the_input_size_starts_few_workers(fake: FakeNebulaServer) -> None:
    """Workers start as items are taken: a concurrency of 10,000 for three items makes four of them."""
    # Broke: every worker was started up front: concurrency=1_000_000 took 20 s and 1 GiB for three items.
    fake.reply = echo
    loop = asyncio.get_running_loop()
    workers = 0

    def count_workers(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal workers
        workers += "_Pool._work" in getattr(coro, "__qualname__", "")
        return asyncio.Task(coro, loop=loop, **kwargs)

    items = [{"model": "gpt-4", "prompt": f"p{i}"} for i in range(3)]
    loop.set_task_factory(count_workers)
    try:
        async with (
            make_client(fake.base_url) as client,
            client.as_completed(items, concurrency=10_000) as outcomes,
        ):
            got = [outcome async for outcome in outcomes]
    finally:
        loop.set_task_factory(None)
    assert sorted(o.index for o in got) == [0, 1, 2]
    assert all(o.ok for o in got)
    assert workers == 4  # one per item, and the one that found the input exhausted


async def test_errors_are_outcomes_and_the_rest_go_on(fake: FakeNebulaServer) -> None:
    """An API error and a bad item are Outcomes with ``error`` set; the other items still complete."""
    fake.reply = echo
    items: list[Any] = [
        {"model": "m", "prompt": "a"},
        {"model": "missing", "prompt": "b"},
        {"model": "m", "prompt": "c", "max_tokens": 0},
        GenerateRequest("m", "d"),
    ]
    async with make_client(fake.base_url) as client, client.as_completed(items) as outcomes:
        by_index = {o.index: o async for o in outcomes}
    assert isinstance(by_index[1].error, ModelNotFoundError)
    assert isinstance(by_index[2].error, ValueError)
    assert not by_index[1].ok
    assert by_index[1].result is None
    assert by_index[3].result is not None
    assert by_index[3].result.text == "echo:d"
    assert len(fake.requests) == 3  # the bad item never left


async def test_breaking_out_cancels_what_is_in_flight(server: LocalServer) -> None:
    """Leaving the block after the first outcome cancels the calls in flight: nothing left or sent."""
    server.handler = Counting(delay=0.02)
    items = ({"model": "m", "prompt": f"p{i}"} for i in range(1000))
    async with make_client(server.base_url) as client:
        async with client.as_completed(items, concurrency=8) as outcomes:
            async for _ in outcomes:
                break
        assert pool_tasks() == set()
        await asyncio.sleep(0.05)  # requests already on their way arrive
        sent = len(server.requests)
        await asyncio.sleep(0.05)
        assert len(server.requests) == sent
    assert sent <= 16  # the first 8, and those started as they completed, before the break


async def test_an_abandoned_iterator_is_cancelled_when_collected(fake: FakeNebulaServer) -> None:
    """An iterator dropped mid-way, never closed, has its calls cancelled when it is collected."""
    fake.time_to_first_token = 0.02
    items = ({"model": "m", "prompt": f"p{i}"} for i in range(1000))
    async with make_client(fake.base_url) as client:
        outcomes = client.as_completed(items, concurrency=4)
        await anext(outcomes)
        del outcomes
        gc.collect()
        await asyncio.sleep(0.01)  # the cancelled workers take a step to end
        assert pool_tasks() == set()


async def test_closing_the_client_cancels_an_open_iterator(fake: FakeNebulaServer) -> None:
    """The client's aclose() cancels the workers of an open iteration, which then raises RuntimeError."""
    fake.time_to_first_token = 0.02
    items = ({"model": "m", "prompt": f"p{i}"} for i in range(1000))
    client = make_client(fake.base_url)
    outcomes = client.as_completed(items, concurrency=4)
    await anext(outcomes)
    await client.aclose()
    await asyncio.sleep(0.01)
    assert pool_tasks() == set()
    with pytest.raises(RuntimeError, match="closed while the call was running"):
        await anext(outcomes)


async def test_a_failing_input_ends_the_iteration_with_its_error(fake: FakeNebulaServer) -> None:
    """An exception of the input's own generator is not an Outcome: it ends the iteration, raised."""

    def items() -> Iterator[dict[str, str]]:
        yield {"model": "m", "prompt": "p"}
        raise LookupError("the database went away")

    async with make_client(fake.base_url) as client:
        with pytest.raises(LookupError, match="database"):  # noqa: PT012 - raised by the iteration
            async with client.as_completed(items()) as outcomes:
                async for _ in outcomes:
                    pass


async def test_async_iterables_are_read_lazily(fake: FakeNebulaServer) -> None:
    """An async generator is read only as workers free up, never far ahead of the outcomes."""
    read = 0

    async def items() -> AsyncIterator[dict[str, str]]:
        nonlocal read
        for i in range(100):
            read += 1
            yield {"model": "m", "prompt": f"p{i}"}

    ahead = 0
    async with make_client(fake.base_url) as client, client.as_completed(items(), concurrency=4) as outcomes:
        done = 0
        async for _ in outcomes:
            done += 1
            ahead = max(ahead, read - done)
    assert done == 100
    assert ahead <= 2 * 4  # in flight, plus finished outcomes not yet taken


async def test_memory_stays_bounded_by_the_concurrency() -> None:
    """Iterating 3,000 outcomes holds about as much memory as 300: nothing accumulates per item."""

    async def peak(count: int, base_url: str) -> int:
        # One prompt: the fake server caches each prompt's reply, which would grow with the count.
        items = ({"model": "m", "prompt": "p"} for _ in range(count))
        tracemalloc.start()
        try:
            async with (
                make_client(base_url) as client,
                client.as_completed(items, concurrency=8) as outcomes,
            ):
                async for outcome in outcomes:
                    assert isinstance(outcome, Outcome)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    async with FakeNebulaServer(models=["m"], max_recorded=0) as quiet:  # keeps no request
        small = await peak(300, quiet.base_url)
        large = await peak(3000, quiet.base_url)
    assert large < small * 1.5


def test_bad_arguments_fail_before_anything_runs() -> None:
    """A bad concurrency or a non-iterable input is refused when as_completed is called."""
    client = make_client("http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="concurrency must be an int >= 1, got 0"):
        client.as_completed([], concurrency=0)
    with pytest.raises(TypeError, match="requests must be an iterable"):
        client.as_completed("prompt")  # type: ignore[arg-type]  # the mistake under test
