"""The benchmark scripts still run (a smoke test: speed itself is never asserted here)."""

from __future__ import annotations

import importlib.util
import os
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
# The clients a plain dev install has: the SDK's and raw aiohttp (its dependency).
OWN_CLIENTS = (
    "nebula_async",
    "aiohttp",
    "aiohttp iter_any",
    "nebula_sync",
    "nebula_sync hop",
)
COMPARISON_MODULES = ("openai", "httpx", "anyio")  # the [bench] extra


def _run_suite(tmp_path: Path, *args: str, timeout: float) -> str:
    report = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", *SMOKE, *args, "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr
    assert report.read_text() == run.stdout
    return run.stdout


def _assert_rows(report: str, clients: tuple[str, ...], targets: tuple[str, ...]) -> None:
    for client in clients:
        assert re.search(rf"^\| (\*\*)?{re.escape(client)}(\*\*)? \| [\d,]+", report, re.M), client
    for target in targets:
        assert re.search(rf"^\| {target} \| .* \| [\d.]+× \| (met|\*\*not met\*\*)", report, re.M), target


def test_the_suite_runs_the_sdk_and_raw_aiohttp_in_seconds(tmp_path: Path) -> None:
    """A one-run quick suite of the clients a dev install has: every one answered and checked.

    Speed is not asserted: only that each scenario's table has a row per client and the async
    targets were filled in (a client that got a wrong reply fails the run, and with it this test).
    """
    clients = [arg for name in OWN_CLIENTS for arg in ("--client", name)]
    only = ["--only", "async-c64", "--only", "stream-64x100", "--only", "sync-8", "--only", "sync-hop"]
    report = _run_suite(tmp_path, *only, *clients, timeout=25)
    _assert_rows(report, OWN_CLIENTS, ("async-c64", "stream-64x100"))
    assert "skipped" not in report


@pytest.mark.timeout(180)
def test_the_suite_runs_every_comparison_client(tmp_path: Path) -> None:
    """With the [bench] extra, a one-run quick subset has a row per client and fills in every target."""
    missing = [name for name in COMPARISON_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: the comparison clients need pip install -e '.[bench]'"
        )
    report = _run_suite(tmp_path, *SUBSET, timeout=170)
    hops = ("nebula_sync hop", "anyio portal.call", "anyio start_task_soon")
    _assert_rows(
        report,
        ("nebula_async", "aiohttp", "aiohttp iter_any", "openai", "nebula_sync", "httpx", *hops),
        ("async-c64", "stream-64x100", "sync-8", "rss"),
    )
    assert "skipped" not in report


def test_a_missing_comparison_client_is_reported_as_skipped(tmp_path: Path) -> None:
    """A client whose library is not importable gets a "skipped" row naming it; the run still succeeds."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "httpx.py").write_text("raise ImportError('blocked for this test', name='httpx')\n")
    report = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            *SMOKE,
            "--only",
            "sync-8",
            "--client",
            "httpx",
            "--output",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\| httpx \| skipped: httpx is not installed \|$", run.stdout, re.M), run.stdout


@pytest.mark.parametrize(
    ("option", "typo", "known"),
    [("--client", "aiohtp", "nebula_async"), ("--only", "async-c65", "async-c64")],
    ids=["client", "scenario"],
)
def test_an_unknown_client_or_scenario_is_refused_with_the_known_ones(
    option: str, typo: str, known: str
) -> None:
    """--client or --only with a typo fails at once and lists what exists."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", option, typo],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert run.returncode == 2
    kind = "client" if option == "--client" else "scenario"
    assert f"unknown {kind} {typo!r}" in run.stderr
    assert known in run.stderr


def test_import_times_are_measured_per_module() -> None:
    """The import-time probe times each module over bare Python, and leaves out one that is missing."""
    from benchmarks._suite import _import_times

    times = _import_times(["json", "no_such_module_here"], 1)
    assert list(times) == ["json"]
    assert len(times["json"]) == 1


def test_import_rows_give_the_ratio_to_aiohttp_and_check_the_targets() -> None:
    """The import table and the targets give each module's median over aiohttp's, judged against its bound."""
    from benchmarks._report import render

    imports = {"nebula_async": [30.0, 40.0, 50.0], "nebula_sync": [60.0], "aiohttp": [100.0]}
    header = {
        "command": "python -m benchmarks --only import",
        "date": "2026-12-02",
        "machine": "test",
        "python": "CPython 3",
        "versions": {},
        "pinned": False,
        "runs": 1,
        "seconds": 0.1,
        "took": 1.0,
    }
    report = render([], {}, imports, header)
    assert "| **nebula_async** | 40 (30–50) | 0.40× |" in report
    assert "| aiohttp | 100 | 1.00× |" in report
    assert "| import | nebula_async ≤ 0.4 × aiohttp | 0.40× | met |" in report
    assert "| import | nebula_sync ≤ 0.5 × aiohttp | 0.60× | **not met** |" in report


def test_pacing_benchmark_runs_every_contender_in_seconds() -> None:
    """pacing --quick prints its section: every contender in both scenarios, and the acquire table."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.pacing", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("## Pacing under a rate limit\n")
    assert "### 200 requests per second" in out
    assert "### 4,600 tokens per second" in out
    for name in ("RateLimit, burst_seconds=0", "RateLimit, burst_seconds=1.0", "cookbook parallel processor"):
        assert len(re.findall(rf"^\| .*{re.escape(name)}.* \| \d+ \| 40 of 40 \|", out, re.M)) == 2, name
    assert len(re.findall(r"^\| aiolimiter AsyncLimiter \+ aiohttp \| ", out, re.M)) == 2
    assert re.search(r"^\| rate_limit=None \(the 429 gate only\) \| [\d.]+ \|$", out, re.M), out


@pytest.mark.timeout(90)
def test_the_batch_benchmark_runs_and_reports_its_three_parts() -> None:
    """python -m benchmarks.batch --quick prints the speed ratios, the kill test and the peak RSS."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("## Batch runner")
    assert re.search(r"^\| run_batch \| [\d,]+ \| .* \| \d\.\d\d× \|$", out, re.M), out
    assert re.search(r"^\| as_completed \| [\d,]+ \|", out, re.M), out
    assert "every id exactly once: **yes** (1,000 lines, 1,000 distinct ids)" in out
    assert re.search(r"peak RSS of the run_batch process: \*\*[\d.]+ MiB\*\*", out), out
