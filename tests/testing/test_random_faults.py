"""FakeNebulaServer(faults=FaultMix(...)): random faults over real sockets, by kind, under a seed."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from nebula_async.testing import FAULT_KINDS, FakeNebulaServer, FaultMix
from tests.testing._support import (
    FAKE_KEY,
    REPLIES,
    body,
    parse_events,
    read_broken_stream,
    send,
)

STREAM = body(prompt="long", max_tokens=20, stream=True)


def only(kind: str, **settings: float) -> FaultMix:
    """Return a mix that faults every request with ``kind``."""
    return FaultMix(rate=1.0, seed=7, weights={kind: 1.0}, **settings)  # type: ignore[arg-type]  # test-only


async def statuses_of(http: aiohttp.ClientSession, mix: FaultMix, count: int) -> list[int | None]:
    """Send ``count`` plain requests, one at a time, to a fresh server with ``mix``; return the statuses."""
    got: list[int | None] = []
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=mix) as server:
        for _ in range(count):
            try:
                got.append((await send(http, server, body())).status)
            except aiohttp.ClientConnectionError:  # a disconnect fault
                got.append(None)
    return got


async def test_the_same_seed_gives_the_same_faults(http: aiohttp.ClientSession) -> None:
    """Two servers with one seed fault the same requests in the same way; another seed differs."""
    mix = FaultMix(rate=0.3, seed=11, slow_seconds=0.0)
    first = await statuses_of(http, mix, 60)
    assert first == await statuses_of(http, mix, 60)
    assert first != await statuses_of(http, FaultMix(rate=0.3, seed=12, slow_seconds=0.0), 60)
    assert 200 in first
    assert set(first) - {200}


async def test_the_rate_is_the_share_of_requests_faulted(http: aiohttp.ClientSession) -> None:
    """At rate 0.1 about a tenth of 400 requests are faulted, and faults_injected counts each one."""
    weights = {"rate_limit": 1.0, "server_error": 1.0}
    async with FakeNebulaServer(
        api_keys=[FAKE_KEY], faults=FaultMix(rate=0.1, seed=3, weights=weights)
    ) as server:
        answered = [(await send(http, server, body())).status for _ in range(400)]
        injected = server.faults_injected
    faulted = sum(status != 200 for status in answered)
    assert 20 <= faulted <= 70  # binomial(400, 0.1): mean 40, sd 6; fixed by the seed anyway
    assert injected == {"rate_limit": answered.count(429), "server_error": faulted - answered.count(429)}


async def test_a_rate_limit_fault_sends_a_short_retry_after(http: aiohttp.ClientSession) -> None:
    """A rate_limit fault is 429 rate_limit_exceeded with retry-after-ms inside the mix's range."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("rate_limit")) as server:
        for _ in range(20):
            answer = await send(http, server, body())
            assert answer.status == 429
            assert answer.error()["code"] == "rate_limit_exceeded"
            assert 50 <= int(answer.headers["retry-after-ms"]) <= 200
            assert answer.headers["Retry-After"] == "1"
        assert server.faults_injected["rate_limit"] == 20


async def test_a_server_error_fault_is_a_5xx_envelope(http: aiohttp.ClientSession) -> None:
    """A server_error fault answers 500, 502 or 503 with the server_error envelope."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("server_error")) as server:
        answers = [await send(http, server, body()) for _ in range(30)]
    assert {a.status for a in answers} == {500, 502, 503}
    assert {a.error()["code"] for a in answers} == {"server_error"}


async def test_an_html_fault_is_an_html_page(http: aiohttp.ClientSession) -> None:
    """An html fault answers 502 or 503 with text/html, as a proxy does."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("html")) as server:
        answers = [await send(http, server, body()) for _ in range(10)]
    assert {a.status for a in answers} <= {502, 503}
    assert {a.content_type for a in answers} == {"text/html"}


async def test_a_disconnect_fault_closes_before_any_reply(http: aiohttp.ClientSession) -> None:
    """A disconnect fault closes the connection with no status line; the request is recorded unanswered."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("disconnect")) as server:
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(http, server, body())
        assert [r.status for r in server.requests] == [None]
        assert server.faults_injected["disconnect"] == 1


async def test_a_slow_fault_holds_the_reply_then_answers(http: aiohttp.ClientSession) -> None:
    """A slow fault answers normally, but only after slow_seconds."""
    async with FakeNebulaServer(
        api_keys=[FAKE_KEY], replies=REPLIES, faults=only("slow", slow_seconds=0.2)
    ) as server:
        started = time.monotonic()
        answer = await send(http, server, body())
        assert time.monotonic() - started >= 0.2
        assert answer.success()["text"] == "Hello, World!"
        assert server.faults_injected["slow"] == 1


async def test_a_drop_stream_fault_cuts_a_stream_before_its_end(http: aiohttp.ClientSession) -> None:
    """A drop_stream fault cuts the stream after a few events, before the final one."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], replies=REPLIES, faults=only("drop_stream")) as server:
        for _ in range(5):
            events = parse_events(await read_broken_stream(http, server, STREAM))
            assert len(events) <= 8
            assert all(e["finish_reason"] is None for e in events)
        assert server.faults_injected["drop_stream"] == 5


async def test_an_error_event_fault_ends_a_stream_with_server_error(http: aiohttp.ClientSession) -> None:
    """An error_event fault sends a server_error event mid-stream, after at most 8 text events."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], replies=REPLIES, faults=only("error_event")) as server:
        answer = await send(http, server, STREAM)
    events = parse_events(answer.raw)
    assert events[-1]["error"]["code"] == "server_error"
    assert len(events) <= 9
    assert all(e.get("finish_reason") is None for e in events)


async def test_stream_faults_spare_plain_requests(http: aiohttp.ClientSession) -> None:
    """A mix of stream-only kinds leaves non-streaming requests alone and counts nothing for them."""
    mix = FaultMix(rate=1.0, seed=1, weights={"drop_stream": 1.0, "error_event": 1.0})
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=mix) as server:
        assert [(await send(http, server, body())).status for _ in range(10)] == [200] * 10
        assert server.faults_injected == {"drop_stream": 0, "error_event": 0}


async def test_faults_can_be_stopped_and_restarted_while_running(http: aiohttp.ClientSession) -> None:
    """Setting server.faults to None ends the faults; setting a mix starts them again, counts from zero."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("server_error")) as server:
        assert (await send(http, server, body())).status >= 500
        server.faults = None
        assert server.faults is None
        assert server.faults_injected == {}
        assert (await send(http, server, body())).status == 200
        server.faults = only("rate_limit")
        assert (await send(http, server, body())).status == 429
        assert server.faults_injected == {"rate_limit": 1}


async def test_scripted_faults_come_before_random_ones(http: aiohttp.ClientSession) -> None:
    """fail_next wins over the mix for its requests, and is not counted as a random fault."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY], faults=only("rate_limit")) as server:
        server.fail_next(status=418)
        assert (await send(http, server, body())).status == 418
        assert (await send(http, server, body())).status == 429
        assert server.faults_injected == {"rate_limit": 1}


async def test_open_connections_counts_client_connections() -> None:
    """open_connections is 1 while a keep-alive client holds a connection, 0 once it has closed."""
    async with FakeNebulaServer(api_keys=[FAKE_KEY]) as server:
        async with aiohttp.ClientSession() as session:
            await send(session, server, body())
            assert server.open_connections == 1
        for _ in range(1000):  # the server sees the close a loop turn or so later; at most 10 s
            if not server.open_connections:
                break
            await asyncio.sleep(0.01)
        assert server.open_connections == 0
    assert server.open_connections == 0


def test_every_kind_has_a_default_weight() -> None:
    """The default mix draws every kind equally."""
    assert dict(FaultMix().weights) == dict.fromkeys(FAULT_KINDS, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 1.5}, ValueError, "rate must be between 0 and 1"),
        ({"rate": "0.1"}, TypeError, "rate must be a number"),
        ({"weights": {"teapot": 1.0}}, ValueError, "unknown fault kinds ['teapot']"),
        ({"weights": {"html": 0}}, ValueError, "at least one fault kind"),
        ({"weights": {"html": -1}}, ValueError, "the weight of 'html'"),
        ({"slow_seconds": -1}, ValueError, "slow_seconds must be"),
        ({"retry_after": (0.3, 0.1)}, ValueError, "retry_after must be"),
    ],
)
def test_a_bad_fault_mix_is_refused(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    """FaultMix checks its settings, naming the one that is wrong."""
    with pytest.raises(error, match=re.escape(message)):
        FaultMix(**kwargs)  # type: ignore[arg-type]  # deliberately wrong types


def test_faults_must_be_a_fault_mix() -> None:
    """faults= takes a FaultMix or None, at construction and later."""
    with pytest.raises(TypeError, match="faults must be a FaultMix"):
        FakeNebulaServer(faults=0.1)  # type: ignore[arg-type]  # deliberately wrong
    server = FakeNebulaServer()
    with pytest.raises(TypeError, match="faults must be a FaultMix"):
        server.faults = "often"  # type: ignore[assignment]  # deliberately wrong
