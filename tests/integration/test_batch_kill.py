"""Kill and resume with real processes: run_batch killed with SIGKILL at random moments, then rerun.

The short form (2,000 prompts, 3 kills) runs in the normal suite; ``python -m benchmarks.batch``
runs the long one (10,000 prompts, 10 kills).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from benchmarks.soak import BATCH_CHILD, kill_at_random_moments
from nebula_async.testing import FakeNebulaServer, FaultMix, default_reply
from tests.helpers import ROOT

CHILD = """
import asyncio, sys
from nebula_async import AsyncNebulaClient

async def main() -> None:
    async with AsyncNebulaClient("key", base_url=sys.argv[1], max_retries=0) as client:
        await client.run_batch(sys.argv[2], sys.argv[3], model="m", concurrency=int(sys.argv[4]))

asyncio.run(main())
"""

PROMPTS = 2000
KILLS = 3
CONCURRENCY = 16


@pytest.mark.timeout(60)
def test_every_id_is_written_exactly_once_across_kills(tmp_path: Path) -> None:
    """After SIGKILLs at random moments and a final rerun, each id has one whole line; few requests repeat."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(PROMPTS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    with FakeNebulaServer(models=["m"]).run_in_thread() as fake:
        command = [sys.executable, "-c", CHILD, fake.base_url, str(source), str(output), str(CONCURRENCY)]
        killed_mid_run = kill_at_random_moments(command, output, rng, KILLS, longest=0.3, env=env)
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=30)
        sent = len(fake.requests)
    data = output.read_bytes()
    assert data.endswith(b"\n"), f"seed {seed}"
    got = [json.loads(line)["id"] for line in data.splitlines()]
    assert sorted(got) == list(range(1, PROMPTS + 1)), f"seed {seed}"
    assert killed_mid_run >= 1, f"seed {seed}: every child finished before its kill"
    assert PROMPTS <= sent <= PROMPTS + KILLS * CONCURRENCY, f"seed {seed}"


# Every kind that can reach a plain request; "slow" holds a reply longer than the child's read timeout.
BATCH_FAULTS = FaultMix(rate=0.1, slow_seconds=0.6)


@pytest.mark.soak
@pytest.mark.timeout(90)
def test_every_id_ends_once_across_kills_under_faults_and_retry_failed_mends_them(tmp_path: Path) -> None:
    """Under 10% random faults, killed at random and resumed: one record per id; then retry_failed fixes all.

    Every record is a success with the fault-free text or an error record with a code; once the
    faults stop, a retry_failed run turns every error record into a success, still once per id.
    """
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(PROMPTS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    mix = attrs.evolve(BATCH_FAULTS, seed=seed)
    with FakeNebulaServer(models=["m"], faults=mix, max_recorded=0).run_in_thread() as fake:
        base = [sys.executable, "-c", BATCH_CHILD, fake.base_url, str(source), str(output), str(CONCURRENCY)]
        killed_mid_run = kill_at_random_moments([*base, "0"], output, rng, KILLS, longest=0.3, env=env)
        subprocess.run([*base, "0"], cwd=ROOT, env=env, check=True, timeout=60)
        injected = fake.faults_injected
        faulted = [json.loads(line) for line in output.read_bytes().splitlines()]
        fake.faults = None
        subprocess.run([*base, "1"], cwd=ROOT, env=env, check=True, timeout=60)
    assert killed_mid_run >= 1, f"seed {seed}: every child finished before its kill"
    assert sorted(r["id"] for r in faulted) == list(range(1, PROMPTS + 1)), f"seed {seed}"
    errors = [r for r in faulted if "error" in r]
    assert errors, f"seed {seed}: no error record at a 10% fault rate"
    # The codes of the mix's faults; a "slow" one is a timeout, an HTML page api_error (it has no code).
    codes = {"rate_limit_exceeded", "server_error", "api_error", "timeout", "connection_error"}
    assert {r["error"]["code"] for r in errors} <= codes, f"seed {seed}"
    assert sum(injected.values()) > 0, f"seed {seed}"
    mended = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert sorted(r["id"] for r in mended) == list(range(1, PROMPTS + 1)), f"seed {seed}"
    for record in mended:
        assert record.get("text") == default_reply("m", f"p{record['id'] - 1}", 0.7, 1.0), (
            f"seed {seed}: {record}"
        )
