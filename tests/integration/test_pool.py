"""The connection pool and client lifecycle: release on break, cancel and end; background drains; limits;
event loops; closing the client while calls run.

The FakeNebulaServer (``fake``) serves the plain calls, delays and paced streams; the hand-rolled
``server`` does what it can't: count TCP connections and calls in flight, hold calls until the test
releases them, send several events in one write and then stall with the body open, answer an error late.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
import warnings

import aiohttp
import pytest
from aiohttp import web

from nebula_async import AsyncNebulaClient, InvalidRequestError, ServerError, TextGeneration, TextStream
from nebula_async.testing import FakeNebulaServer
from tests.conftest import Handler, LocalServer
from tests.helpers import NO_RETRY, error_body, sse, success_body
from tests.integration._support import (
    HELLO,
    STALL,
    break_after,
    chunk,
    collect,
    echo,
    events,
    make_client,
    open_stream,
    track_peers,
    wait_until,
)


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


@pytest.mark.parametrize("warnings_are", ["warnings", "errors"])
async def test_break_without_async_with_warns_and_releases(
    server: LocalServer, unraisables: list[BaseException | None], warnings_are: str
) -> None:
    """Breaking out of a plain ``async for`` warns ResourceWarning and frees the only pooled connection."""
    server.handler = _long_stream_then_json
    async with make_client(server.base_url, max_connections=1) as client:
        if warnings_are == "warnings":
            with pytest.warns(ResourceWarning, match="TextStream was not closed"):
                received = await break_after(client.stream_text(model="m", prompt="p"), 3)
        else:
            # Regression (review of 6705a48): with ResourceWarning an error, __del__ must still close the
            # response (before it warns), or the only pooled connection is lost.
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                received = await break_after(client.stream_text(model="m", prompt="p"), 3)
                gc.collect()
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert received == ["e0", "e1", "e2"]
    assert result.text == "next call"
    if warnings_are == "errors":
        assert len(unraisables) == 1  # TextStream.__del__ raised its warning, after closing the response
        assert isinstance(unraisables[0], ResourceWarning)
        assert "TextStream was not closed" in str(unraisables[0])
    else:
        assert unraisables == []


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

    peers = track_peers(server, stream)
    async with make_client(server.base_url, max_connections=1) as client:
        for _ in range(20):
            texts = await asyncio.wait_for(collect(client.stream_text(model="m", prompt="p")), 2)
            assert texts == ["a", "b", "c"]
    assert len(peers) == 20
    assert len(set(peers)) == 1


async def test_plain_calls_reuse_one_connection(server: LocalServer) -> None:
    """Twenty sequential calls on one client go over a single kept-alive TCP connection."""
    peers = track_peers(server, _echo)
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

    peers = track_peers(server, slow)
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


@pytest.mark.parametrize("operation", ["generate", "stream"])
async def test_another_event_loop_raises_and_the_client_still_works(
    fake: FakeNebulaServer, operation: str
) -> None:
    """A call or a stream from a second event loop raises RuntimeError; the client still works."""
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")

        def in_other_loop() -> object:
            if operation == "generate":
                return asyncio.run(client.generate_text(model="m", prompt="p"))
            return asyncio.run(collect(client.stream_text(model="m", prompt="p")))

        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.wait_for(asyncio.to_thread(in_other_loop), 5)
        again = await client.generate_text(model="m", prompt="p")  # the failed attempt closed nothing
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


# --- a finished stream's tail is drained in the background ---------------------------------------


def _final_then_tail(tail_after: float) -> Handler:
    """Answer a stream with its final event, then ``[DONE]`` ``tail_after`` s later; a plain call at once."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(success_body("next call"))
        response = await open_stream(request)
        await response.write(events("Hi"))
        await asyncio.sleep(tail_after)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    return handler


async def _time_to_leave_the_loop(stream: TextStream, *, enter: bool = False) -> float:
    """Iterate ``stream`` (in ``async with`` if ``enter``); return the seconds from its last chunk to exit."""
    last = time.monotonic()
    if enter:
        async with stream:
            async for _ in stream:
                last = time.monotonic()
    else:
        async for _ in stream:
            last = time.monotonic()
    return time.monotonic() - last


@pytest.mark.parametrize("enter", [False, True], ids=["async-for", "async-with"])
async def test_short_tail_is_drained_in_the_background_and_the_connection_reused(
    server: LocalServer, enter: bool
) -> None:
    """A tail 0.2 s after the final event doesn't delay the loop; the next call reuses the connection."""
    # Regression (6705a48, "background drain"): the loop waited for the tail before it ended.
    peers = track_peers(server, _final_then_tail(0.2))
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        lag = await _time_to_leave_the_loop(client.stream_text(model="m", prompt="p"), enter=enter)
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert lag < 0.1
    assert result.text == "next call"
    assert len(peers) == 2
    assert peers[0] == peers[1]


async def test_loop_ends_at_the_final_event_while_the_body_stays_open(server: LocalServer) -> None:
    """The loop ends at once after the final event though the body stays open 1.5 s, and the pool recovers."""
    server.handler = _final_then_tail(1.5)
    async with make_client(server.base_url, max_connections=1, retry=NO_RETRY) as client:
        stream = client.stream_text(model="m", prompt="p")
        lag = await _time_to_leave_the_loop(stream)
        result = await asyncio.wait_for(client.generate_text(model="m", prompt="p"), 2)
    assert lag < 0.3
    assert stream.text == "Hi"
    assert result.text == "next call"


async def test_closing_the_client_while_a_drain_is_pending_is_clean(
    server: LocalServer, unraisables: list[BaseException | None], caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() while a finished stream's tail is being drained leaves no warning, error or task."""
    caplog.set_level(logging.ERROR)  # "Task was destroyed but it is pending!" is logged by asyncio
    server.handler = _final_then_tail(STALL)
    client = make_client(server.base_url, retry=NO_RETRY)
    texts = await collect(client.stream_text(model="m", prompt="p"))
    await client.aclose()
    await asyncio.sleep(0.01)
    gc.collect()
    assert texts == ["Hi"]
    assert unraisables == []
    assert [r.getMessage() for r in caplog.records] == []


async def test_cancelled_aclose_still_closes_the_session(
    server: LocalServer, unraisables: list[BaseException | None], caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() cancelled while it waits for a background drain still closes the session, with no warning."""
    # Regression (second review, "cancel-safe aclose"): a cancelled aclose() left the session open.
    caplog.set_level(logging.ERROR)  # "Task was destroyed but it is pending!" is logged by asyncio
    open_bodies = 0

    async def final_then_stall(request: web.Request) -> web.StreamResponse:
        nonlocal open_bodies
        open_bodies += 1
        try:
            response = await open_stream(request)
            await response.write(events("Hi"))
            await asyncio.sleep(STALL)  # cancelled when the client closes the connection
            return response
        finally:
            open_bodies -= 1

    server.handler = final_then_stall
    client = make_client(server.base_url, retry=NO_RETRY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = await collect(client.stream_text(model="m", prompt="p"))
        assert open_bodies == 1  # the body is still open: its tail is being drained in the background
        closing = asyncio.create_task(client.aclose())
        await asyncio.sleep(0)  # aclose() has cancelled the drain and now waits for it
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await wait_until(lambda: open_bodies == 0)  # the connection was closed
        with pytest.raises(RuntimeError, match="client is closed"):
            await client.generate_text(model="m", prompt="p")
        await client.aclose()  # a second aclose() has nothing left to do
        del client  # an unclosed session would warn "Unclosed client session" when collected
        await asyncio.sleep(0.01)
        gc.collect()
    assert texts == ["Hi"]
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert unraisables == []
    assert [r.getMessage() for r in caplog.records] == []
    assert len(server.requests) == 1


# --- closing the client while calls run -----------------------------------------------------------

CLOSED_MID_CALL = "closed while the call was running"


async def test_aclose_fails_calls_waiting_for_a_pooled_connection_with_runtime_error(
    fake: FakeNebulaServer,
) -> None:
    """aclose() ends the call holding the only connection and the two queued behind it with RuntimeError."""
    # Regression (second review): the queued calls ended with a bare CancelledError nobody asked for.
    fake.delay_next(3, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1)
    tasks = [asyncio.create_task(client.generate_text(model="m", prompt=f"p{i}")) for i in range(3)]
    await wait_until(lambda: len(fake.requests) == 1)  # p0 holds the connection; p1 and p2 wait for it
    await client.aclose()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
    assert [type(outcome) for outcome in outcomes] == [RuntimeError] * 3
    assert all(CLOSED_MID_CALL in str(outcome) for outcome in outcomes)
    assert [task.cancelled() for task in tasks] == [False] * 3  # nobody cancelled them
    assert [r.json["prompt"] for r in fake.requests] == ["p0"]  # no retry, no queued call sent


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Task.cancelling() tells the two cancellations apart only on 3.11+"
)
async def test_call_cancelled_by_its_caller_while_aclose_runs_stays_cancelled(fake: FakeNebulaServer) -> None:
    """A queued call that its caller cancels while aclose() runs still ends cancelled."""
    fake.delay_next(2, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1)
    holder = asyncio.create_task(client.generate_text(model="m", prompt="p0"))
    queued = asyncio.create_task(client.generate_text(model="m", prompt="p1"))
    await wait_until(lambda: len(fake.requests) == 1)
    queued.cancel()
    await client.aclose()
    outcomes = await asyncio.wait_for(asyncio.gather(holder, queued, return_exceptions=True), 2)
    assert isinstance(outcomes[0], RuntimeError)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert queued.cancelled()


async def test_generate_many_over_a_client_being_closed_raises_runtime_error(fake: FakeNebulaServer) -> None:
    """generate_many(return_exceptions=True) over a client being closed raises RuntimeError."""
    fake.delay_next(3, seconds=STALL)
    client = make_client(fake.base_url, max_connections=1)
    batch = asyncio.create_task(
        client.generate_many(
            [{"model": "m", "prompt": f"p{i}"} for i in range(3)], concurrency=3, return_exceptions=True
        )
    )
    await wait_until(lambda: len(fake.requests) == 1)
    await client.aclose()
    [outcome] = await asyncio.wait_for(asyncio.gather(batch, return_exceptions=True), 2)
    assert isinstance(outcome, RuntimeError)  # raised, or in the results: either way never CancelledError
    assert CLOSED_MID_CALL in str(outcome)
    assert not batch.cancelled()
    assert len(fake.requests) == 1


def _late(status: int, body: object, delay: float = 0.2) -> Handler:
    """Answer every request with ``body`` and ``status`` after ``delay`` s."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.json_response(body, status=status, headers={"x-request-id": "req_late"})

    return handler


async def _call_across_aclose(server: LocalServer | FakeNebulaServer) -> object:
    """Start a call on a caller's session, aclose() the client while it is in flight; return its outcome."""
    async with aiohttp.ClientSession() as session:
        client = make_client(server.base_url, session=session)
        call = asyncio.create_task(client.generate_text(model="m", prompt="p"))
        await wait_until(lambda: len(server.requests) == 1)  # sent; the answer is 0.2 s away
        await client.aclose()
        assert not call.done()
        [outcome] = await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 2)
        assert not session.closed  # the caller's session is the caller's to close
    return outcome


async def test_in_flight_non_retryable_error_is_raised_as_is_after_aclose(server: LocalServer) -> None:
    """A call in flight during aclose() (caller's session) that gets a 400 raises InvalidRequestError."""
    # Regression (second review): a closed client masked the API's answer with its own RuntimeError.
    # The fake delays an answer or fails it, not both: a late error needs the hand-rolled server.
    server.handler = _late(400, error_body("invalid_request", "bad prompt"), delay=0.2)
    outcome = await _call_across_aclose(server)
    assert isinstance(outcome, InvalidRequestError), repr(outcome)
    assert outcome.status_code == 400
    assert outcome.request_id == "req_late"
    assert len(server.requests) == 1


async def test_in_flight_retryable_error_after_aclose_raises_runtime_error(server: LocalServer) -> None:
    """A call in flight during aclose() that gets a retryable 503 raises RuntimeError: no retry is sent."""
    server.handler = _late(503, error_body("server_error", "busy"), delay=0.2)
    outcome = await _call_across_aclose(server)
    assert isinstance(outcome, RuntimeError), repr(outcome)
    assert CLOSED_MID_CALL in str(outcome)
    assert isinstance(outcome.__cause__, ServerError)
    assert len(server.requests) == 1


async def test_in_flight_success_after_aclose_is_returned(fake: FakeNebulaServer) -> None:
    """A call in flight during aclose() (caller's session) that gets a 200 returns its result."""
    fake.delay_next(seconds=0.2)
    fake.replies["p"] = "made it"
    outcome = await _call_across_aclose(fake)
    assert isinstance(outcome, TextGeneration), repr(outcome)
    assert outcome.text == "made it"
