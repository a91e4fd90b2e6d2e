"""The public signatures, pinned for type checkers: mypy checks this file, nothing runs it.

A change that alters what a user's type checker sees (a return type, a keyword, an overload) fails
``mypy`` here. Pytest does not collect it (its name does not start with ``test_``).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from typing_extensions import assert_type  # typing.assert_type is 3.11+; the package supports 3.10

import nebula_async
import nebula_sync
from nebula_async import (
    APIConnectionError,
    APIError,
    AsyncNebulaClient,
    BatchInputError,
    BatchProgress,
    BatchSummary,
    GenerateRequest,
    Outcome,
    RateLimit,
    RateLimitError,
    RetryPolicy,
    TextChunk,
    TextGeneration,
    TextStream,
    Timeout,
    Usage,
)
from nebula_sync import NebulaClient

# --- configuration ----------------------------------------------------------------------------------

timeout = Timeout(connect=1.0, read=None, total=30, stream_idle=5.0)
assert_type(timeout.connect, float | None)
assert_type(timeout.read, float | None)
assert_type(timeout.total, float | None)
assert_type(timeout.stream_idle, float | None)
assert_type(Timeout.coerce(10.0), Timeout)
assert_type(Timeout.coerce(None), Timeout)

policy = RetryPolicy(max_retries=3, initial_delay=0.1, max_delay=2.0, jitter=False, max_retry_after=30.0)
assert_type(policy.max_retries, int)
assert_type(policy.initial_delay, float)
assert_type(policy.max_delay, float)
assert_type(policy.jitter, bool)
assert_type(policy.max_retry_after, float)

assert_type(nebula_async.__version__, str)
assert_type(nebula_sync.__version__, str)

# --- rate limits -------------------------------------------------------------------------------------

limit = RateLimit(requests_per_minute=600.0, tokens_per_minute=90_000, burst_seconds=0.5)
assert_type(limit.requests_per_minute, float | None)
assert_type(limit.tokens_per_minute, float | None)
assert_type(limit.burst_seconds, float)
assert_type(limit.token_counter, Callable[[str], int] | None)
assert_type(limit.estimate("prompt", 100), int)
assert_type(limit.estimate("prompt", None), int)

# --- models ------------------------------------------------------------------------------------------

request = GenerateRequest("gpt-4", "Say hi", max_tokens=20, temperature=0.5, top_p=1.0, stop=["\n"])
assert_type(request.model, str)
assert_type(request.max_tokens, int | None)
assert_type(request.temperature, float | None)
assert_type(request.stop, tuple[str, ...] | None)


def read_generation(result: TextGeneration) -> None:
    """A result's fields."""
    assert_type(result.text, str)
    assert_type(result.usage, Usage)
    assert_type(result.usage.total_tokens, int)
    assert_type(result.request_id, str | None)
    assert_type(result.retries, int)


def read_chunk(chunk: TextChunk) -> None:
    """A chunk's fields."""
    assert_type(chunk.text, str)
    assert_type(chunk.finish_reason, str | None)
    assert_type(chunk.usage, Usage | None)


# --- errors ------------------------------------------------------------------------------------------


def read_api_error(exc: APIError) -> None:
    """What an APIError carries."""
    assert_type(exc.code, str | None)
    assert_type(exc.message, str)
    assert_type(exc.details, Mapping[str, Any])
    assert_type(exc.status_code, int | None)
    assert_type(exc.request_id, str | None)
    assert_type(exc.retry_after, float | None)


def read_rate_limit(exc: RateLimitError) -> None:
    """A subclass keeps the fields."""
    assert_type(exc.retry_after, float | None)


def read_connection_error(exc: APIConnectionError) -> None:
    """A connection error has a message, maybe a request id, and says whether a retry could help."""
    assert_type(exc.message, str)
    assert_type(exc.request_id, str | None)
    assert_type(exc.retryable, bool)


# --- the async client --------------------------------------------------------------------------------


async def async_api() -> None:
    """Both ways to build the async client, and each of its calls."""
    client = AsyncNebulaClient(
        "key",
        base_url="http://127.0.0.1:8080/v1",
        timeout=Timeout(connect=1.0),
        max_retries=1,
        retry=policy,
        max_connections=10,
        default_headers={"X-Team": "a"},
        proxy="http://proxy.example:3128",
        verify="/etc/ssl/ca.pem",
        trust_env=False,
        rate_limit=RateLimit(requests_per_minute=600, tokens_per_minute=90_000, burst_seconds=1.0),
    )
    assert_type(client, AsyncNebulaClient)
    assert_type(client.rate_limit, RateLimit | None)
    AsyncNebulaClient(verify=Path("/etc/ssl/certs"))
    AsyncNebulaClient(verify=ssl.create_default_context())
    AsyncNebulaClient(verify=False, proxy=None)
    assert_type(client.timeout, Timeout)
    assert_type(client.retry, RetryPolicy)
    assert_type(client.base_url, str)
    async with AsyncNebulaClient(timeout=5.0) as entered:
        assert_type(entered, AsyncNebulaClient)

    assert_type(await client.generate_text(model="m", prompt="p"), TextGeneration)
    assert_type(
        await client.generate_text(
            model="m",
            prompt="p",
            max_tokens=5,
            temperature=0.2,
            top_p=0.9,
            stop=["."],
            extra_body={"seed": 1},
            timeout=3.0,
            max_retries=0,
        ),
        TextGeneration,
    )

    stream = client.stream_text(model="m", prompt="p", max_tokens=5)
    assert_type(stream, TextStream)
    async with stream as entered_stream:
        assert_type(entered_stream, TextStream)
        assert_type(aiter(entered_stream), TextStream)
        async for chunk in entered_stream:
            assert_type(chunk, TextChunk)
    assert_type(stream.text, str)
    assert_type(stream.finish_reason, str | None)
    assert_type(stream.usage, Usage | None)
    assert_type(stream.request_id, str | None)
    assert_type(stream.retries, int)

    inputs: list[GenerateRequest | dict[str, Any]] = [request, {"model": "m", "prompt": "p"}]
    assert_type(await client.generate_many(inputs), list[TextGeneration])
    assert_type(await client.generate_many(inputs, concurrency=4), list[TextGeneration])
    assert_type(await client.generate_many(inputs, return_exceptions=False), list[TextGeneration])
    assert_type(await client.generate_many(inputs, return_exceptions=True), list[TextGeneration | Exception])

    async def prompts() -> AsyncIterator[dict[str, Any]]:
        yield {"model": "m", "prompt": "p"}

    assert_type(await client.generate_many(prompts(), concurrency=2), list[TextGeneration])

    async with client.as_completed(prompts(), concurrency=2) as outcomes:
        async for outcome in outcomes:
            assert_type(outcome, Outcome)
            assert_type(outcome.index, int)
            assert_type(outcome.result, TextGeneration | None)
            assert_type(outcome.error, Exception | None)
            assert_type(outcome.ok, bool)
    assert_type(await anext(client.as_completed(inputs)), Outcome)

    def show(progress: BatchProgress) -> None:
        assert_type(progress.eta, float | None)
        assert_type(progress.paused_for, float)

    summary = await client.run_batch(
        "in.jsonl",
        Path("out.jsonl"),
        model="m",
        max_tokens=5,
        temperature=0.5,
        top_p=1.0,
        stop=["."],
        concurrency=64,
        retry_failed=True,
        fsync=True,
        progress=show,
        stop_event=threading.Event(),
        grace_period=5.0,
    )
    assert_type(summary, BatchSummary)
    assert_type(summary.stopped, str | None)
    assert_type(summary.error, Exception | None)
    try:
        await client.run_batch("in.jsonl", "out.jsonl")
    except BatchInputError as bad:
        assert_type(bad.problems, list[tuple[int, str]])
        assert_type(bad.count, int)
    await client.aclose()


# --- the sync client ---------------------------------------------------------------------------------


def sync_api() -> None:
    """Both ways to build the sync client, and each of its calls."""
    client = NebulaClient("key", base_url="http://127.0.0.1:8080/v1", timeout=10.0, max_retries=0)
    NebulaClient(proxy="http://proxy.example:3128", verify=Path("/etc/ssl/ca.pem"), trust_env=False)
    NebulaClient(verify=ssl.create_default_context())
    NebulaClient(rate_limit=RateLimit(tokens_per_minute=90_000, token_counter=len))
    assert_type(client, NebulaClient)
    assert_type(client.rate_limit, RateLimit | None)
    assert_type(client.closed, bool)
    with NebulaClient(retry=policy, max_connections=4, default_headers={"X-Team": "a"}) as entered:
        assert_type(entered, NebulaClient)

    assert_type(client.generate_text(model="m", prompt="p", max_tokens=5), TextGeneration)

    stream = client.stream_text(model="m", prompt="p", stop=["."])
    assert_type(stream, nebula_sync.TextStream)
    with stream as entered_stream:
        assert_type(entered_stream, nebula_sync.TextStream)
        for chunk in entered_stream:
            assert_type(chunk, TextChunk)
    assert_type(iter(stream), nebula_sync.TextStream)
    assert_type(stream.text, str)
    assert_type(stream.finish_reason, str | None)
    assert_type(stream.usage, Usage | None)
    assert_type(stream.request_id, str | None)
    assert_type(stream.retries, int)

    def prompts() -> Iterator[GenerateRequest]:
        yield request

    assert_type(client.generate_many(prompts()), list[TextGeneration])
    assert_type(client.generate_many([request], return_exceptions=False), list[TextGeneration])
    assert_type(
        client.generate_many([request], concurrency=8, return_exceptions=True),
        list[TextGeneration | Exception],
    )

    with client.as_completed(prompts(), concurrency=2) as outcomes:
        for outcome in outcomes:
            assert_type(outcome, Outcome)
    assert_type(next(client.as_completed([request])), Outcome)
    assert_type(
        client.run_batch("in.jsonl", "out.jsonl", model="m", stop_event=threading.Event()), BatchSummary
    )
    client.close()


def command_line() -> None:
    """The console script's entry point: arguments in, exit status out."""
    from nebula_async.cli import INSTALL_HINT, main

    assert_type(main(), int)
    assert_type(main(["generate", "hi"]), int)
    assert_type(main(("--help",), prog_name="nebula"), int)
    assert_type(INSTALL_HINT, str)
