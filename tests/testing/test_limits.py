"""FakeNebulaServer's per-key limits on real sockets: requests per second or minute, token quotas."""

from __future__ import annotations

import re

import aiohttp
import pytest

from nebula_async import InsufficientQuotaError, RateLimitError
from nebula_async.testing import FakeNebulaServer
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
