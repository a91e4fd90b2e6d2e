"""Kill and resume with real processes: run_batch killed with SIGKILL at random moments, then rerun.

The short form (2,000 prompts, 3 kills) runs in the normal suite; ``python -m benchmarks.batch``
runs the long one (10,000 prompts, 10 kills).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nebula_async.testing import FakeNebulaServer
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
        killed_mid_run = 0
        for _ in range(KILLS):
            before = output.stat().st_size if output.exists() else 0
            child = subprocess.Popen(command, cwd=ROOT, env=env)
            # Wait for the first line of this run (the child imported and validated), then a random moment.
            deadline = time.monotonic() + 10
            while (output.stat().st_size if output.exists() else 0) <= before and time.monotonic() < deadline:
                if child.poll() is not None:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.3))
            if child.poll() is None:
                killed_mid_run += 1
            child.send_signal(signal.SIGKILL)
            child.wait()
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=30)
        sent = len(fake.requests)
    data = output.read_bytes()
    assert data.endswith(b"\n"), f"seed {seed}"
    got = [json.loads(line)["id"] for line in data.splitlines()]
    assert sorted(got) == list(range(1, PROMPTS + 1)), f"seed {seed}"
    assert killed_mid_run >= 1, f"seed {seed}: every child finished before its kill"
    assert PROMPTS <= sent <= PROMPTS + KILLS * CONCURRENCY, f"seed {seed}"
