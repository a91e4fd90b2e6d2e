"""One client's process: runs the measurements the suite asks for, one JSON line in, one JSON line out.

``python -m benchmarks._worker KIND NAME``: KIND is ``async`` or ``sync``, NAME a client of
``_clients``. Each command builds a fresh client, warms it up, then measures for the time given:
calls and events completed, wall and CPU time of this process (the client's own cost: the server is
another process), and per-call latency. Anything wrong in a reply ends the measurement with an error.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._clients import ASYNC_CLIENTS, SYNC_CLIENTS, AsyncClient, SyncClient

__all__ = ["main"]

Result = dict[str, Any]


def _summary(calls: int, events: int, elapsed: float, cpu: float, latencies: list[float]) -> Result:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return {
        "calls": calls,
        "events": events,
        "elapsed": elapsed,
        "cpu": cpu,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": p99 * 1000,
    }


async def _async_load(
    call: Callable[[], Awaitable[int | None]], concurrency: int, seconds: float, latencies: list[float]
) -> tuple[int, int]:
    """Call from ``concurrency`` tasks until ``seconds`` pass (each finishes its call in flight)."""
    calls = events = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal calls, events
        clock = time.perf_counter
        while clock() < deadline:
            started = clock()
            got = await call()
            latencies.append(clock() - started)
            calls += 1
            events += got or 0

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls, events


async def _run_async(client: AsyncClient, command: dict[str, Any]) -> Result:
    await client.open(command["base_url"], command["connections"])
    try:
        events_per_stream = command.get("events")
        if events_per_stream:

            async def call() -> int | None:
                return await client.stream(events_per_stream)
        else:

            async def call() -> int | None:
                await client.generate()
                return None

        concurrency, seconds = command["concurrency"], command["seconds"]
        await _async_load(call, concurrency, command["warmup"], [])
        latencies: list[float] = []
        gc.collect()
        cpu, started = time.process_time(), time.perf_counter()
        calls, events = await _async_load(call, concurrency, seconds, latencies)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return _summary(calls, events, elapsed, cpu, latencies)
    finally:
        await client.close()


async def _run_rss(client: AsyncClient, command: dict[str, Any]) -> Result:
    """Peak RSS growth while ``inflight`` calls wait on the server at once."""
    inflight = command["inflight"]
    await client.open(command["base_url"], inflight)
    try:
        await client.generate()  # the pool and the client's lazy parts exist before the baseline
        gc.collect()
        _reset_peak_rss()
        before = _rss_kib("VmRSS")
        started = time.perf_counter()
        await asyncio.gather(*(client.generate("bench-slow") for _ in range(inflight)))
        elapsed = time.perf_counter() - started
        return {"rss_kib": _rss_kib("VmHWM") - before, "elapsed": elapsed, "calls": inflight}
    finally:
        await client.close()


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _sync_load(
    call: Callable[[], int | None], threads: int, seconds: float, latencies: list[float]
) -> tuple[int, int]:
    counts = [0] * threads
    events = [0] * threads
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []
    deadline = 0.0

    def worker(index: int) -> None:
        start.wait()
        clock = time.perf_counter
        own: list[float] = []
        try:
            while clock() < deadline:
                started = clock()
                got = call()
                own.append(clock() - started)
                counts[index] += 1
                events[index] += got or 0
        except BaseException as exc:
            errors.append(exc)
        latencies.extend(own)  # list.extend is atomic: one per thread, at the end

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    deadline = time.perf_counter() + seconds
    start.wait()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts), sum(events)


def _run_sync(client: SyncClient, command: dict[str, Any]) -> Result:
    client.open(command["base_url"])
    try:
        events_per_stream = command.get("events")

        def call() -> int | None:
            if events_per_stream:
                return client.stream(events_per_stream)
            client.generate()
            return None

        threads = command["threads"]
        _sync_load(call, threads, command["warmup"], [])
        latencies: list[float] = []
        gc.collect()
        cpu, started = time.process_time(), time.perf_counter()
        calls, events = _sync_load(call, threads, command["seconds"], latencies)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return _summary(calls, events, elapsed, cpu, latencies)
    finally:
        client.close()


def _run_in_loop(coro_fn: Callable[[], Awaitable[Result]], loop: str) -> Result:
    async def main() -> Result:
        return await coro_fn()

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def _execute(kind: str, name: str, command: dict[str, Any]) -> Result:
    if kind == "async":
        client = ASYNC_CLIENTS[name]()
        if command.get("op") == "rss":
            return _run_in_loop(lambda: _run_rss(client, command), command.get("loop", "asyncio"))
        return _run_in_loop(lambda: _run_async(client, command), command.get("loop", "asyncio"))
    return _run_sync(SYNC_CLIENTS[name](), command)


def main() -> None:
    """Serve commands from stdin until it closes."""
    kind, name = sys.argv[1], sys.argv[2]
    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = _execute(kind, name, command)
        except ImportError as exc:
            result = {"skipped": f"{exc.name or exc} is not installed"}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
