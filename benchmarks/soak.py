"""``python -m benchmarks.soak``: one client, many calls, random faults; every call must end well.

One ``AsyncNebulaClient`` runs ``--rounds`` rounds of ``--calls`` calls (half of them streams) at
``--concurrency``, against a ``FakeNebulaServer`` (in the same event loop) that faults
``--rate`` of the requests at random (``FaultMix``: 429 with a short Retry-After, 500/502/503, HTML
pages, disconnects, replies slower than the client's read timeout, streams cut mid-way, error
events mid-stream). It checks, and prints as figures:

- every call ends in a success or a ``NebulaError`` subclass, within ``--call-timeout`` seconds;
- every success's text equals the fault-free text (the server's ``default_reply``);
- no connection is open on the server, and no task of the client's is pending, once it is closed;
- RSS (current, after a ``gc.collect()``) after the last round is within 5% of after round 1
  (with 3 rounds or more: the first round warms caches and pools).

``--batch`` soaks the batch runner instead: a child process runs ``run_batch`` (no retries, so
faulted ids end as error records) and is SIGKILLed ``--kills`` times at random moments and rerun,
then run to the end; every id must be in the output exactly once; then, faults off, a
``retry_failed`` run must turn every error record into a success with the fault-free text.

It exits 1 if a check fails. The default is the long form (3 rounds of 7,000 calls, about a
minute); ``--quick`` is the short form the test suite runs (``tests/integration/test_soak.py``),
under ``python -X dev -W error`` with ``PYTHONASYNCIODEBUG=1``. ``--json`` prints the figures as
one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import gc
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nebula_async import AsyncNebulaClient, NebulaError, RetryPolicy, Timeout
from nebula_async.testing import FakeNebulaServer, FaultMix, default_reply

__all__ = ["kill_at_random_moments", "main", "soak"]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4"
# Distinct prompts, the same in every round: the server's reply cache (and ours, of the expected
# texts) is full after round 1, so it can't pass for a leak in the RSS check.
PROMPTS = 500
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
    latencies: array.array[float],
) -> dict[str, Any]:
    """Run one round; return its outcomes and wrong texts. Latencies go to ``latencies``, from slot
    ``calls * (number - 1)``.
    """
    outcomes: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    slots = iter(range(calls * (number - 1), calls * number))
    plan = [(f"soak prompt {i % PROMPTS}", rng.random() < 0.5) for i in range(calls)]
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
            latencies[next(slots)] = time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "outcomes": dict(outcomes),
        "wrong_texts": wrong,
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
        rng = random.Random(seed)
        timeout = Timeout(connect=5.0, read=read_timeout, total=call_timeout, stream_idle=read_timeout)
        retry = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.1)
        figures: dict[str, Any] = {"rounds": []}
        outcomes: collections.Counter[str] = collections.Counter()
        wrong: list[str] = []
        # Allocated once, so that the figures kept don't grow RSS from round to round.
        latencies = array.array("d", bytes(8 * calls * rounds))
        started = time.perf_counter()
        async with AsyncNebulaClient(
            server.api_key,
            base_url=server.base_url,
            timeout=timeout,
            retry=retry,
            max_connections=concurrency,
        ) as client:
            for number in range(1, rounds + 1):
                result = await run_round(
                    client,
                    number,
                    calls=calls,
                    concurrency=concurrency,
                    call_timeout=call_timeout,
                    rng=rng,
                    latencies=latencies,
                )
                outcomes.update(result["outcomes"])
                wrong.extend(result["wrong_texts"])
                gc.collect()
                figures["rounds"].append(
                    {
                        "outcomes": result["outcomes"],
                        "seconds": round(result["seconds"], 2),
                        "rss": rss_bytes(),
                    }
                )
        # The server sees a closed connection on its next loop turn or so: give it a moment.
        for _ in range(500):  # at most 5 s
            if not server.open_connections:
                break
            await asyncio.sleep(0.01)
        # Every task of ours ends with aclose(): asyncio.run() would cancel a leaked one silently.
        left = asyncio.all_tasks() - {asyncio.current_task()}
        ordered = sorted(latencies)
        figures.update(
            tasks_left=len(left),
            tasks_left_examples=sorted(repr(task.get_coro())[:120] for task in left)[:5],
            calls=calls * rounds,
            concurrency=concurrency,
            outcomes=dict(outcomes),
            successes=outcomes["success"],
            untyped=sum(n for name, n in outcomes.items() if name.startswith("UNTYPED")),
            hangs=outcomes["HANG"],
            wrong_texts=len(wrong),
            wrong_examples=wrong[:5],
            faults_injected=server.faults_injected,
            p50=statistics.median(ordered),
            p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
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
    if figures["tasks_left"]:
        found.append(
            f"{figures['tasks_left']} tasks left pending after aclose(): {figures['tasks_left_examples']}"
        )
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
        f"tasks left after aclose(): {figures['tasks_left']}",
    ]
    return "\n".join(lines)


# The batch soak's child: run_batch with a short read timeout (a "slow" fault outlasts it) and no
# retries, so about a tenth of the ids end as error records; argv[5] == "1": retry_failed.
BATCH_CHILD = """
import asyncio, sys
from nebula_async import AsyncNebulaClient, Timeout

async def main() -> None:
    mend = sys.argv[5] == "1"  # retry_failed, once the faults have stopped: no short timeout to trip on
    timeout = Timeout(connect=5.0, read=10.0 if mend else 0.3, total=10.0)
    async with AsyncNebulaClient("key", base_url=sys.argv[1], max_retries=0, timeout=timeout) as client:
        await client.run_batch(
            sys.argv[2], sys.argv[3], model="m", concurrency=int(sys.argv[4]), retry_failed=mend
        )

asyncio.run(main())
"""


CHILD_SECONDS = 300  # a batch child's run to the end: 10,000 prompts take about 10 s


def kill_at_random_moments(
    command: list[str],
    output: Path,
    rng: random.Random,
    kills: int,
    *,
    longest: float,
    env: dict[str, str] | None = None,
) -> int:
    """Run ``command`` ``kills`` times, each SIGKILLed at a random moment; return how many were mid-run.

    Each run is killed after its first line reached ``output`` (it has imported and validated),
    then a random wait of up to ``longest`` seconds.
    """
    killed_mid_run = 0
    for _ in range(kills):
        before = output.stat().st_size if output.exists() else 0
        child = subprocess.Popen(command, cwd=ROOT, env=env)
        deadline = time.monotonic() + 10
        while (output.stat().st_size if output.exists() else 0) <= before and time.monotonic() < deadline:
            if child.poll() is not None:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, longest))
        killed_mid_run += child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait()
    return killed_mid_run


def batch_soak(*, prompts: int, kills: int, concurrency: int, rate: float, seed: int) -> dict[str, Any]:
    """Run run_batch in children killed at random moments under faults, to the end, then retry_failed.

    Returns the figures: ids once each after the faulted runs and after retry_failed, error
    records by code, faults injected, texts that differ from the fault-free ones.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        source.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(prompts)))
        mix = FaultMix(rate=rate, seed=seed, slow_seconds=0.6)
        with FakeNebulaServer(models=["m"], faults=mix, max_recorded=0).run_in_thread() as server:
            base = [
                sys.executable,
                "-c",
                BATCH_CHILD,
                server.base_url,
                str(source),
                str(output),
                str(concurrency),
            ]
            killed_mid_run = kill_at_random_moments([*base, "0"], output, rng, kills, longest=1.0)
            # Bounded: a child that hangs fails the soak (TimeoutExpired), never blocks it for good.
            subprocess.run([*base, "0"], cwd=ROOT, check=True, timeout=CHILD_SECONDS)
            faulted = [json.loads(line) for line in output.read_bytes().splitlines()]
            injected = server.faults_injected
            server.faults = None
            subprocess.run([*base, "1"], cwd=ROOT, check=True, timeout=CHILD_SECONDS)
        mended = [json.loads(line) for line in output.read_bytes().splitlines()]
    every_id = list(range(1, prompts + 1))
    codes = collections.Counter(r["error"]["code"] for r in faulted if "error" in r)
    return {
        "prompts": prompts,
        "kills": kills,
        "killed_mid_run": killed_mid_run,
        "ids_once_after_faults": sorted(r["id"] for r in faulted) == every_id,
        "error_records": dict(codes),
        "faults_injected": injected,
        "ids_once_after_retry_failed": sorted(r["id"] for r in mended) == every_id,
        "errors_left": sum("error" in r for r in mended),
        "wrong_texts": sum(
            "text" in r and r["text"] != default_reply("m", f"p{r['id'] - 1}", 0.7, 1.0) for r in mended
        ),
        "seconds": round(time.perf_counter() - started, 2),
    }


def batch_failures(figures: dict[str, Any]) -> list[str]:
    """Return the batch soak's failed checks, in words."""
    found = []
    if not figures["ids_once_after_faults"]:
        found.append("after the faulted runs, some id is missing or written twice")
    if not figures["ids_once_after_retry_failed"]:
        found.append("after retry_failed, some id is missing or written twice")
    if figures["errors_left"]:
        found.append(f"{figures['errors_left']} error records left after retry_failed without faults")
    if figures["wrong_texts"]:
        found.append(f"{figures['wrong_texts']} texts differ from the fault-free ones")
    return found


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
    parser.add_argument(
        "--batch", action="store_true", help="soak run_batch instead: children SIGKILLed under faults"
    )
    parser.add_argument(
        "--prompts", type=int, default=10000, help="with --batch: input lines (default 10000)"
    )
    parser.add_argument("--kills", type=int, default=10, help="with --batch: SIGKILLs (default 10)")
    args = parser.parse_args(argv)
    if args.batch:
        concurrency = 64 if args.concurrency == 256 else args.concurrency  # run_batch's usual range
        batch = batch_soak(
            prompts=args.prompts, kills=args.kills, concurrency=concurrency, rate=args.rate, seed=args.seed
        )
        failed = batch_failures(batch)
        print(
            json.dumps(
                {**batch, "concurrency": concurrency, "failures": failed}, indent=None if args.json else 1
            )
        )
        return 1 if failed else 0
    if args.quick:  # the short form's sizes, unless given on the command line
        given = set(argv if argv is not None else sys.argv[1:])
        for option, value in (("calls", 400), ("rounds", 2), ("read_timeout", 0.25), ("slow", 0.5)):
            if "--" + option.replace("_", "-") not in given:
                setattr(args, option, value)
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
