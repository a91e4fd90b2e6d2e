"""FakeNebulaServer's per-key limits on real sockets: requests per second or minute, token quotas."""

from __future__ import annotations

import asyncio
import re
import threading

import aiohttp
import pytest

from nebula_async import InsufficientQuotaError, RateLimitError
from nebula_async.testing import FakeNebulaServer
from nebula_async.testing._state import Limits
from tests.helpers import NO_RETRY
from tests.testing._support import FAKE_KEY, MODEL, body, sdk, send


async def test_requests_per_second_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    """requests_per_second=2 answers a third quick request with 429 and Retry-After / retry-after-ms."""
    async with FakeNebulaServer(requests_per_second=2) as server:
        answers = [await send(http, server, body()) for _ in range(3)]
        other_key = await send(http, server, body(), key="another-key")
        async with sdk(server, api_key=FAKE_KEY, retry=NO_RETRY) as client:
            with pytest.raises(RateLimitError) as caught:
                await client.generate_text(model=MODEL, prompt="hi")
    assert [a.status for a in answers] == [200, 200, 429]
    limited = answers[2]
    assert limited.error()["code"] == "rate_limit_exceeded"
    assert re.fullmatch(r"[1-9][0-9]*", limited.headers["Retry-After"])
    assert re.fullmatch(r"[0-9]+", limited.headers["retry-after-ms"])
    assert 0 < int(limited.headers["retry-after-ms"]) <= 1000
    assert int(limited.headers["Retry-After"]) == 1
    assert other_key.status == 200  # each key has its own window
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 1


async def test_token_quota_answers_insufficient_quota_once_used(http: aiohttp.ClientSession) -> None:
    """token_quota counts prompt plus completion tokens per key; then requests get 429 insufficient_quota."""
    async with FakeNebulaServer(token_quota=10, replies={"Say hi": "Hello, World!"}) as server:
        key = server.api_key
        first = (await send(http, server, body(), key=key)).success()
        assert server.tokens_used() == server.tokens_used(key) == first["usage"]["total_tokens"] == 6
        (await send(http, server, body(), key=key)).success()  # 6 < 10: still admitted
        assert server.tokens_used() == 12
        answer = await send(http, server, body(), key=key)
        assert answer.status == 429
        error = answer.error()
        assert error["code"] == "insufficient_quota"
        assert set(error["details"]) == {"quota"}
        assert server.tokens_used() == 12  # a refused request costs nothing
        assert server.tokens_used("another-key") == 0
        assert (await send(http, server, body(), key="another-key")).status == 200
        before = len(server.requests)
        async with sdk(server) as client:  # default retries: insufficient_quota must not use them
            with pytest.raises(InsufficientQuotaError) as caught:
                await client.generate_text(model=MODEL, prompt="Say hi")
        assert len(server.requests) == before + 1
    assert (caught.value.code, caught.value.status_code) == ("insufficient_quota", 429)


async def test_tokens_per_minute_answers_429_once_the_window_is_full(http: aiohttp.ClientSession) -> None:
    """tokens_per_minute counts prompt and completion tokens per key; a full window gets 429 and a wait."""
    async with FakeNebulaServer(tokens_per_minute=10, replies={"Say hi": "Hello, World!"}) as server:
        first = (await send(http, server, body())).success()
        assert first["usage"]["total_tokens"] == 6  # 6 < 10: the next one is still admitted
        (await send(http, server, body())).success()
        limited = await send(http, server, body())
        other_key = await send(http, server, body(), key="another-key")
    assert limited.status == 429
    error = limited.error()
    assert error["code"] == "rate_limit_exceeded"
    assert error["details"] == {"rate_limit": "tokens: 10 per minute, per API key"}
    assert 59_000 < int(limited.headers["retry-after-ms"]) <= 60_000  # the first answer leaves the window
    assert limited.headers["Retry-After"] == "60"
    assert other_key.status == 200
    assert server.tokens_used(FAKE_KEY) == 12  # the refused request was not charged


async def test_tokens_per_second_window_slides(http: aiohttp.ClientSession) -> None:
    """tokens_per_second frees the window a second after the answers that filled it; both limits are named."""
    async with FakeNebulaServer(
        tokens_per_second=5, requests_per_minute=100, replies={"Say hi": "Hello, World!"}
    ) as server:
        (await send(http, server, body())).success()  # 6 tokens: the 1 s window is full
        limited = await send(http, server, body())
        assert limited.status == 429
        wait = int(limited.headers["retry-after-ms"]) / 1000
        assert 0 < wait <= 1
        await asyncio.sleep(wait + 0.05)
        (await send(http, server, body())).success()
    details = limited.error()["details"]["rate_limit"]
    assert details == "requests: 100 per minute; tokens: 5 per second, per API key"


def test_token_window_wait_counts_from_the_oldest_answers() -> None:
    """Answers of 4 tokens at t=0, 10 and 20 under a limit of 10: the wait ends when the first leaves."""
    clock = [0.0]
    limits = Limits(
        threading.Lock(),
        requests_per_second=None,
        requests_per_minute=None,
        token_quota=None,
        tokens_per_minute=10,
        clock=lambda: clock[0],
    )
    for at in (0.0, 10.0, 20.0):
        clock[0] = at
        assert limits.admit("k") is None
        limits.charge("k", 4)
    clock[0] = 30.0
    assert limits.admit("k") == pytest.approx(30.0)  # 12 tokens; without the first, 8 < 10
    clock[0] = 60.0
    assert limits.admit("k") is None
    limits.reset()
    clock[0] = 61.0
    assert limits.admit("k") is None
