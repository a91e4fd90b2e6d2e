"""Pacing under a rate limit: ``python -m benchmarks.pacing`` prints a Markdown section.

The fake server runs in its own process (``python -m nebula_async.testing``) with a sliding-window
limit of N requests per second, or T tokens per second; 300 requests go through one client at
concurrency 64. Each contender gets its own API key (the server's windows are per key), so none
inherits another's window. Counted: the answers of 429, and the time from the first request sent
to the last answer, against the ideal (300 / N, or the tokens answered / T).

Contenders, side by side in the same run:

- ``nebula_async`` with ``RateLimit(...)`` at the server's rate, ``burst_seconds`` 0 and 1.0;
- aiolimiter's ``AsyncLimiter(N, 1)`` over raw aiohttp (tokens: ``acquire(estimate)``), which on a
  429 sleeps the Retry-After and acquires again: what a careful user writes around it;
- a re-implementation (not a copy) of the pacing of OpenAI's cookbook parallel processor,
  https://github.com/openai/openai-cookbook/blob/main/examples/api_request_parallel_processor.py :
  request and token capacities that start full at the per-minute limit and refill continuously;
  one request sent per turn of its loop, which sleeps 1 ms; no concurrency limit; after a rate-limit
  error (here: a 429; the script looks for "rate limit" in OpenAI's message) every send pauses 15 s
  from that error, Retry-After ignored; a failed request is retried, up to 5 attempts in all. A
  request's tokens: ceil(len(prompt) / 4) plus max_tokens (the script counts the prompt with tiktoken).
  It is stopped after ``--cookbook-cap`` seconds, and its row then says how far it got.

The server's windows are one second long so that a run takes seconds, and every client is told the
same rate per minute (60 × per second): an API that announces a per-minute limit may well enforce
it over shorter windows. Also measured: the uncontended acquire, in µs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nebula_async import AsyncNebulaClient, RateLimit
from nebula_async._limit import Limiter

MODEL = "Llama3.3-70B"
MAX_TOKENS = 16  # the fake server's made-up replies are longer: every answer has 16 completion tokens
CONCURRENCY = 64
COOKBOOK_PAUSE = 15.0  # the cookbook's seconds_to_pause_after_rate_limit_error
COOKBOOK_ATTEMPTS = 5  # its max_attempts
COOKBOOK_TICK = 0.001  # its seconds_to_sleep_each_loop


@dataclass
class Run:
    """What one contender did: answers by status, tokens answered, elapsed seconds, requests finished."""

    statuses: list[int] = field(default_factory=list)
    tokens: int = 0
    elapsed: float = 0.0
    done: int = 0
    failed: int = 0
    note: str = ""


def prompt(i: int) -> str:
    """The i-th prompt: a few tokens, different for every request."""
    return f"Write one line about item {i}"


def estimate(text: str) -> int:
    """The tokens a request may use: ceil(len / 4) for the prompt, plus max_tokens (RateLimit's default)."""
    return math.ceil(len(text) / 4) + MAX_TOKENS


def counting_session(run: Run) -> aiohttp.ClientSession:
    """A session that records every answer's status in ``run`` (the SDK's retries included)."""

    async def on_end(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        run.statuses.append(params.response.status)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), trace_configs=[trace])


async def ours(base_url: str, key: str, count: int, limit: RateLimit) -> Run:
    """300 requests through AsyncNebulaClient(rate_limit=limit) with generate_many at concurrency 64."""
    run = Run()
    async with counting_session(run) as session:
        client = AsyncNebulaClient(key, base_url=base_url, session=session, rate_limit=limit, max_retries=10)
        items = [{"model": MODEL, "prompt": prompt(i), "max_tokens": MAX_TOKENS} for i in range(count)]
        started = time.monotonic()
        results = await client.generate_many(items, concurrency=CONCURRENCY)
        run.elapsed = time.monotonic() - started
        await client.aclose()
    run.done = len(results)
    run.tokens = sum(r.usage.total_tokens for r in results)
    return run


async def _post(
    session: aiohttp.ClientSession, url: str, key: str, i: int
) -> tuple[int, dict[str, Any], float]:
    """POST request i; return the status, the JSON answer and the Retry-After in seconds (0 if none)."""
    body = {"model": MODEL, "prompt": prompt(i), "max_tokens": MAX_TOKENS}
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(url, json=body, headers=headers) as response:
        answer = await response.json()
        wait = float(response.headers.get("retry-after-ms", 0)) / 1000
        return response.status, answer, wait


async def with_aiolimiter(base_url: str, key: str, count: int, per_second: float, tokens: bool) -> Run:
    """aiolimiter's AsyncLimiter over raw aiohttp; a 429 sleeps its Retry-After, then acquires again."""
    from aiolimiter import AsyncLimiter

    run = Run()
    limiter = AsyncLimiter(per_second, 1.0)
    url = f"{base_url}/text/generate"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                while True:
                    await limiter.acquire(estimate(prompt(i)) if tokens else 1)
                    status, answer, wait = await _post(session, url, key, i)
                    run.statuses.append(status)
                    if status != 429:
                        break
                    await asyncio.sleep(wait)
                run.tokens += answer["data"]["usage"]["total_tokens"]
                run.done += 1

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        run.elapsed = time.monotonic() - started
    return run


async def cookbook(base_url: str, key: str, count: int, per_minute: float, tokens: bool, cap: float) -> Run:
    """The cookbook parallel processor's pacing, re-implemented; stopped after ``cap`` seconds."""
    run = Run()
    url = f"{base_url}/text/generate"
    requests_per_minute = per_minute if not tokens else math.inf
    tokens_per_minute = per_minute if tokens else math.inf
    request_capacity = requests_per_minute  # starts full: a whole minute of quota at once
    token_capacity = tokens_per_minute
    last_update = time.monotonic()
    last_rate_limit_error = -math.inf
    queue = [(i, 0) for i in range(count)]  # (request, attempts so far); retries go to the back
    retries: list[tuple[int, int]] = []
    in_flight: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def call(i: int, attempt: int) -> None:
        nonlocal last_rate_limit_error
        status, answer, _ = await _post(session, url, key, i)  # Retry-After is ignored
        run.statuses.append(status)
        if status == 200:
            run.tokens += answer["data"]["usage"]["total_tokens"]
            run.done += 1
            return
        if status == 429:
            last_rate_limit_error = time.monotonic()
        if attempt + 1 < COOKBOOK_ATTEMPTS:
            retries.append((i, attempt + 1))
        else:
            run.failed += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        while queue or retries or in_flight:
            now = time.monotonic()
            if now - started > cap:
                run.note = f"stopped after {cap:g} s"
                break
            elapsed, last_update = now - last_update, now
            request_capacity = min(request_capacity + requests_per_minute * elapsed / 60, requests_per_minute)
            token_capacity = min(token_capacity + tokens_per_minute * elapsed / 60, tokens_per_minute)
            if queue or retries:  # one request per turn of the loop, as the script does
                i, attempt = retries[0] if retries else queue[0]
                cost = estimate(prompt(i))
                if request_capacity >= 1 and token_capacity >= cost:
                    (retries if retries else queue).pop(0)
                    request_capacity -= 1
                    token_capacity -= cost
                    task = asyncio.create_task(call(i, attempt))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            await asyncio.sleep(COOKBOOK_TICK)
            pause = last_rate_limit_error + COOKBOOK_PAUSE - time.monotonic()
            if pause > 0:
                await asyncio.sleep(min(pause, max(0.0, cap - (time.monotonic() - started))))
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    run.elapsed = time.monotonic() - started
    return run


def acquire_cost(calls: int) -> dict[str, float]:
    """Microseconds per uncontended acquire: the limiter's synchronous fast path, in a running loop."""

    async def measure(limit: RateLimit | None, tokens: int) -> float:
        limiter = Limiter(limit)
        best = math.inf
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                if not limiter.try_take(tokens):
                    await limiter.wait(tokens)
            best = min(best, (time.perf_counter() - started) / calls * 1e6)
        return best

    huge = 1e12  # so fast that the schedule is always free: what is measured is the bookkeeping
    cases: dict[str, tuple[RateLimit | None, int]] = {
        "rate_limit=None (the 429 gate only)": (None, 0),
        "requests_per_minute": (RateLimit(requests_per_minute=huge), 0),
        "requests and tokens per minute": (RateLimit(requests_per_minute=huge, tokens_per_minute=huge), 300),
    }
    return {name: asyncio.run(measure(*case)) for name, case in cases.items()}


class FakeServer:
    """``python -m nebula_async.testing`` in its own process, with the given limit options."""

    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nebula_async.testing", "--port", "0", "--quiet", *options],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.base_url = line.split(" at ", 1)[1].split(" ", 1)[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def row(name: str, run: Run, ideal: float, count: int) -> str:
    """One Markdown table row."""
    ratio = run.elapsed / ideal if ideal else math.nan
    done = f"{run.done}" + (f" ({run.failed} failed)" if run.failed else "")
    note = f" {run.note}" if run.note else ""
    return (
        f"| {name} | {run.statuses.count(429)} | {done} of {count} | {run.elapsed:.2f} | "
        f"{ideal:.2f} | {ratio:.2f}×{note} |"
    )


async def scenario(
    base_url: str, *, tokens: bool, per_second: float, count: int, cap: float
) -> list[tuple[str, Run]]:
    """Run every contender against one server; each with its own API key."""
    keys = (f"pacing-key-{n}" for n in itertools.count())
    per_minute = per_second * 60
    runs: list[tuple[str, Run]] = []

    def limit(burst: float) -> RateLimit:
        if tokens:
            return RateLimit(tokens_per_minute=per_minute, burst_seconds=burst)
        return RateLimit(requests_per_minute=per_minute, burst_seconds=burst)

    contenders: list[tuple[str, Callable[[str], Awaitable[Run]]]] = [
        ("**nebula_async** RateLimit, burst_seconds=0", lambda k: ours(base_url, k, count, limit(0.0))),
        ("**nebula_async** RateLimit, burst_seconds=1.0", lambda k: ours(base_url, k, count, limit(1.0))),
        (
            "aiolimiter AsyncLimiter + aiohttp",
            lambda k: with_aiolimiter(base_url, k, count, per_second, tokens),
        ),
        (
            "cookbook parallel processor's pacing",
            lambda k: cookbook(base_url, k, count, per_minute, tokens, cap),
        ),
    ]
    for name, contender in contenders:
        if name.startswith("aiolimiter"):
            try:
                import aiolimiter  # noqa: F401  # only to know whether the row can run
            except ImportError:
                skipped = Run(note="skipped: aiolimiter is not installed (pip install -e '.[bench]')")
                runs.append((name, skipped))
                continue
        runs.append((name, await contender(next(keys))))
    return runs


def main(argv: list[str] | None = None) -> None:
    """Run both scenarios and the microbenchmark; print the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pacing", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--requests", type=int, help="requests per contender (default 300, --quick 40)")
    parser.add_argument("--rate", type=float, help="requests per second allowed (default 100, --quick 200)")
    parser.add_argument("--cookbook-cap", type=float, help="seconds before the cookbook row is stopped")
    args = parser.parse_args(argv)
    count = args.requests or (40 if args.quick else 300)
    per_second = args.rate or (200.0 if args.quick else 100.0)
    cap = args.cookbook_cap or (1.0 if args.quick else 40.0)
    per_request_tokens = 7 + MAX_TOKENS  # the fake server counts 7 tokens in each prompt
    token_rate = per_second * per_request_tokens  # the same pace, expressed in tokens
    command = "python -m benchmarks.pacing" + (" --quick" if args.quick else "")
    print("## Pacing under a rate limit\n")
    print(
        f"`{command}` (Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}): {count} requests "
        f"at concurrency {CONCURRENCY}, against `python -m nebula_async.testing` in its own process, whose "
        "sliding windows are 1 s long; each client is given the same rate per minute. Elapsed: from the "
        "first request to the last answer; ideal: what the limit allows.\n"
    )
    for tokens in (False, True):
        rate = token_rate if tokens else per_second
        server = FakeServer(f"--{'tokens' if tokens else 'requests'}-per-second", f"{rate:.0f}")
        try:
            runs = asyncio.run(
                scenario(server.base_url, tokens=tokens, per_second=rate, count=count, cap=cap)
            )
        finally:
            server.stop()
        if tokens:
            print(f"### {token_rate:,.0f} tokens per second (prompt + completion, about {per_request_tokens} "
                  "per request)\n")  # fmt: skip
        else:
            print(f"### {per_second:,.0f} requests per second\n")
        print("| client | 429 answers | finished | elapsed (s) | ideal (s) | × ideal |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, run in runs:
            if run.note.startswith("skipped"):
                print(f"| {name} | {run.note} |")
                continue
            ideal = (run.tokens / token_rate) if tokens else (count / per_second)
            if tokens and not run.tokens:
                ideal = count * per_request_tokens / token_rate
            print(row(name, run, ideal, count))
        print()
    costs = acquire_cost(20_000 if args.quick else 200_000)
    print("### Uncontended acquire (the synchronous fast path)\n")
    print("| limiter | µs per call |")
    print("|---|---:|")
    for name, cost in costs.items():
        print(f"| {name} | {cost:.2f} |")
    print()


if __name__ == "__main__":
    main()
