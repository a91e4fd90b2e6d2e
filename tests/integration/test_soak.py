"""The soak: one client at concurrency 256 through random faults; every call ends well, nothing is left.

The short form (2 rounds of 400 calls, under ``python -X dev -W error`` and asyncio's debug mode)
runs in the normal suite; ``python -m benchmarks.soak`` is the long form (3 rounds of 7,000 calls),
whose figures are in benchmarks/RESULTS.md ("Soak under faults").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.soak import batch_failures, batch_soak, failures, one_call
from nebula_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncNebulaClient,
    NebulaError,
    RateLimitError,
    ServerError,
    Timeout,
)
from nebula_async.testing import FAULT_KINDS, FakeNebulaServer, FaultMix
from tests.helpers import ROOT


def run_short_soak() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``benchmarks.soak --quick --json`` under -X dev, -W error and asyncio debug; parse its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONASYNCIODEBUG="1")
    command = [sys.executable, "-X", "dev", "-W", "error", "-m", "benchmarks.soak", "--quick", "--json"]
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100, check=False
    )
    lines = proc.stdout.splitlines()
    return proc, json.loads(lines[-1]) if lines else {}


@pytest.mark.soak
@pytest.mark.timeout(120)  # about 8 s alone; the suite's other worker may slow it several times over
def test_every_call_of_the_soak_ends_in_its_text_or_a_typed_error() -> None:
    """800 calls at concurrency 256 with 10% faults: successes carry the fault-free text, errors are typed.

    It also checks that no call hangs, no connection or task is left after aclose(), and that nothing is
    written to stderr under -X dev, -W error and PYTHONASYNCIODEBUG=1: no "Unclosed ...", no "Task
    was destroyed but it is pending", no ResourceWarning, no slow-callback warning (over 1 s).
    """
    proc, figures = run_short_soak()
    assert proc.stderr == ""
    assert proc.returncode == 0, figures.get("failures")
    assert figures["failures"] == []
    assert figures["calls"] == 800
    assert figures["untyped"] == figures["hangs"] == figures["wrong_texts"] == 0
    assert sum(figures["outcomes"].values()) == 800
    assert figures["connections_left"] == figures["tasks_left"] == 0
    # With three retries, few calls fail: a cut stream or an error event is not retried.
    assert figures["successes"] >= 700, figures["outcomes"]
    # About 90 faults of every kind are drawn; the two stream-only kinds come a few times each, and
    # once in a while not at all (the table test below checks each kind on its own).
    injected = figures["faults_injected"]
    assert set(injected) == set(FAULT_KINDS)
    assert sum(injected.values()) >= 40, injected
    assert sum(1 for count in injected.values() if count) >= 5, injected
    # RSS within 5% is checked over 3 rounds in the long form; in two short rounds on a loaded
    # machine the second one may still be warming up: only a gross leak (10%) is caught here.
    first, second = (r["rss"] for r in figures["rounds"])
    assert second <= first * 1.10, (first, second)


@pytest.mark.soak
@pytest.mark.timeout(60)
def test_the_batch_soak_runs_and_passes_its_checks() -> None:
    """``benchmarks.soak --batch`` cut down: killed once under faults, finished, mended by retry_failed."""
    figures = batch_soak(prompts=300, kills=1, concurrency=16, rate=0.1, seed=5)
    assert batch_failures(figures) == []
    assert figures["ids_once_after_faults"]
    assert figures["ids_once_after_retry_failed"]
    assert sum(figures["error_records"].values()) > 0  # seed 5 faults some ids; mended after
    assert figures["errors_left"] == figures["wrong_texts"] == 0


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({"untyped": 1}, "1 calls raised outside the NebulaError tree"),
        ({"hangs": 2}, "2 calls hung past the call timeout"),
        ({"wrong_texts": 1, "wrong_examples": ["'p' (plain): 'x'"]}, "1 successes had the wrong text"),
        ({"connections_left": 3}, "3 connections left open after aclose()"),
        ({"tasks_left": 2, "tasks_left_examples": ["<coroutine>"]}, "2 tasks left pending after aclose()"),
        ({"rounds": [{"rss": 100}, {"rss": 100}, {"rss": 106}]}, "RSS grew from 100 to 106 bytes"),
    ],
)
def test_the_soak_fails_on_each_broken_check(change: dict[str, Any], found: str) -> None:
    """Each of the soak's checks turns a bad figure into a failure naming it; good figures pass."""
    good: dict[str, Any] = {
        "untyped": 0,
        "hangs": 0,
        "wrong_texts": 0,
        "wrong_examples": [],
        "connections_left": 0,
        "tasks_left": 0,
        "tasks_left_examples": [],
        "rounds": [{"rss": 100}, {"rss": 101}, {"rss": 105}],
    }
    assert failures(good) == []
    (failure,) = failures({**good, **change})
    assert failure.startswith(found)


# What each fault of the soak's mix must end in once retries are spent: one class per cause.
CLASS_OF_FAULT: list[tuple[str, bool, type[NebulaError]]] = [
    ("rate_limit", False, RateLimitError),
    ("rate_limit", True, RateLimitError),
    ("server_error", False, ServerError),
    ("server_error", True, ServerError),
    ("html", False, ServerError),
    ("html", True, ServerError),
    ("disconnect", False, APIConnectionError),
    ("disconnect", True, APIConnectionError),
    ("slow", False, APITimeoutError),
    ("slow", True, APITimeoutError),
    ("drop_stream", True, APIConnectionError),
    ("error_event", True, ServerError),
]


def test_the_class_table_covers_every_kind_of_fault() -> None:
    """Every kind a FaultMix can inject has a row below: a new kind needs its expected class."""
    assert {kind for kind, _, _ in CLASS_OF_FAULT} == set(FAULT_KINDS)


@pytest.mark.parametrize(
    ("kind", "stream", "expected"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in CLASS_OF_FAULT],
)
async def test_each_fault_of_the_soak_ends_in_the_class_of_its_cause(
    kind: str, stream: bool, expected: type[NebulaError]
) -> None:
    """Without retries, each fault kind of the mix raises the error class its cause names, on both paths."""
    mix = FaultMix(rate=1.0, seed=1, weights={kind: 1.0}, slow_seconds=1.0)
    async with (
        FakeNebulaServer(faults=mix) as server,
        AsyncNebulaClient(
            server.api_key,
            base_url=server.base_url,
            max_retries=0,
            timeout=Timeout(read=0.2, stream_idle=0.2),
        ) as client,
    ):
        with pytest.raises(NebulaError) as caught:
            await one_call(client, "hi", stream=stream)
        assert server.faults_injected[kind] == 1
    assert type(caught.value) is expected
