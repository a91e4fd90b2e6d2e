"""``python -m benchmarks.soak``: one client, many calls, random faults; every call must end well.

One ``AsyncNebulaClient`` runs ``--rounds`` rounds of ``--calls`` calls (half of them streams) at
``--concurrency``, against a ``FakeNebulaServer`` (in the same event loop) that faults
``--rate`` of the requests at random (``FaultMix``: 429 with a short Retry-After, 500/502/503, HTML
pages, disconnects, replies slower than the client's read timeout, streams cut mid-way, error
events mid-stream). It checks, and prints as figures:

- every call ends in a success or a ``NebulaError`` subclass, within ``--call-timeout`` seconds;
- every success's text equals the fault-free text (the server's ``default_reply``);
- no connection is open on the server once the client is closed;
- RSS (current, after a ``gc.collect()``) after the last round is within 5% of after round 1
  (with 3 rounds or more: the first round warms caches and pools).

It exits 1 if a check fails. The default is the long form (3 rounds of 7,000 calls, about a
minute); ``--quick`` is the short form the test suite runs (``tests/integration/test_soak.py``),
under ``python -X dev -W error`` with ``PYTHONASYNCIODEBUG=1``. ``--json`` prints the figures as
one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from nebula_async import AsyncNebulaClient, NebulaError, RetryPolicy, Timeout
from nebula_async.testing import FakeNebulaServer, FaultMix, default_reply

__all__ = ["main", "soak"]

MODEL = "gpt-4"
PROMPTS = 500  # distinct prompts per round: repeats are realistic, and keep the expected texts cached
RSS_TOLERANCE = 0.05


def rss_bytes() -> int:
    """Return this process's current resident set size (Linux /proc; 0 where it is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0
    import resource

    return pages * resource.getpagesize()


def quiet_debug_mode() -> None:
    """Flag only callbacks over 1 s in the running loop (debug mode's default: 0.1 s).

    On a loaded 2-core machine, 0.1 s is noise, not a finding; a real stall (an import in the
    loop, defect 9 of issue 13) takes longer than this.
    """
    asyncio.get_running_loop().slow_callback_duration = 1.0


class ServerThread:
    """A FakeNebulaServer with ``mix``, in an event loop in a thread of its own, for a ``with`` block."""

    def __init__(self, mix: FaultMix) -> None:
        self._mix = mix
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: FakeNebulaServer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="soak-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        quiet_debug_mode()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FakeNebulaServer(faults=self._mix, max_recorded=0) as server:
            self._server = server
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeNebulaServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._server is not None  # set before _ready
        return self._server

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


def expected_text(prompt: str) -> str:
    """Return the fault-free text of ``prompt``: the server's reply at the API's default settings."""
    return default_reply(MODEL, prompt, 0.7, 1.0)


async def one_call(client: AsyncNebulaClient, prompt: str, *, stream: bool) -> str:
    """Make one call and return its text (a stream's chunks joined)."""
    if not stream:
        return (await client.generate_text(model=MODEL, prompt=prompt)).text
    parts = []
    async with client.stream_text(model=MODEL, prompt=prompt) as chunks:
        async for chunk in chunks:
            parts.append(chunk.text)
    return "".join(parts)


async def run_round(
    client: AsyncNebulaClient,
    number: int,
    *,
    calls: int,
    concurrency: int,
    call_timeout: float,
    rng: random.Random,
) -> dict[str, Any]:
    """Run one round; return its outcomes by name, wrong texts and latencies."""
    outcomes: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    latencies: list[float] = []
    plan = [(f"soak round {number} prompt {i % PROMPTS}", rng.random() < 0.5) for i in range(calls)]
    queue = collections.deque(plan)

    async def worker() -> None:
        while queue:
            prompt, stream = queue.popleft()
            started = time.perf_counter()
            try:
                text = await asyncio.wait_for(one_call(client, prompt, stream=stream), call_timeout)
            except NebulaError as exc:
                outcomes[type(exc).__name__] += 1
            except asyncio.TimeoutError:  # our own bound: the call hung
                outcomes["HANG"] += 1
            except Exception as exc:  # anything outside the error tree is the finding
                outcomes[f"UNTYPED {type(exc).__name__}: {exc}"[:200]] += 1
            else:
                outcomes["success"] += 1
                if text != expected_text(prompt):
                    wrong.append(f"{prompt!r} ({'stream' if stream else 'plain'}): {text[:80]!r}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "outcomes": dict(outcomes),
        "wrong_texts": wrong,
        "latencies": latencies,
        "seconds": time.perf_counter() - started,
    }


async def soak(
    mix: FaultMix,
    *,
    calls: int,
    rounds: int,
    concurrency: int,
    read_timeout: float,
    call_timeout: float,
    seed: int,
) -> dict[str, Any]:
    """Run the rounds with one client against a server faulting by ``mix``; return the figures.

    The server runs in an event loop of its own, in a thread: in the client's loop, asyncio's
    debug mode slows both so much that fault-free calls hit the read timeout.
    """
    quiet_debug_mode()
    with ServerThread(mix) as server:
        return await _soak(
            server,
            calls=calls,
            rounds=rounds,
            concurrency=concurrency,
            read_timeout=read_timeout,
            call_timeout=call_timeout,
            seed=seed,
        )


async def _soak(
    server: FakeNebulaServer,
    *,
    calls: int,
    rounds: int,
    concurrency: int,
    read_timeout: float,
    call_timeout: float,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    timeout = Timeout(connect=5.0, read=read_timeout, total=call_timeout, stream_idle=read_timeout)
    retry = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.1)
    figures: dict[str, Any] = {"rounds": []}
    outcomes: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    latencies: list[float] = []
    started = time.perf_counter()
    async with AsyncNebulaClient(
        server.api_key, base_url=server.base_url, timeout=timeout, retry=retry, max_connections=concurrency
    ) as client:
        for number in range(1, rounds + 1):
            result = await run_round(
                client, number, calls=calls, concurrency=concurrency, call_timeout=call_timeout, rng=rng
            )
            outcomes.update(result["outcomes"])
            wrong.extend(result["wrong_texts"])
            latencies.extend(result["latencies"])
            gc.collect()
            figures["rounds"].append(
                {"outcomes": result["outcomes"], "seconds": round(result["seconds"], 2), "rss": rss_bytes()}
            )
    # The server sees a closed connection on its next loop turn or so: give it a moment.
    for _ in range(500):  # at most 5 s
        if not server.open_connections:
            break
        await asyncio.sleep(0.01)
    latencies.sort()
    figures.update(
        calls=calls * rounds,
        concurrency=concurrency,
        outcomes=dict(outcomes),
        successes=outcomes["success"],
        untyped=sum(n for name, n in outcomes.items() if name.startswith("UNTYPED")),
        hangs=outcomes["HANG"],
        wrong_texts=len(wrong),
        wrong_examples=wrong[:5],
        faults_injected=server.faults_injected,
        p50=statistics.median(latencies),
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        connections_left=server.open_connections,
        seconds=round(time.perf_counter() - started, 2),
    )
    return figures


def failures(figures: dict[str, Any]) -> list[str]:
    """Return the checks that failed, in words (empty: all passed)."""
    found = []
    if figures["untyped"]:
        found.append(f"{figures['untyped']} calls raised outside the NebulaError tree")
    if figures["hangs"]:
        found.append(f"{figures['hangs']} calls hung past the call timeout")
    if figures["wrong_texts"]:
        found.append(f"{figures['wrong_texts']} successes had the wrong text: {figures['wrong_examples']}")
    if figures["connections_left"]:
        found.append(f"{figures['connections_left']} connections left open after aclose()")
    rss = [r["rss"] for r in figures["rounds"]]
    if len(rss) >= 3 and rss[0] and rss[-1] > rss[0] * (1 + RSS_TOLERANCE):
        found.append(f"RSS grew from {rss[0]} to {rss[-1]} bytes between round 1 and round {len(rss)}")
    return found


def report(figures: dict[str, Any], settings: dict[str, Any]) -> str:
    """Return the figures as text."""
    mib = 1024 * 1024
    errors = {k: v for k, v in sorted(figures["outcomes"].items()) if k != "success"}
    lines = [
        f"settings: {settings}",
        f"calls: {figures['calls']} at concurrency {figures['concurrency']}, in {figures['seconds']} s",
        f"successes: {figures['successes']}; wrong texts: {figures['wrong_texts']}",
        f"errors by class: {errors}",
        f"faults injected: {figures['faults_injected']} (total {sum(figures['faults_injected'].values())})",
        f"latency: p50 {figures['p50'] * 1000:.1f} ms, p99 {figures['p99'] * 1000:.1f} ms",
        "RSS after each round: " + ", ".join(f"{r['rss'] / mib:.1f} MiB" for r in figures["rounds"]),
        f"connections left after aclose(): {figures['connections_left']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak from the command line; return 0 if every check passed, else 1."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=7000, help="calls per round (default 7000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=256, help="calls at once (default 256)")
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests faulted (default 0.1)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the faults and the call plan (default 1)"
    )
    parser.add_argument(
        "--read-timeout", type=float, default=0.5, help="client read timeout, s (default 0.5)"
    )
    parser.add_argument(
        "--slow", type=float, default=1.0, help="how long a slow fault holds, s (default 1.0)"
    )
    parser.add_argument("--call-timeout", type=float, default=30.0, help="bound on each call, s (default 30)")
    parser.add_argument("--quick", action="store_true", help="the short form: 2 rounds of 400 calls")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds, args.read_timeout, args.slow = 400, 2, 0.25, 0.5
    settings = {
        k: getattr(args, k) for k in ("calls", "rounds", "concurrency", "rate", "seed", "read_timeout")
    }
    mix = FaultMix(rate=args.rate, seed=args.seed, slow_seconds=args.slow)
    figures = asyncio.run(
        soak(
            mix,
            calls=args.calls,
            rounds=args.rounds,
            concurrency=args.concurrency,
            read_timeout=args.read_timeout,
            call_timeout=args.call_timeout,
            seed=args.seed,
        )
    )
    failed = failures(figures)
    if args.json:
        print(json.dumps({**figures, "settings": settings, "failures": failed}))
    else:
        print(report(figures, settings))
        print("checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
