"""The benchmark scripts still run (a smoke test: speed itself is never asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fake_server_benchmark_runs_and_reports_both_modes() -> None:
    """benchmarks/fake_server.py, in a tiny run, prints a req/s line for non-streaming and for streaming."""
    tiny = ["--runs", "1", "--seconds", "0.2", "--concurrency", "4"]
    run = subprocess.run(
        [sys.executable, "benchmarks/fake_server.py", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert re.search(r"^non-streaming: +[\d,]+ req/s", run.stdout, re.M), run.stdout
    assert re.search(r"^streaming +: +[\d,]+ req/s .* events/s", run.stdout, re.M), run.stdout
