"""Measure FakeNebulaServer's throughput on one core: ``python benchmarks/fake_server.py``.

The server runs in its own process pinned to CPU 0 (``python -m nebula_async.testing``); the load
comes from raw aiohttp in this process, pinned to CPU 1, so the client is not what limits the
figures. Every reply is checked. Prompts cycle through ``--prompts`` distinct texts (so after the
first round the server's reply cache answers, as in a load test that repeats its prompts). Prints
requests/s (non-streaming) and streams/s and events/s (streaming), the median of ``--runs`` runs
with min-max, and the server's CPU: its share of one core, and CPU microseconds per request, which
does not depend on how hard the load generator pushed. A run where the server was not near 100%
of its core is flagged: its req/s says more about the load generator than about the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import aiohttp

_BODY = {"model": "Llama3.3-70B", "max_tokens": 100}
_SATURATED = 0.9  # server CPU share above which the server, not the load, set the pace
_HEADERS = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _load(url: str, *, stream: bool, concurrency: int, seconds: float, prompts: int) -> tuple[int, int]:
    """Send requests from ``concurrency`` tasks for ``seconds``; return (requests, events) completed."""
    bodies = [
        json.dumps({**_BODY, "prompt": f"Write program number {i} in Python", "stream": stream}).encode()
        for i in range(prompts)
    ]
    deadline = time.perf_counter() + seconds
    done = events = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, events
            while time.perf_counter() < deadline:
                body = bodies[done % prompts]
                async with session.post(url, data=body, headers=_HEADERS) as response:
                    raw = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {raw[:200]!r}")
                if stream:
                    count = raw.count(b"\n\ndata: ") + 1
                    if b'"finish_reason": "' not in raw.rpartition(b"data: ")[2]:
                        raise RuntimeError("a stream did not end with finish_reason")
                    events += count
                elif json.loads(raw)["status"] != "success":
                    raise RuntimeError(f"not a success: {raw[:200]!r}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=1000, help="distinct prompts to cycle through")
    args = parser.parse_args()
    can_pin = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    server = subprocess.Popen(
        [sys.executable, "-m", "nebula_async.testing", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if can_pin else None,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        base_url = line.split(" at ", 1)[1].split(" ", 1)[0]
        if can_pin:
            os.sched_setaffinity(0, {1})
        url = f"{base_url}/text/generate"
        asyncio.run(_load(url, stream=False, concurrency=8, seconds=0.5, prompts=args.prompts))  # warm up
        print(f"FakeNebulaServer, one core; load: raw aiohttp, concurrency {args.concurrency}, "
              f"{args.seconds:g} s per run, {args.runs} runs, {args.prompts} prompts; "
              f"Python {sys.version.split()[0]}, "
              f"aiohttp {aiohttp.__version__}; pinned: {can_pin}")  # fmt: skip
        for stream in (False, True):
            rates, event_rates, shares, per_request = [], [], [], []
            for _ in range(args.runs):
                cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
                done, events = asyncio.run(
                    _load(url, stream=stream, concurrency=args.concurrency, seconds=args.seconds,
                          prompts=args.prompts)
                )  # fmt: skip
                elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(server.pid) - cpu0
                shares.append(cpu / elapsed)
                per_request.append(cpu / max(done, 1) * 1e6)
                rates.append(done / elapsed)
                event_rates.append(events / elapsed)
            kind = "streaming    " if stream else "non-streaming"
            line = f"{kind}: {statistics.median(rates):8,.0f} req/s ({min(rates):,.0f}-{max(rates):,.0f})"
            if stream:
                line += f", {statistics.median(event_rates):9,.0f} events/s"
            share = statistics.median(shares)
            line += f"; server CPU {share:.0%} of one core, {statistics.median(per_request):.0f} µs/request"
            if share < _SATURATED:
                line += "  [server not saturated: the load generator set this pace]"
            print(line)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
