"""The blocking NebulaClient: calls, retries, errors, threads, construction and close.

Most tests use the FakeNebulaServer (``fake_thread``, ``fake_client``); streams are in
test_sync_stream.py, generate_many in test_sync_many.py.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

import nebula_async
import nebula_sync
from nebula_async.testing import FakeNebulaServer, count_tokens
from nebula_sync import (
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NebulaClient,
    NebulaError,
    RateLimitError,
    TextGeneration,
    Usage,
)
from tests.sync._support import (
    KEY,
    loop_threads,
)


def test_api_reference_example_works_as_written(
    fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API reference's Python example, unchanged but for the import, returns the server's text."""
    monkeypatch.setenv("NEBULA_BASE_URL", fake_thread.base_url)  # the example has no base_url
    from nebula_sync import NebulaClient

    client = NebulaClient(api_key="YOUR_API_KEY")

    response = client.generate_text(
        model="gpt-4", prompt="Write a hello world program in Python", max_tokens=100
    )

    prompt = "Write a hello world program in Python"
    assert response.text == f"echo: {prompt}"
    assert isinstance(response, TextGeneration)
    used = (count_tokens(prompt), count_tokens(response.text))
    assert response.usage == Usage(*used, sum(used))
    [request] = fake_thread.requests
    assert response.request_id == request.request_id
    assert request.json == {"model": "gpt-4", "prompt": prompt, "max_tokens": 100}
    assert request.headers["Authorization"] == "Bearer YOUR_API_KEY"
    client.close()


def test_eight_threads_share_one_client(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """8 threads making 25 calls each on one client all get their own prompt's answer, streams included."""
    barrier = threading.Barrier(8)

    def work(thread: int) -> list[tuple[str, str]]:
        barrier.wait()
        out = []
        for call in range(25):
            prompt = f"t{thread}-c{call}"
            if call % 5 == 4:
                with fake_client.stream_text(model="m", prompt=prompt) as stream:
                    for _ in stream:
                        pass
                out.append((prompt, stream.text))
            else:
                out.append((prompt, fake_client.generate_text(model="m", prompt=prompt).text))
        return out

    with ThreadPoolExecutor(8) as pool:
        per_thread = list(pool.map(work, range(8)))
    for results in per_thread:
        assert len(results) == 25
        for prompt, text in results:
            assert text == f"echo: {prompt}"
    assert len(fake_thread.requests) == 200
    assert len({r.json["prompt"] for r in fake_thread.requests}) == 200


def test_works_inside_a_running_event_loop(fake_thread: FakeNebulaServer) -> None:
    """Called straight from a coroutine, as in a Jupyter cell, the sync client works: call, stream, batch."""

    async def notebook_cell() -> tuple[str, str, list[str]]:
        asyncio.get_running_loop()  # this thread runs an event loop, like Jupyter's
        client = NebulaClient(KEY, base_url=fake_thread.base_url)
        try:
            text = client.generate_text(model="m", prompt="cell").text
            with client.stream_text(model="m", prompt="s") as stream:
                streamed = "".join(chunk.text for chunk in stream)
            many = [
                r.text for r in client.generate_many([{"model": "m", "prompt": f"{i}"} for i in range(3)])
            ]
        finally:
            client.close()
        return text, streamed, many

    assert asyncio.run(notebook_cell()) == ("echo: cell", "echo: s", ["echo: 0", "echo: 1", "echo: 2"])


def test_a_client_made_outside_works_inside_a_running_loop(fake_client: NebulaClient) -> None:
    """A client created in plain code keeps working when later called from inside a running event loop."""
    assert fake_client.generate_text(model="m", prompt="before").text == "echo: before"

    async def cell() -> str:
        return fake_client.generate_text(model="m", prompt="inside").text

    assert asyncio.run(cell()) == "echo: inside"


def test_rate_limit_after_retries_exhausted(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """A server always answering 429 sees 1 + max_retries requests; the RateLimitError keeps retry_after."""
    fake_thread.fail_next(1000, status=429, code="rate_limit_exceeded", retry_after=0)
    with pytest.raises(RateLimitError) as info:
        fake_client.generate_text(model="m", prompt="p")
    err = info.value
    assert type(err) is nebula_async.RateLimitError
    assert err.retry_after == 0.0
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert len(fake_thread.requests) == 3
    assert err.request_id == fake_thread.requests[2].request_id  # the last attempt's error, not the first


def test_retried_call_succeeds(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """Two 429s with Retry-After: 0 are retried and the third answer is returned, saying it took 2 retries."""
    fake_thread.fail_next(2, status=429, code="rate_limit_exceeded", retry_after=0)
    result = fake_client.generate_text(model="m", prompt="p")
    assert result.text == "echo: p"
    assert result.retries == 2
    assert [r.status for r in fake_thread.requests] == [429, 429, 200]


def test_per_call_max_retries(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """max_retries=0 on one call sends it once and raises the first RateLimitError."""
    fake_thread.fail_next(1000, status=429, code="rate_limit_exceeded", retry_after=0)
    with pytest.raises(RateLimitError):
        fake_client.generate_text(model="m", prompt="p", max_retries=0)
    assert len(fake_thread.requests) == 1


def test_insufficient_quota_is_not_retried(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """A 429 whose code is insufficient_quota is raised as InsufficientQuotaError after one request."""
    fake_thread.fail_next(1000, status=429, code="insufficient_quota", retry_after=0)
    with pytest.raises(InsufficientQuotaError) as info:
        fake_client.generate_text(model="m", prompt="p")
    assert not isinstance(info.value, RateLimitError)
    assert len(fake_thread.requests) == 1


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [("model_not_found", 404, ModelNotFoundError), ("invalid_request", 400, InvalidRequestError)],
)
def test_errors_keep_their_class_for_calls_and_streams(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, code: str, status: int, cls: type[Exception]
) -> None:
    """An error answer raises the same class from generate_text and from a stream, unretried."""
    fake_thread.fail_next(1000, status=status, code=code, message="nope")
    with pytest.raises(cls) as call_info:
        fake_client.generate_text(model="m", prompt="p")
    with pytest.raises(cls) as stream_info, fake_client.stream_text(model="m", prompt="p"):
        pass
    requests = fake_thread.requests
    assert len(requests) == 2
    for err, request in zip((call_info.value, stream_info.value), requests, strict=True):
        assert isinstance(err, nebula_sync.APIError)
        assert err.status_code == status
        assert err.code == code
        assert err.request_id == request.request_id


def test_close_is_idempotent_and_stops_the_thread(fake_thread: FakeNebulaServer) -> None:
    """close() twice is fine, stops the client's thread, and later calls raise a clear RuntimeError."""
    before = len(loop_threads())
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    assert len(loop_threads()) == before + 1
    assert client.generate_text(model="m", prompt="p").text == "echo: p"
    client.close()
    client.close()
    assert len(loop_threads()) == before
    with pytest.raises(RuntimeError, match="client is closed"):
        client.generate_text(model="m", prompt="p")
    with pytest.raises(RuntimeError, match="client is closed"):
        client.generate_many([{"model": "m", "prompt": "p"}])
    stream = client.stream_text(model="m", prompt="p")
    with pytest.raises(RuntimeError, match="client is closed"):
        next(stream)
    with pytest.raises(RuntimeError, match="client is closed"), stream:
        pass
    assert len(fake_thread.requests) == 1


def test_pickling_a_client_says_to_create_it_in_the_worker() -> None:
    """A process pool's pickling of the client fails with a TypeError that names the fix."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    with NebulaClient(KEY) as client:
        with pytest.raises(TypeError, match=r"NebulaClient can't be pickled.*in the process pool's init"):
            pickle.dumps(client)
        with ProcessPoolExecutor(1) as pool, pytest.raises(TypeError, match="in the worker"):
            pool.submit(str, client).result(timeout=20)


def test_with_block_closes_the_client(fake_thread: FakeNebulaServer) -> None:
    """Leaving ``with NebulaClient(...)`` closes the client and stops its thread."""
    before = len(loop_threads())
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client.generate_text(model="m", prompt="p").text == "echo: p"
    assert len(loop_threads()) == before
    with pytest.raises(RuntimeError, match="client is closed"):
        client.generate_text(model="m", prompt="p")


def test_with_block_closes_the_client_on_error(fake_thread: FakeNebulaServer) -> None:
    """An exception leaving ``with NebulaClient(...)`` still closes the client."""
    before = len(loop_threads())
    with pytest.raises(KeyError), NebulaClient(KEY, base_url=fake_thread.base_url):
        raise KeyError("boom")
    assert len(loop_threads()) == before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, NebulaError, "NEBULA_API_KEY"),
        ({"api_key": ""}, NebulaError, "NEBULA_API_KEY"),
        ({"api_key": KEY, "base_url": "ftp://example.com"}, ValueError, "base_url"),
        ({"api_key": KEY, "base_url": "http://127.0.0.1:99999/v1"}, ValueError, "base_url"),
        ({"api_key": KEY, "base_url": "http://[::1/v1"}, ValueError, "base_url"),
        ({"api_key": KEY, "max_connections": 0}, ValueError, "max_connections"),
        ({"api_key": KEY, "timeout": -1}, ValueError, "must be a finite number"),
        ({"api_key": KEY, "max_retries": -1}, ValueError, "max_retries"),
        ({"api_key": KEY, "retry": 3}, TypeError, "retry"),
        ({"api_key": KEY, "default_headers": {"X-N": 1}}, TypeError, "default_headers"),
    ],
    ids=[
        "no-key",
        "empty-key",
        "base-url",
        "base-url-port-out-of-range",
        "base-url-broken-ipv6",
        "max-connections",
        "timeout",
        "max-retries",
        "retry",
        "headers",
    ],
)
def test_bad_arguments_raise_before_a_thread_starts(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad constructor arguments raise, naming the argument, without starting a thread."""
    before = threading.active_count()
    with pytest.raises(error, match=match):
        NebulaClient(**kwargs)
    assert threading.active_count() == before
    assert loop_threads() == []


def test_a_session_is_refused_before_a_thread_starts() -> None:
    """NebulaClient(session=...) raises TypeError pointing at AsyncNebulaClient, without starting a thread."""

    async def make_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    session = asyncio.run(make_session())
    before = threading.active_count()
    try:
        with pytest.raises(TypeError, match="AsyncNebulaClient"):
            NebulaClient(KEY, session=session)
        assert threading.active_count() == before
    finally:
        asyncio.run(session.close())


@pytest.mark.parametrize("value", ["yes", "true", " 1"])
def test_a_bad_uvloop_value_fails_before_a_thread_starts(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEBULA_SYNC_UVLOOP other than 1 or 0 is a ValueError naming the variable; no loop thread is left."""
    monkeypatch.setenv("NEBULA_SYNC_UVLOOP", value)
    before = threading.active_count()
    with pytest.raises(ValueError, match=r"NEBULA_SYNC_UVLOOP must be 1 or 0, got"):
        NebulaClient(KEY, base_url="http://127.0.0.1:9/v1")
    assert threading.active_count() == before


def test_calls_and_streams_work_on_uvloop(
    fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NEBULA_SYNC_UVLOOP=1 (the loop type itself: test_sync_runtime.py) calls, streams, close() work."""
    pytest.importorskip("uvloop")
    monkeypatch.setenv("NEBULA_SYNC_UVLOOP", "1")
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client.generate_text(model="m", prompt="hello there").text == "echo: hello there"
        with client.stream_text(model="m", prompt="one two three") as stream:
            assert "".join(chunk.text for chunk in stream) == "echo: one two three"


def test_bad_call_arguments_send_nothing(fake_client: NebulaClient, fake_thread: FakeNebulaServer) -> None:
    """Bad call arguments raise ValueError/TypeError naming the argument, and nothing reaches the server."""
    with pytest.raises(ValueError, match="max_tokens"):
        fake_client.generate_text(model="m", prompt="p", max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        fake_client.stream_text(model="m", prompt="p", temperature=3)  # checked when the stream is made
    with pytest.raises(ValueError, match="model"):
        fake_client.generate_text(model="", prompt="p")
    with pytest.raises(TypeError, match="stop"):
        fake_client.generate_text(model="m", prompt="p", stop="END")
    assert fake_thread.requests == []
    assert fake_client.generate_text(model="m", prompt="ok").text == "echo: ok"  # the client is still fine


def test_key_is_not_in_repr(fake_client: NebulaClient) -> None:
    """The client's repr names its base URL and never the API key."""
    assert KEY not in repr(fake_client)
    assert "127.0.0.1" in repr(fake_client)
