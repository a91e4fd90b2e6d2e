"""Client-side rate limits and the shared 429 gate, over real sockets against the fake server.

Rates are high and runs short; the times asserted are the pacing itself (what the limiter is
for), with wide margins, read from when the server received each request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from nebula_async import RateLimit, RateLimitError, RetryPolicy, Timeout
from nebula_async.testing import FakeNebulaServer, count_tokens
from tests.conftest import LocalServer
from tests.helpers import FAST_RETRY, SECRET_KEY, error_body, success_body
from tests.integration._support import (
    collect,
    free_port,
    json_handler,
    make_client,
    sequence_handler,
    wait_until,
)


def gaps(server: FakeNebulaServer) -> list[float]:
    """Seconds between consecutive requests the server received."""
    times = [r.time for r in server.requests]
    return [b - a for a, b in itertools.pairwise(times)]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The SDK's WARNING lines so far."""
    return [
        r.getMessage() for r in caplog.records if r.name == "nebula_async" and r.levelno == logging.WARNING
    ]


async def test_requests_are_spaced_at_the_limit_without_a_429() -> None:
    """120 calls at concurrency 32 against a 60/s sliding window: evenly paced, answered 429 at most once."""
    async with FakeNebulaServer(models=["m"], requests_per_second=60) as server:
        limit = RateLimit(requests_per_minute=60 * 60)
        async with make_client(server.base_url, rate_limit=limit) as client:
            assert client.rate_limit is limit
            started = time.monotonic()
            results = await client.generate_many(
                [{"model": "m", "prompt": f"{i}"} for i in range(120)], concurrency=32
            )
            elapsed = time.monotonic() - started
    assert len(results) == 120
    statuses = [r.status for r in server.requests]
    assert statuses.count(429) <= 1, statuses
    assert elapsed >= 119 / 60 * 0.95  # never faster than the limit
    assert elapsed < 119 / 60 * 3  # loose: only a stall (a long pause after a 429, say) fails this


async def test_tokens_are_paced_to_the_token_limit() -> None:
    """Calls reserving their real token count (token_counter) stay under a 600 tokens/s window: no 429."""
    replies = {f"q{i}": "one two three four five six seven" for i in range(60)}
    async with FakeNebulaServer(models=["m"], tokens_per_second=600, replies=replies) as server:
        limit = RateLimit(tokens_per_minute=600 * 60, token_counter=count_tokens)
        async with make_client(server.base_url, rate_limit=limit) as client:
            items = [{"model": "m", "prompt": p, "max_tokens": 10} for p in replies]
            results = await client.generate_many(items, concurrency=16)
    per_call = results[0].usage.total_tokens
    assert per_call == 8  # one for the prompt, seven for the reply: 60 calls are 480 tokens, 0.8 s at 600/s
    statuses = [r.status for r in server.requests]
    assert statuses.count(429) <= 1, statuses
    span = server.requests[-1].time - server.requests[0].time
    assert span >= 59 * 8 / 600 * 0.9


async def test_a_call_over_the_token_limit_is_refused_before_sending(fake: FakeNebulaServer) -> None:
    """A call whose estimate exceeds tokens_per_minute raises ValueError naming both; nothing is sent."""
    async with make_client(fake.base_url, rate_limit=RateLimit(tokens_per_minute=100)) as client:
        with pytest.raises(ValueError, match=r"about 110 tokens .* tokens_per_minute=100"):
            await client.generate_text(model="m", prompt="x" * 400, max_tokens=10)
        with pytest.raises(ValueError, match="tokens_per_minute=100"):
            client.stream_text(model="m", prompt="p", max_tokens=200)
        with pytest.raises(ValueError, match="tokens_per_minute=100"):
            await client.generate_many([{"model": "m", "prompt": "p", "max_tokens": 200}])
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_over_estimate_is_refunded_from_usage(fake: FakeNebulaServer, stream: bool) -> None:
    """A call reserving 101 tokens (1 s at 100/s) that used 5 lets the next one go 0.05 s later, not 1 s."""
    fake.stream_usage = True
    async with make_client(fake.base_url, rate_limit=RateLimit(tokens_per_minute=6000)) as client:
        for _ in range(2):
            if stream:
                async with client.stream_text(model="m", prompt="p", max_tokens=100) as s:
                    await collect(s)
                assert s.usage is not None
                assert s.usage.total_tokens == 5
            else:
                result = await client.generate_text(model="m", prompt="p", max_tokens=100)
                assert result.usage.total_tokens == 5
    assert gaps(fake)[0] < 0.5


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_under_estimate_is_charged_as_debt(fake: FakeNebulaServer, stream: bool) -> None:
    """A call estimated at 1 token that used 51 holds the next one about 0.5 s at 100 tokens/s."""
    fake.stream_usage = True
    prompt = "word " * 50  # 50 tokens for the server; the counter below says 0
    limit = RateLimit(tokens_per_minute=6000, token_counter=lambda p: 0)
    async with make_client(fake.base_url, rate_limit=limit) as client:
        for _ in range(2):
            if stream:
                async with client.stream_text(model="m", prompt=prompt, max_tokens=1) as s:
                    await collect(s)
            else:
                await client.generate_text(model="m", prompt=prompt, max_tokens=1)
    assert gaps(fake)[0] >= 0.4


async def test_a_big_call_goes_in_its_turn_before_smaller_ones_queued_after_it(
    fake: FakeNebulaServer,
) -> None:
    """A call reserving 0.5 s of tokens, queued before five small ones, is sent before them; none is stuck."""
    # The small calls are 50 ms apart: 1 ms apart, two of them could reach the server out of the
    # order they were let go in (each opens its own connection), which once failed CI.
    limit = RateLimit(tokens_per_minute=60 * 1000, token_counter=lambda p: 1)  # 1,000 tokens/s, no burst
    async with make_client(fake.base_url, rate_limit=limit) as client:
        first = asyncio.create_task(client.generate_text(model="m", prompt="first", max_tokens=200))
        await asyncio.sleep(0)
        big = asyncio.create_task(client.generate_text(model="m", prompt="big", max_tokens=499))
        await asyncio.sleep(0)
        small = [client.generate_text(model="m", prompt=f"small {i}", max_tokens=49) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(first, big, *small), 5)
    assert [r.json["prompt"] for r in fake.requests] == ["first", "big", *(f"small {i}" for i in range(5))]


async def test_an_error_answer_costs_no_tokens(fake: FakeNebulaServer) -> None:
    """A 400 answer refunds its token reservation: the next call does not wait for the tokens it reserved."""
    async with make_client(fake.base_url, rate_limit=RateLimit(tokens_per_minute=6000)) as client:
        with pytest.raises(Exception, match="model_not_found"):
            await client.generate_text(model="no-such-model", prompt="p", max_tokens=100)
        await client.generate_text(model="m", prompt="p", max_tokens=1)
    assert gaps(fake)[0] < 0.5


async def test_attempts_that_never_reached_the_server_are_refunded() -> None:
    """Refused connections cost nothing: three attempts at 1 request/s take far less than 2 s."""
    limit = RateLimit(requests_per_minute=60)
    async with make_client(f"http://127.0.0.1:{free_port()}/v1", rate_limit=limit) as client:
        started = time.monotonic()
        with pytest.raises(Exception, match="connection to the API failed"):
            await client.generate_text(model="m", prompt="p")  # FAST_RETRY: three attempts
        with pytest.raises(Exception, match="connection to the API failed"):
            await client.generate_text(model="m", prompt="p", max_retries=0)
        assert time.monotonic() - started < 0.9


async def test_a_429_closes_the_gate_for_every_task_and_logs_once(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Three tasks answered 429 (Retry-After 0.3 s) and a new call all wait for one gate; one WARNING."""
    caplog.set_level(logging.DEBUG, logger="nebula_async")
    fake.fail_next(3, status=429, code="rate_limit_exceeded", retry_after=0.3)
    fake.delay_next(3, seconds=0.05)  # the three 429s are answered together, before the retries
    async with make_client(fake.base_url) as client:  # no rate_limit=: the gate is there anyway
        first = [asyncio.create_task(client.generate_text(model="m", prompt="p")) for _ in range(3)]
        await wait_until(lambda: bool(warnings_of(caplog)))
        late = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        results = await asyncio.wait_for(asyncio.gather(*first, late), 5)
    assert [r.retries for r in results] == [1, 1, 1, 0]
    requests = fake.requests
    assert [r.status for r in requests[:3]] == [429, 429, 429]
    last_429 = max(r.time for r in requests[:3])
    after = [r.time - last_429 for r in requests[3:]]
    assert len(after) == 4
    assert min(after) >= 0.25  # nothing was sent while the gate was closed
    assert max(after) < 0.55  # the retry's own wait and the gate did not add up
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    assert "rate limited" in warnings[0]
    assert "0.300 s" in warnings[0]
    assert not any("retrying in" in line for line in warnings)


async def test_a_rate_limit_error_in_a_200_envelope_closes_the_gate(server: LocalServer) -> None:
    """A 200 whose envelope says rate_limit_exceeded, with retry-after-ms, holds the retry and a new call."""
    limited = json_handler(error_body("rate_limit_exceeded"), status=200, headers={"retry-after-ms": "300"})
    server.handler = sequence_handler(limited, json_handler(success_body()))
    arrivals: list[float] = []
    inner = server.handler

    async def timed(request):  # type: ignore[no-untyped-def]  # aiohttp's handler signature
        arrivals.append(time.monotonic())
        return await inner(request)

    server.handler = timed
    async with make_client(server.base_url) as client:
        first = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        await wait_until(lambda: len(arrivals) == 1)
        await asyncio.sleep(0.02)  # the 429 has been read: the gate is closed
        second = await client.generate_text(model="m", prompt="p")
        assert (await first).retries == 1
    assert second.retries == 0
    assert min(arrivals[1:]) - arrivals[0] >= 0.25


async def test_a_rate_limit_event_mid_stream_closes_the_gate(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream ended by a rate_limit_exceeded event (not retried) holds the next call for initial_delay."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    fake.error_event_after(events=2, code="rate_limit_exceeded")
    policy = RetryPolicy(max_retries=1, initial_delay=0.3, max_delay=0.3)
    async with make_client(fake.base_url, retry=policy) as client:
        with pytest.raises(RateLimitError):
            async with client.stream_text(model="m", prompt="p") as stream:
                await collect(stream)
        failed_at = time.time()
        await client.generate_text(model="m", prompt="p")
    assert fake.requests[1].time - failed_at >= 0.25
    assert len(warnings_of(caplog)) == 1


async def test_a_waiting_call_cancelled_sends_nothing(fake: FakeNebulaServer) -> None:
    """A call cancelled while it waits for its turn never reaches the server, and takes no turn."""
    async with make_client(fake.base_url, rate_limit=RateLimit(requests_per_minute=60 * 5)) as client:
        await client.generate_text(model="m", prompt="p")
        waiting = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client.generate_text(model="m", prompt="p")
    assert len(fake.requests) == 2
    assert gaps(fake)[0] < 0.3  # the third call took the cancelled one's turn (0.2 s after the first)


async def test_closing_a_stream_waiting_for_its_turn_ends_the_wait_and_sends_nothing(
    fake: FakeNebulaServer,
) -> None:
    """A stream closed by another task while its request waits for its turn stops waiting at once."""
    # This broke: the reader waited out its turn (here 5 s), then sent the request anyway.
    async with make_client(fake.base_url, rate_limit=RateLimit(requests_per_minute=12)) as client:
        await client.generate_text(model="m", prompt="p")
        stream = client.stream_text(model="m", prompt="p")
        reader = asyncio.create_task(collect(stream))
        await asyncio.sleep(0.05)
        await stream.aclose()
        with pytest.raises(RuntimeError, match="stream was closed while it was being read"):
            await asyncio.wait_for(reader, 1)
        started = time.monotonic()
        await client.generate_text(model="m", prompt="p")  # the closed stream's turn was not taken
        assert time.monotonic() - started < 5.5
    assert len(fake.requests) == 2


def test_a_call_from_another_event_loop_fails_before_waiting_its_turn() -> None:
    """A paced client used again under another asyncio.run() fails at once, taking no turn."""
    # This broke: the call waited its turn (a minute here) before the other-loop error, and the
    # limiter's waiters of two loops were woken from either loop's thread.
    with FakeNebulaServer(models=["m"], api_keys=[SECRET_KEY]).run_in_thread() as server:
        client = make_client(server.base_url, rate_limit=RateLimit(requests_per_minute=1))
        asyncio.run(client.generate_text(model="m", prompt="p"))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="first used in another event loop"):
            asyncio.run(client.generate_text(model="m", prompt="p"))
        assert time.monotonic() - started < 5
        assert len(server.requests) == 1


async def test_the_wait_for_a_turn_is_not_part_of_the_timeout(fake: FakeNebulaServer) -> None:
    """With 0.5 s between calls and a 0.3 s total timeout, the second call waits its turn and succeeds."""
    limit = RateLimit(requests_per_minute=120)
    async with make_client(fake.base_url, rate_limit=limit, timeout=Timeout(total=0.3)) as client:
        results = await asyncio.gather(*(client.generate_text(model="m", prompt="p") for _ in range(2)))
    assert [r.retries for r in results] == [0, 0]
    assert gaps(fake)[0] >= 0.45


async def test_closing_the_client_wakes_the_waiting_calls(fake: FakeNebulaServer) -> None:
    """aclose() ends calls waiting for their turn (a minute away) at once with the closed-client error."""
    client = make_client(fake.base_url, rate_limit=RateLimit(requests_per_minute=1))
    await client.generate_text(model="m", prompt="p")
    waiting = [asyncio.create_task(client.generate_text(model="m", prompt="p")) for _ in range(3)]
    await asyncio.sleep(0.02)
    await client.aclose()
    for call in waiting:
        with pytest.raises(RuntimeError, match="client is closed"):
            await asyncio.wait_for(call, 1)
    assert len(fake.requests) == 1


async def test_a_retry_waiting_at_the_gate_says_the_client_was_closed(fake: FakeNebulaServer) -> None:
    """A retry held by the gate when the client closes raises "closed while the call was running"."""
    fake.fail_next(status=429, code="rate_limit_exceeded", retry_after=30)
    client = make_client(fake.base_url, retry=RetryPolicy(max_retries=1))
    call = asyncio.create_task(client.generate_text(model="m", prompt="p"))
    await wait_until(lambda: len(fake.requests) == 1 and fake.requests[0].status == 429)
    await asyncio.sleep(0.02)
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed while the call was running"):
        await asyncio.wait_for(call, 1)


def test_rate_limit_must_be_a_rate_limit() -> None:
    """rate_limit= something else is a TypeError that shows how to make one."""
    with pytest.raises(
        TypeError, match=r"rate_limit must be a RateLimit, e.g. RateLimit\(requests_per_minute"
    ):
        make_client("http://127.0.0.1:9/v1", rate_limit={"requests_per_minute": 60})
    assert make_client("http://127.0.0.1:9/v1", retry=FAST_RETRY).rate_limit is None
