"""The benchmark scripts still run (a smoke test: speed itself is never asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


SMOKE = ["--quick", "--runs", "1", "--seconds", "0.05"]
SUBSET = [
    *("--only", "async-c64", "--only", "stream-64x100", "--only", "sync-8"),
    *("--only", "sync-hop", "--only", "rss"),
]


@pytest.mark.timeout(180)
def test_the_suite_runs_in_quick_mode_and_reports_every_client(tmp_path: Path) -> None:
    """python -m benchmarks --quick, cut to one short run of a subset: every client answered, all checked.

    Speed is not asserted: only that each scenario's table has a row per client and the targets table
    was filled in (a client that got a wrong reply fails the run, and with it this test).
    """
    report = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", *SMOKE, *SUBSET, "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, run.stderr
    assert report.read_text() == run.stdout
    clients = ("nebula_async", "aiohttp", "aiohttp iter_any", "openai", "nebula_sync", "httpx")
    hops = ("nebula_sync hop", "anyio portal.call", "anyio start_task_soon")
    for client in clients + hops:
        assert re.search(rf"^\| (\*\*)?{re.escape(client)}(\*\*)? \| [\d,]+", run.stdout, re.M), client
    for target in ("async-c64", "stream-64x100", "sync-8", "rss"):
        assert re.search(rf"^\| {target} \| .* \| [\d.]+× \| (met|\*\*not met\*\*)", run.stdout, re.M), target
    assert "skipped" not in run.stdout  # the dev extras bring every comparison client


def test_an_unknown_scenario_is_refused_with_the_known_ones() -> None:
    """--only with a typo fails at once and lists the scenarios."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "async-c65"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert run.returncode == 2
    assert "unknown scenario 'async-c65'" in run.stderr
    assert "async-c64" in run.stderr


def test_import_times_are_measured_per_module() -> None:
    """The import-time probe times each module over bare Python, and leaves out one that is missing."""
    from benchmarks._suite import _import_times

    times = _import_times(["json", "no_such_module_here"], 1)
    assert list(times) == ["json"]
    assert len(times["json"]) == 1
