"""generate_many over a real server: order, the concurrency bound, failures, and lazy input.

The FakeNebulaServer (``fake``) serves most; the hand-rolled ``server`` counts the calls in flight
and fails one chosen prompt, which the fake doesn't.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from nebula_async import GenerateRequest, ModelNotFoundError, TextGeneration
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import error_body, success_body
from tests.integration._support import echo, make_client


class Counting:
    """A server handler that echoes the prompt, after a delay, and counts what is in flight and done."""

    def __init__(self, delay: float = 0.0, delays: dict[str, float] | None = None) -> None:
        self.delay = delay
        self.delays = delays or {}
        self.current = 0
        self.highest = 0
        self.answered = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["prompt"]
        self.current += 1
        self.highest = max(self.highest, self.current)
        try:
            await asyncio.sleep(self.delays.get(prompt, self.delay))
            if body["model"] == "missing":
                return web.json_response(error_body("model_not_found", f"no model for {prompt}"), status=404)
            return web.json_response(success_body(f"echo:{prompt}"))
        finally:
            self.current -= 1
            self.answered += 1


async def test_results_keep_input_order_with_varying_delays(fake: FakeNebulaServer) -> None:
    """Results come in input order even when later items finish first."""
    n = 24
    # The fake answers after token_delay per token past the first: item i takes 0.002 * (n - i + 2) s.
    replies = {f"p{i}": "echo:p" + "." * (n - i) for i in range(n)}  # "echo", ":", "p", and n - i dots
    fake.replies.update(replies)
    fake.token_delay = 0.002
    async with make_client(fake.base_url) as client:
        results = await client.generate_many(
            [{"model": "m", "prompt": f"p{i}"} for i in range(n)], concurrency=8
        )
    assert [r.text for r in results] == [replies[f"p{i}"] for i in range(n)]
    assert all(isinstance(r, TextGeneration) for r in results)


async def test_at_most_concurrency_in_flight(server: LocalServer) -> None:
    """The server never sees more than ``concurrency`` requests at once, and does see that many."""
    handler = Counting(delay=0.01)
    server.handler = handler
    async with make_client(server.base_url) as client:
        results = await client.generate_many(
            ({"model": "m", "prompt": f"p{i}"} for i in range(40)), concurrency=5
        )
    assert len(results) == 40
    assert handler.highest == 5


async def test_return_exceptions_puts_the_error_in_place(fake: FakeNebulaServer) -> None:
    """With return_exceptions=True a failed item's exception stands at its index and the rest succeed."""
    fake.reply = echo
    items: list[Any] = [{"model": "m", "prompt": f"p{i}"} for i in range(6)]
    items[2] = {"model": "missing", "prompt": "p2"}  # a model the fake doesn't have
    items[4] = {"model": "m", "prompt": "p4", "max_tokens": 0}  # rejected before sending
    async with make_client(fake.base_url) as client:
        results = await client.generate_many(items, concurrency=3, return_exceptions=True)
    assert isinstance(results[2], ModelNotFoundError)
    assert results[2].message == "Model 'missing' not found"
    assert isinstance(results[4], ValueError)
    assert "max_tokens" in str(results[4])
    assert [r.text for r in results if isinstance(r, TextGeneration)] == [
        "echo:p0",
        "echo:p1",
        "echo:p3",
        "echo:p5",
    ]
    assert len(fake.requests) == 5


async def test_first_failure_is_raised_and_the_rest_stop(fake: FakeNebulaServer) -> None:
    """With return_exceptions=False the first failure is raised and no further requests are sent."""
    fake.time_to_first_token = 0.005  # each success takes 5 ms
    items = [{"model": "missing-p5" if i == 5 else "m", "prompt": f"p{i}"} for i in range(200)]
    async with make_client(fake.base_url) as client:
        with pytest.raises(ModelNotFoundError, match="p5"):
            await client.generate_many(items, concurrency=4)
        sent = len(fake.requests)
        await asyncio.sleep(0.05)
        assert len(fake.requests) == sent  # nothing is still running in the background
    assert sent < 20


async def test_a_generator_is_consumed_lazily(fake: FakeNebulaServer) -> None:
    """A 10,000-item generator is read only as workers free up: never more than concurrency ahead."""
    concurrency = 4
    produced = 0
    worst_lead = 0

    def answered() -> int:
        return sum(r.status is not None for r in fake.requests)

    def items() -> Iterator[dict[str, str]]:
        nonlocal produced, worst_lead
        for i in range(10_000):
            produced += 1
            worst_lead = max(worst_lead, produced - answered())
            yield {"model": "missing" if i == 60 else "m", "prompt": f"p{i}"}

    async with make_client(fake.base_url) as client:
        with pytest.raises(ModelNotFoundError):
            await client.generate_many(items(), concurrency=concurrency)
    assert worst_lead <= concurrency + 1
    # Stopped soon after the failure (workers already running may take one more each): never listed whole.
    assert produced <= 61 + 2 * concurrency


async def test_a_generator_runs_to_completion_lazily(server: LocalServer) -> None:
    """A generator of 300 items completes in order while never running more than concurrency ahead."""
    handler = Counting()
    server.handler = handler
    produced = 0
    worst_lead = 0

    def items() -> Iterator[GenerateRequest]:
        nonlocal produced, worst_lead
        for i in range(300):
            produced += 1
            worst_lead = max(worst_lead, produced - handler.answered)
            yield GenerateRequest("m", f"p{i}")

    async with make_client(server.base_url) as client:
        results = await client.generate_many(items(), concurrency=4)
    assert [r.text for r in results] == [f"echo:p{i}" for i in range(300)]
    assert worst_lead <= 4 + 1
    assert handler.highest <= 4


async def test_an_async_generator_is_accepted(server: LocalServer) -> None:
    """An async generator is consumed lazily and its results come in order."""
    handler = Counting(delay=0.002)
    server.handler = handler
    produced = 0
    worst_lead = 0

    async def items() -> AsyncIterator[dict[str, str]]:
        nonlocal produced, worst_lead
        for i in range(40):
            await asyncio.sleep(0)
            produced += 1
            worst_lead = max(worst_lead, produced - handler.answered)
            yield {"model": "m", "prompt": f"a{i}"}

    async with make_client(server.base_url) as client:
        results = await client.generate_many(items(), concurrency=3)
    assert [r.text for r in results] == [f"echo:a{i}" for i in range(40)]
    assert worst_lead <= 3 + 1
    assert handler.highest <= 3


async def test_dicts_and_generate_requests_mixed(fake: FakeNebulaServer) -> None:
    """Dict items and GenerateRequest items are both sent with exactly their fields."""
    fake.reply = echo
    items: list[Any] = [
        {"model": "m", "prompt": "d", "temperature": 0.5, "stop": ["."]},
        GenerateRequest("m", "g", max_tokens=7, top_p=0.9),
    ]
    async with make_client(fake.base_url) as client:
        results = await client.generate_many(items, concurrency=1)
    assert [r.text for r in results] == ["echo:d", "echo:g"]
    assert [r.json for r in fake.requests] == [
        {"model": "m", "prompt": "d", "temperature": 0.5, "stop": ["."]},
        {"model": "m", "prompt": "g", "max_tokens": 7, "top_p": 0.9},
    ]


async def test_empty_input_gives_an_empty_list(fake: FakeNebulaServer) -> None:
    """No items means no requests and an empty list."""
    async with make_client(fake.base_url) as client:
        assert await client.generate_many([]) == []
    assert fake.requests == []


async def test_items_are_retried_like_single_calls(server: LocalServer) -> None:
    """An item that hits a 429 with Retry-After: 0 is retried and its result says so."""
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        body = await request.json()
        if body["prompt"] == "p1" and calls <= 2:
            return web.json_response(
                error_body("rate_limit_exceeded"), status=429, headers={"Retry-After": "0"}
            )
        return web.json_response(success_body(f"echo:{body['prompt']}"))

    server.handler = flaky
    async with make_client(server.base_url) as client:
        results = await client.generate_many(
            [{"model": "m", "prompt": f"p{i}"} for i in range(2)], concurrency=1
        )
    assert [(r.text, r.retries) for r in results] == [("echo:p0", 0), ("echo:p1", 1)]
