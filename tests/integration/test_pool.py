"""The connection pool and client lifecycle: release on break, cancel and end; limits; loops; closing.

The FakeNebulaServer (``fake``) serves the plain calls, delays and paced streams; the hand-rolled
``server`` does what it can't: count TCP connections and calls in flight, hold calls until the test
releases them, send several events in one write and then stall with the body open.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from nebula_async import AsyncNebulaClient, TextGeneration, TextStream
from nebula_async.testing import FakeNebulaServer
from tests.conftest import LocalServer
from tests.helpers import sse, success_body
from tests.integration._support import (
    HELLO,
    STALL,
    Handler,
    chunk,
    collect,
    echo,
    events,
    make_client,
    open_stream,
    wait_until,
)


def _track_peers(server: LocalServer, inner: Handler) -> list[object]:
    """Wrap ``inner`` so each request records its client's (host, port): one port per TCP connection."""
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await inner(request)

    server.handler = handler
    return peers


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    return web.json_response(success_body(f"echo:{body['prompt']}"), headers={"x-request-id": body["prompt"]})


async def _long_stream_then_json(request: web.Request) -> web.StreamResponse:
    """Answer a stream with 3 events then stall; answer anything else with a success at once."""
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(success_body("next call"))
    response = await open_stream(request)
    await response.write(sse(chunk("e0"), chunk("e1"), chunk("e2")))  # one write
    await asyncio.sleep(STALL)
    return response


async def test_break_without_async_with_warns_and_releases(server: LocalServer) -> None:
    """Breaking out of a plain ``async for`` warns ResourceWarning and frees the only pooled connection."""
    server.handler = _long_stream_then_json
    async with make_client(server.base_url, max_connections=1) as client:
        with pytest.warns(ResourceWarning, match="TextStream was not closed"):
            received = await _break_after_three(client.stream_text(model="m", prompt="p"))
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert received == ["e0", "e1", "e2"]
    assert result.text == "next call"


async def test_break_inside_async_with_releases_without_warning(server: LocalServer) -> None:
    """Leaving ``async with`` after 3 events frees the connection at once, with no warning."""
    server.handler = _long_stream_then_json
    async with make_client(server.base_url, max_connections=1) as client:
        async with client.stream_text(model="m", prompt="p") as stream:
            async for piece in stream:
                if piece.text == "e2":
                    break
        assert stream.text == "e0e1e2"
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert result.text == "next call"


async def test_explicit_aclose_releases_and_is_idempotent(server: LocalServer) -> None:
    """aclose() mid-stream frees the only pooled connection at once and can be called twice."""
    server.handler = _long_stream_then_json
    async with make_client(server.base_url, max_connections=1) as client:
        stream = client.stream_text(model="m", prompt="p")
        first = await stream.__anext__()
        await stream.aclose()
        await stream.aclose()
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert first.text == "e0"
    assert result.text == "next call"


async def test_stream_closed_early_cannot_be_iterated_again(server: LocalServer) -> None:
    """After aclose() before the end, iterating raises RuntimeError, even for events already read."""
    server.handler = _long_stream_then_json  # its three events arrive in one read
    async with make_client(server.base_url, max_connections=1) as client:
        stream = client.stream_text(model="m", prompt="p")
        first = await stream.__anext__()
        await stream.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await stream.__anext__()
    assert first.text == "e0"
    assert stream.text == "e0"


async def test_streams_read_to_the_end_reuse_one_connection(server: LocalServer) -> None:
    """Twenty streams read to their end, without ``async with``, reuse a single TCP connection."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(events("a", "b", "c"))
        await response.write_eof()
        return response

    peers = _track_peers(server, stream)
    async with make_client(server.base_url, max_connections=1) as client:
        for _ in range(20):
            texts = await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p")), 2)
            assert texts == ["a", "b", "c"]
    assert len(peers) == 20
    assert len(set(peers)) == 1


async def test_stream_tail_after_final_event_is_drained_for_reuse(server: LocalServer) -> None:
    """A [DONE] that trails the final event is drained, so the connection is reused, not torn down."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(events("x"))
        await asyncio.sleep(0.03)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    peers = _track_peers(server, stream)
    async with make_client(server.base_url, max_connections=1) as client:
        for _ in range(3):
            async with client.stream_text(model="m", prompt="p") as s:
                assert [c.text async for c in s] == ["x"]
    assert len(set(peers)) == 1


async def test_plain_calls_reuse_one_connection(server: LocalServer) -> None:
    """Twenty sequential calls on one client go over a single kept-alive TCP connection."""
    peers = _track_peers(server, _echo)
    async with make_client(server.base_url) as client:
        for i in range(20):
            assert (await client.generate_text(model="m", prompt=f"p{i}")).text == f"echo:p{i}"
    assert len(set(peers)) == 1


async def test_max_connections_bounds_open_connections(server: LocalServer) -> None:
    """With max_connections=3, twenty concurrent slow calls never use more than 3 connections at once."""
    current = 0
    highest = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal current, highest
        current += 1
        highest = max(highest, current)
        await asyncio.sleep(0.01)
        current -= 1
        return await _echo(request)

    peers = _track_peers(server, slow)
    async with make_client(server.base_url, max_connections=3) as client:
        results = await asyncio.gather(*(client.generate_text(model="m", prompt=f"p{i}") for i in range(20)))
    assert [r.text for r in results] == [f"echo:p{i}" for i in range(20)]
    assert highest == 3
    assert len(set(peers)) == 3


async def test_cancelling_a_task_mid_stream_releases(server: LocalServer) -> None:
    """Cancelling a task while it reads a stream frees its connection for the next call."""
    server.handler = _long_stream_then_json
    got_three = asyncio.Event()
    received: list[str] = []

    async def consume(client: AsyncNebulaClient) -> None:
        async for piece in client.stream_text(model="m", prompt="p"):
            received.append(piece.text)
            if len(received) == 3:
                got_three.set()

    async with make_client(server.base_url, max_connections=1) as client:
        task = asyncio.create_task(consume(client))
        await asyncio.wait_for(got_three.wait(), 2)
        await asyncio.sleep(0.01)  # the task is now waiting on the socket for a 4th event
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert received == ["e0", "e1", "e2"]
    assert result.text == "next call"


async def test_cancelling_waiters_for_a_pooled_connection(server: LocalServer) -> None:
    """Cancelling 50 calls queued for a pooled connection leaves the pool healthy, now and after."""
    release = asyncio.Event()
    in_flight: list[str] = []

    async def gated(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        in_flight.append(body["prompt"])
        await release.wait()
        return await _echo(request)

    server.handler = gated
    async with make_client(server.base_url, max_connections=2) as client:
        tasks = {
            f"p{i}": asyncio.create_task(client.generate_text(model="m", prompt=f"p{i}")) for i in range(52)
        }
        await wait_until(lambda: len(in_flight) == 2)
        await asyncio.sleep(0.02)  # the other 50 are queued in the connector by now
        holders = list(in_flight)
        assert len(holders) == 2
        waiters = [task for prompt, task in tasks.items() if prompt not in holders]
        for task in waiters:
            task.cancel()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        release.set()
        first = await asyncio.wait_for(asyncio.gather(*(tasks[p] for p in holders)), 2)
        after = await asyncio.wait_for(
            asyncio.gather(*(client.generate_text(model="m", prompt=f"after{i}") for i in range(6))), 2
        )
    assert [r.text for r in first] == [f"echo:{p}" for p in holders]
    assert [r.text for r in after] == [f"echo:after{i}" for i in range(6)]
    assert len(server.requests) == 2 + 6  # the cancelled waiters never reached the server


async def test_cancelling_everything_in_flight_and_queued(fake: FakeNebulaServer) -> None:
    """Cancelling all calls, those holding connections too, leaves a max_connections=2 pool usable."""
    fake.reply = echo
    fake.delay_next(52, seconds=STALL)  # hold every call that reaches the server
    async with make_client(fake.base_url, max_connections=2) as client:
        tasks = [asyncio.create_task(client.generate_text(model="m", prompt=f"p{i}")) for i in range(52)]
        await wait_until(lambda: len(fake.requests) == 2)
        await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)
        fake.reset()  # drops the delays not yet used: later calls are answered at once
        after = await asyncio.wait_for(
            asyncio.gather(*(client.generate_text(model="m", prompt=f"a{i}") for i in range(4))), 2
        )
    assert [r.text for r in after] == [f"echo:a{i}" for i in range(4)]


async def test_two_hundred_concurrent_calls(fake: FakeNebulaServer) -> None:
    """Two hundred concurrent calls on one client all succeed, each with its own result and request id."""
    fake.reply = echo
    async with make_client(fake.base_url) as client:
        results = await asyncio.gather(*(client.generate_text(model="m", prompt=f"p{i}") for i in range(200)))
    request_ids = {r.json["prompt"]: r.request_id for r in fake.requests}
    assert [(r.text, r.request_id) for r in results] == [
        (f"echo:p{i}", request_ids[f"p{i}"]) for i in range(200)
    ]
    assert len(set(request_ids.values())) == 200
    assert all(isinstance(r, TextGeneration) and r.retries == 0 for r in results)
    assert len(fake.requests) == 200


async def test_fifty_concurrent_streams(fake: FakeNebulaServer) -> None:
    """Fifty concurrent streams on a client limited to 10 connections each get their own text."""
    fake.reply = lambda request: f"{request.prompt}!"  # two chunks: the prompt, then "!"
    fake.token_delay = 0.005
    async with make_client(fake.base_url, max_connections=10) as client:
        texts = await asyncio.gather(
            *(_text(client.stream_text(model="m", prompt=f"s{i}")) for i in range(50))
        )
    assert texts == [f"s{i}!" for i in range(50)]


async def test_closed_client_raises_a_clear_error(fake: FakeNebulaServer) -> None:
    """Every method of a closed client raises RuntimeError saying it is closed; aclose() stays idempotent."""
    client = make_client(fake.base_url)
    await client.generate_text(model="m", prompt="p")
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate_text(model="m", prompt="p")
    with pytest.raises(RuntimeError, match="closed"):
        async for _ in client.stream_text(model="m", prompt="p"):
            pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate_many([{"model": "m", "prompt": "p"}])
    assert len(fake.requests) == 1


async def test_client_closed_before_first_use(fake: FakeNebulaServer) -> None:
    """A client closed before any call raises RuntimeError on its first call and sends nothing."""
    async with make_client(fake.base_url) as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate_text(model="m", prompt="p")
    assert fake.requests == []


async def test_second_event_loop_raises_instead_of_hanging(fake: FakeNebulaServer) -> None:
    """A client used from a second event loop (another thread) raises RuntimeError instead of hanging."""
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")

        def in_other_loop() -> object:
            return asyncio.run(client.generate_text(model="m", prompt="p"))

        def stream_in_other_loop() -> object:
            return asyncio.run(collect(client.stream_text(model="m", prompt="p")))

        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.wait_for(asyncio.to_thread(in_other_loop), 5)
        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.wait_for(asyncio.to_thread(stream_in_other_loop), 5)
        again = await client.generate_text(model="m", prompt="p")
    assert again.text == HELLO
    assert len(fake.requests) == 2


async def test_caller_session_is_used_and_left_open(fake: FakeNebulaServer) -> None:
    """A caller-owned ClientSession carries the calls and is still open after client.aclose()."""
    async with aiohttp.ClientSession(headers={"X-Caller-Session": "yes"}) as session:
        client = make_client(fake.base_url, session=session)
        result = await client.generate_text(model="m", prompt="p")
        texts = await collect(client.stream_text(model="m", prompt="p"))
        await client.aclose()
        assert not session.closed
        async with session.get(f"http://127.0.0.1:{fake.port}/nowhere") as response:
            assert response.status == 404  # the session still works for its owner
    assert result.text == HELLO
    assert texts == ["Hello", ",", " World", "!"]
    assert [(r.method, r.path, r.headers.get("X-Caller-Session")) for r in fake.requests] == [
        ("POST", "/v1/text/generate", "yes"),
        ("POST", "/v1/text/generate", "yes"),
        ("GET", "/nowhere", "yes"),
    ]


async def _text(stream: TextStream) -> str:
    return "".join(await collect(stream))


async def _break_after_three(stream: TextStream) -> list[str]:
    """Iterate with a plain ``async for`` and break after 3 chunks; the stream is dropped on return."""
    received: list[str] = []
    async for piece in stream:
        received.append(piece.text)
        if len(received) == 3:
            break
    return received
