"""``python -m benchmarks.batch``: the batch runner's overhead, its kill test and its memory, as Markdown.

1. Speed: ``run_batch``, ``generate_many`` and ``as_completed`` over the same prompts at the same
   concurrency, against one FakeNebulaServer (unlimited) in a process of its own, in one run,
   alternated; reported as requests/s and as ratios to generate_many.
2. Kill test: a child process runs ``run_batch`` against a FakeNebulaServer of this process; it is
   killed with SIGKILL at random moments and rerun each time, then run to the end. Reported: the
   output's ids (each exactly once?), torn lines cut, and requests sent more than once.
3. Peak RSS: a child runs ``run_batch`` over a generated input of N lines whose output already
   holds all but the last ``--rss-send`` ids (so both id sets are full size and the input is read
   twice), and sends the rest; its peak RSS is read from ``getrusage``.

``--quick`` shrinks all three to a smoke run (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nebula_async import AsyncNebulaClient
from nebula_async.testing import FakeNebulaServer

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m"

# The child of the kill test and of the RSS measurement: run_batch, print the summary as JSON.
CHILD = """
import asyncio, json, sys
from nebula_async import AsyncNebulaClient

async def main() -> None:
    base_url, source, output, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    async with AsyncNebulaClient("key", base_url=base_url, max_retries=0) as client:
        summary = await client.run_batch(source, output, model="m", concurrency=concurrency)
    print(json.dumps({"succeeded": summary.succeeded, "skipped": summary.skipped, "total": summary.total}))

asyncio.run(main())
"""


def write_input(path: Path, count: int) -> None:
    """Write ``count`` prompt lines, ids 1..count by line number."""
    with open(path, "w") as file:
        for i in range(count):
            file.write(f'{{"prompt": "p{i}"}}\n')


def prompts(count: int) -> Iterator[dict[str, Any]]:
    """The same prompts as write_input's, as generate_many's dicts."""
    return ({"model": MODEL, "prompt": f"p{i}"} for i in range(count))


async def _speed_once(base_url: str, which: str, count: int, concurrency: int, workdir: Path) -> float:
    async with AsyncNebulaClient("key", base_url=base_url, max_retries=0) as client:
        source = workdir / "in.jsonl"
        output = workdir / f"out-{which}.jsonl"
        output.unlink(missing_ok=True)
        await client.generate_text(model=MODEL, prompt="warm")  # the connection set-up is not timed
        started = time.perf_counter()
        if which == "generate_many":
            results = await client.generate_many(prompts(count), concurrency=concurrency)
            assert len(results) == count
        elif which == "as_completed":
            seen = 0
            async with client.as_completed(prompts(count), concurrency=concurrency) as outcomes:
                async for outcome in outcomes:
                    assert outcome.ok
                    seen += 1
            assert seen == count
        else:
            summary = await client.run_batch(source, output, model=MODEL, concurrency=concurrency)
            assert summary.succeeded == count
        return count / (time.perf_counter() - started)


def _server_process() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nebula_async.testing", "--port", "0", "--quiet", "--model", MODEL],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"the fake server did not start: {line!r}")
    return proc, match.group(1)


def speed(count: int, concurrency: int, runs: int) -> list[str]:
    """Requests/s of the three ways, alternated ``runs`` times; Markdown lines."""
    server, base_url = _server_process()
    rates: dict[str, list[float]] = {"generate_many": [], "as_completed": [], "run_batch": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            write_input(workdir / "in.jsonl", count)
            for run in range(runs):
                order = list(rates) if run % 2 == 0 else list(reversed(rates))
                for which in order:
                    rates[which].append(
                        asyncio.run(_speed_once(base_url, which, count, concurrency, workdir))
                    )
    finally:
        server.terminate()
        server.wait()
    lines = [
        f"### Speed: {count:,} prompts, concurrency {concurrency}, {runs} alternated runs",
        "",
        "| way | requests/s (median) | runs | × generate_many (median of each run's ratio) |",
        "|---|---:|---|---:|",
    ]
    for which, values in rates.items():
        spread = ", ".join(f"{v:,.0f}" for v in values)
        # Each run's ratio to generate_many in the same run: a machine whose load drifts between
        # runs moves both sides of a ratio together, and the medians of the rates apart.
        ratio = statistics.median(v / base for v, base in zip(values, rates["generate_many"], strict=True))
        lines.append(f"| {which} | {statistics.median(values):,.0f} | {spread} | {ratio:.2f}× |")
    return [*lines, ""]


def kill_test(count: int, kills: int, concurrency: int, seed: int) -> list[str]:
    """Kill a run_batch child ``kills`` times at random moments, then finish it; Markdown lines."""
    rng = random.Random(seed)
    fake = FakeNebulaServer(models=[MODEL])  # records every request: ~2 KB each, counted at the end
    torn = 0
    with fake.run_in_thread(), tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, count)
        command = [sys.executable, "-c", CHILD, fake.base_url, str(source), str(output), str(concurrency)]
        started = time.perf_counter()
        for _ in range(kills):
            child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 1.5))  # the child needs ~0.3 s to import and validate
            child.send_signal(signal.SIGKILL)
            child.wait()
            if output.exists() and not output.read_bytes().endswith(b"\n") and output.stat().st_size:
                torn += 1
        final = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - started
        ids = [json.loads(line)["id"] for line in output.read_bytes().splitlines()]
        sent = len(fake.requests)
    summary = json.loads(final.stdout)
    exactly_once = sorted(ids) == list(range(1, count + 1))
    return [
        f"### Kill test: {count:,} prompts, {kills} SIGKILLs at random moments, concurrency {concurrency}",
        "",
        f"- every id exactly once: **{'yes' if exactly_once else 'NO'}** ({len(ids):,} lines, "
        f"{len(set(ids)):,} distinct ids)",
        f"- kills that left a torn last line (cut by the next run): {torn}",
        f"- requests sent: {sent:,}; sent more than once because of a kill: {sent - count:,} "
        f"(at most {kills} × {concurrency} in flight)",
        f"- the last run skipped {summary['skipped']:,} ids done before; whole test {elapsed:.1f} s",
        "",
    ]


def peak_rss(lines: int, send: int, concurrency: int) -> list[str]:
    """Peak RSS of a child running run_batch over ``lines`` lines, ``send`` of them not done yet."""
    fake = FakeNebulaServer(models=[MODEL], max_recorded=0)
    with fake.run_in_thread(), tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, lines)
        usage = '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}'
        with open(output, "w") as file:
            for i in range(1, lines - send + 1):
                file.write(f'{{"id":{i},"text":"t",{usage},"request_id":null,"retries":0}}\n')
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        command = [sys.executable, "-c", CHILD, fake.base_url, str(source), str(output), str(concurrency)]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = json.loads(run.stdout)
    assert summary["succeeded"] == send, summary
    assert summary["total"] == lines, summary
    rss_mib = max(before, after) / 1024  # ru_maxrss is in KiB on Linux
    return [
        f"### Peak RSS: {lines:,}-line input, {lines - send:,} ids already in the output, {send:,} sent",
        "",
        f"- peak RSS of the run_batch process: **{rss_mib:.1f} MiB** ({elapsed:.1f} s in all)",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    """Run the three measurements and print the Markdown report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one run")
    parser.add_argument("--runs", type=int, default=3, help="alternated runs of the speed test")
    parser.add_argument("--seed", type=int, default=12, help="the kill test's random moments")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = {"count": 500, "kills": 2, "kill_count": 1000, "rss_lines": 20_000, "rss_send": 200}
        args.runs = 1
    else:
        sizes = {
            "count": 20_000,
            "kills": 10,
            "kill_count": 10_000,
            "rss_lines": 1_000_000,
            "rss_send": 2_000,
        }
    out = [f"## Batch runner (`python -m benchmarks.batch{' --quick' if args.quick else ''}`)", ""]
    out += speed(sizes["count"], 64, args.runs)
    out += kill_test(sizes["kill_count"], sizes["kills"], 64, args.seed)
    out += peak_rss(sizes["rss_lines"], sizes["rss_send"], 64)
    print("\n".join(out))


if __name__ == "__main__":
    main()
