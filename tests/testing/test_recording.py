"""FakeNebulaServer's record of the requests it received: server.requests, max_recorded, no keys shown."""

from __future__ import annotations

import json
import time

import aiohttp

from nebula_async.testing import FakeNebulaServer
from tests.testing._support import FAKE_KEY, MODEL, body, post, send


async def test_requests_are_recorded_with_their_details(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """A recorded request has method, path, case-insensitive headers, JSON and raw body, time, id, status."""
    before = time.time()
    reply = await send(http, fake, body(prompt="Record me"))
    after = time.time()
    [record] = fake.requests
    assert record.method == "POST"
    assert record.path == "/v1/text/generate"
    assert record.headers["content-type"] == "application/json"
    assert record.headers["AUTHORIZATION"] == f"Bearer {FAKE_KEY}"
    assert "Content-Type" in record.headers
    assert record.json == body(prompt="Record me")
    assert json.loads(record.body) == record.json
    assert isinstance(record.body, bytes)
    assert before <= record.time <= after
    assert record.request_id == reply.headers["x-request-id"]
    assert record.status == 200
    assert record.api_key == FAKE_KEY


async def test_recorded_requests_never_show_the_key(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """Neither a RecordedRequest's repr nor server.requests' repr contains the API key."""
    await send(http, fake, body())
    fake.fail_next(status=429)
    await send(http, fake, body())
    record = fake.requests[0]
    for text in (repr(record), str(record), repr(record.headers), repr(fake.requests), repr(fake)):
        assert FAKE_KEY not in text
    assert "<redacted>" in repr(record.headers)


async def test_invalid_json_is_recorded_with_json_none(
    fake: FakeNebulaServer, http: aiohttp.ClientSession
) -> None:
    """A body that is not JSON is recorded as raw bytes with json None, and answered 400."""
    reply = await send(http, fake, b'{"model": "x", oops')
    [record] = fake.requests
    assert reply.status == 400
    assert record.json is None
    assert record.body == b'{"model": "x", oops'
    assert record.status == 400


def test_max_recorded_keeps_only_the_last_n_requests() -> None:
    """max_recorded=3 keeps the last three of five requests; max_recorded=0 answers them but keeps none."""
    # Regression: server.requests grew without bound, about 2 KB per request of a soak run.
    with FakeNebulaServer(api_keys=[FAKE_KEY], max_recorded=3).run_in_thread() as server:
        for i in range(5):
            assert post(server.base_url, {"model": MODEL, "prompt": f"p{i}"})[0] == 200
        assert [r.json["prompt"] for r in server.requests] == ["p2", "p3", "p4"]
    with FakeNebulaServer(api_keys=[FAKE_KEY], max_recorded=0).run_in_thread() as server:
        assert post(server.base_url)[0] == 200
        assert server.requests == []
