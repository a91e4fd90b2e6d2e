"""The suite: starts the fixed server and one process per client, runs every scenario, prints the table.

The server runs pinned to CPU 0 and the clients to CPU 1 (when there are two CPUs), so that the
client is what is measured and its CPU time is its own. Each run measures every client of a
scenario in turn, in an order rotated from run to run (interleaved, so a slow minute of the machine
hits all of them alike); the table gives the median of the runs with min-max, and ratios of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ._report import render

__all__ = ["Scenario", "main"]

_CLIENT_CPU = 1
_SERVER_CPU = 0
_COMMAND_LIMIT = 120.0  # seconds one measurement may take before its worker is killed
ASYNC_REST = ["nebula_async", "aiohttp", "openai", "openai (aiohttp)"]
STREAMERS = ["nebula_async", "aiohttp", "aiohttp iter_any", "openai", "openai (aiohttp)"]
SYNC_REST = ["nebula_sync", "nebula_sync (uvloop)", "httpx", "openai"]
RSS_CLIENTS = ["nebula_async", "aiohttp", "openai"]
STDLIB_JSON = ["nebula_async (stdlib json)"]  # what orjson (the [speed] extra) adds, where it may matter


@dataclass
class Scenario:
    """One measured situation: the clients that take part and what each is asked to do."""

    key: str
    title: str
    kind: str  # "async" or "sync"
    clients: list[str]
    command: dict[str, Any]
    unit: str = "req/s"
    floor: str | None = None  # the client the ratios are to: raw aiohttp or raw httpx by default
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def scenarios() -> list[Scenario]:
    """Every scenario of the suite, in the order of the report."""
    load = [
        Scenario(
            f"async-c{c}",
            f"Async, non-streaming, concurrency {c}",
            "async",
            ASYNC_REST + STDLIB_JSON if c == 64 else ASYNC_REST,
            {"concurrency": c, "connections": max(c, 1)},
        )
        for c in (1, 64, 256)
    ]
    return [
        *load,
        Scenario(
            "async-c64-uvloop",
            "Async, non-streaming, concurrency 64, on uvloop",
            "async",
            ["nebula_async", "aiohttp"],
            {"concurrency": 64, "connections": 64, "loop": "uvloop"},
        ),
        Scenario(
            "stream-1x10000",
            "Async streaming, one stream of 10,000 events",
            "async",
            STREAMERS + STDLIB_JSON,
            {"concurrency": 1, "connections": 1, "events": 10_000},
            "events/s",
        ),
        Scenario(
            "stream-64x100",
            "Async streaming, 64 concurrent streams of 100 events",
            "async",
            STREAMERS,
            {"concurrency": 64, "connections": 64, "events": 100},
            "events/s",
        ),
        Scenario(
            "stream-1x10000-uvloop",
            "Async streaming, one stream of 10,000 events, on uvloop",
            "async",
            ["nebula_async", "aiohttp", "aiohttp iter_any"],
            {"concurrency": 1, "connections": 1, "events": 10_000, "loop": "uvloop"},
            "events/s",
        ),
        Scenario("sync-seq", "Sync, sequential (one thread)", "sync", SYNC_REST, {"threads": 1}),
        Scenario("sync-8", "Sync, 8 threads sharing one client", "sync", SYNC_REST, {"threads": 8}),
        Scenario(
            "sync-stream",
            "Sync streaming, one stream of 10,000 events",
            "sync",
            [*SYNC_REST, "nebula_sync (stdlib json)"],
            {"threads": 1, "events": 10_000},
            "events/s",
        ),
        Scenario(
            "sync-hop",
            "Sync, one round trip to the event loop's thread and back (a no-op coroutine, no HTTP)",
            "sync",
            ["nebula_sync hop", "anyio portal.call", "anyio start_task_soon"],
            {"threads": 1},
            "round trips/s",
            floor="anyio portal.call",
        ),
    ]


def _pinned(cpu: int) -> Any:
    if not _can_pin():
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class _Worker:
    """One client's process, fed one JSON command at a time."""

    def __init__(self, kind: str, name: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", kind, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_pinned(_CLIENT_CPU),
        )

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        watchdog = threading.Timer(_COMMAND_LIMIT, self.process.kill)
        watchdog.start()
        try:
            line = self.process.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            return {"error": f"the worker died (exit code {self.process.wait()})"}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def _server() -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._server"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_pinned(_SERVER_CPU),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[-1]}", process.pid
    finally:
        process.terminate()
        process.wait(10)


def _run_scenarios(
    chosen: Sequence[Scenario], base_url: str, server_pid: int, args: argparse.Namespace
) -> None:
    workers: dict[tuple[str, str], _Worker] = {}
    try:
        for scenario in chosen:
            _progress(f"{scenario.title}: ")
            for run in range(args.runs):
                shift = run % len(scenario.clients)
                for name in scenario.clients[shift:] + scenario.clients[:shift]:
                    if name in scenario.skipped:
                        continue
                    worker = workers.get((scenario.kind, name))
                    if worker is None:
                        worker = workers[scenario.kind, name] = _Worker(scenario.kind, name)
                    command = {
                        **scenario.command,
                        "base_url": base_url,
                        "seconds": args.seconds,
                        "warmup": args.warmup,
                    }
                    cpu, started = _cpu_seconds(server_pid), time.perf_counter()
                    result = worker.run(command)
                    share = (_cpu_seconds(server_pid) - cpu) / (time.perf_counter() - started)
                    if "skipped" in result:
                        scenario.skipped[name] = result["skipped"]
                        continue
                    if "error" in result:
                        raise RuntimeError(f"{scenario.title}, {name}: {result['error']}")
                    result["server_cpu"] = share
                    scenario.results.setdefault(name, []).append(result)
                _progress(".")
            _progress("\n")
    finally:
        for worker in workers.values():
            worker.close()


def _run_rss(base_url: str, clients: list[str], runs: int) -> dict[str, list[dict[str, Any]]]:
    """Peak RSS growth with 1,000 calls in flight; a fresh process per client and run (peaks only grow)."""
    _progress("RSS growth, 1,000 calls in flight: ")
    out: dict[str, list[dict[str, Any]]] = {}
    for run in range(runs):
        shift = run % len(clients)
        for name in clients[shift:] + clients[:shift]:
            worker = _Worker("async", name)
            try:
                result = worker.run({"op": "rss", "base_url": base_url, "inflight": 1000})
            finally:
                worker.close()
            if "error" in result:
                raise RuntimeError(f"RSS, {name}: {result['error']}")
            if "skipped" not in result:
                out.setdefault(name, []).append(result)
        _progress(".")
    _progress("\n")
    return out


def _import_times(modules: list[str], repeats: int) -> dict[str, list[float]]:
    """Wall time of ``python -c 'import M'`` minus that of ``python -c pass``, in ms, per repeat."""
    _progress("import times: ")
    out: dict[str, list[float]] = {m: [] for m in modules}

    def wall(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, preexec_fn=_pinned(_CLIENT_CPU))
        return time.perf_counter() - started

    for _ in range(repeats):
        for module in modules:
            bare = wall("pass")
            try:
                out[module].append((wall(f"import {module}") - bare) * 1000)
            except subprocess.CalledProcessError:
                out[module] = []  # not installed
        _progress(".")
    _progress("\n")
    return {m: v for m, v in out.items() if v}


def _progress(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("nebula-sdk", "aiohttp", "httpx", "openai", "httpx2", "uvloop", "orjson"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the suite and print (or write) the report."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="nebula-sdk side by side with raw aiohttp, httpx and openai."
    )
    parser.add_argument("--quick", action="store_true", help="short runs: about a minute in all")
    parser.add_argument("--runs", type=int, default=3, help="runs per client and scenario (default 3)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 2, --quick 0.3)")
    parser.add_argument(
        "--only", action="append", metavar="KEY", help="run only these scenarios (repeatable)"
    )
    parser.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help="run only these clients (repeatable), e.g. the ones that need no [bench] extra",
    )
    parser.add_argument("--output", metavar="FILE", help="write the Markdown report here as well")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else 2.0
    args.warmup = min(0.3, max(0.1, args.seconds / 4))
    chosen = scenarios()
    extras = ["rss", "import"]
    if args.only:
        known = {s.key for s in chosen} | set(extras)
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        chosen = [s for s in chosen if s.key in args.only]
        extras = [e for e in extras if e in args.only]
    rss_clients = RSS_CLIENTS
    if args.client:
        known = {name for s in scenarios() for name in s.clients} | set(RSS_CLIENTS)
        unknown = sorted(set(args.client) - known)
        if unknown:
            parser.error(f"unknown client {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        for scenario in chosen:
            scenario.clients = [name for name in scenario.clients if name in args.client]
        chosen = [s for s in chosen if s.clients]
        rss_clients = [name for name in RSS_CLIENTS if name in args.client]
    started = time.perf_counter()
    with _server() as (base_url, server_pid):
        _run_scenarios(chosen, base_url, server_pid, args)
        rss = _run_rss(base_url, rss_clients, args.runs) if "rss" in extras and rss_clients else {}
    imports = (
        _import_times(["nebula_async", "nebula_sync", "aiohttp", "httpx", "openai"], 5 if args.quick else 15)
        if "import" in extras
        else {}
    )
    command = "python -m benchmarks" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    report = render(
        chosen,
        rss,
        imports,
        header={
            "command": command,
            "date": time.strftime("%Y-%m-%d"),
            "machine": _machine(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "versions": _versions(),
            "pinned": _can_pin(),
            "runs": args.runs,
            "seconds": args.seconds,
            "took": time.perf_counter() - started,
        },
    )
    print(report, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
