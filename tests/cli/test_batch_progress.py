"""How a batch's progress reads: the status line, the rate-limit countdown, plain lines and the live bar."""

from __future__ import annotations

import io

import attrs
from rich.console import Console

from nebula_async import BatchProgress, BatchSummary
from nebula_async.cli._progress import LiveDisplay, PlainDisplay, make_display, status_text

RUNNING = BatchProgress(
    total=1000, skipped=100, done=400, succeeded=390, failed=10, in_flight=16, prompt_tokens=4000,
    completion_tokens=8000, elapsed=20.0, requests_per_second=20.0, tokens_per_second=600.0, eta=25.0,
    paused_for=0.0,
)  # fmt: skip
SUMMARY = BatchSummary(
    total=1000, skipped=100, succeeded=890, failed=10, not_run=0, elapsed=75.0, requests_per_second=12.0,
    prompt_tokens=9000, completion_tokens=18000,
)  # fmt: skip


def _console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=200, highlight=False), buffer


def test_status_names_failures_rates_and_eta() -> None:
    """The status line gives failed, requests/s, tokens/s and the ETA."""
    assert status_text(RUNNING) == "10 failed, 20.0 req/s, 600 tok/s, ETA 25 s"
    assert status_text(attrs.evolve(RUNNING, eta=None)).endswith("ETA ?")
    assert status_text(attrs.evolve(RUNNING, eta=4000.0)).endswith("ETA 1h06m")
    assert status_text(attrs.evolve(RUNNING, eta=90.0)).endswith("ETA 1m30s")


def test_a_closed_gate_shows_a_countdown_rounded_up() -> None:
    """While the 429 gate is closed the ETA gives way to "rate-limited, resuming in N s", never "0 s"."""
    assert status_text(attrs.evolve(RUNNING, paused_for=2.2)).endswith("rate-limited, resuming in 3 s")
    assert status_text(attrs.evolve(RUNNING, paused_for=0.1)).endswith("rate-limited, resuming in 1 s")


def test_plain_display_prints_at_once_then_at_most_every_interval() -> None:
    """The first state is printed at once; the next ones only once the interval has passed."""
    console, buffer = _console(terminal=False)
    display = PlainDisplay(console, interval=3600)
    display(RUNNING)
    display(attrs.evolve(RUNNING, done=401))
    assert buffer.getvalue() == "batch: 500/1,000 done, 10 failed, 20.0 req/s, 600 tok/s, ETA 25 s\n"
    assert display.last == attrs.evolve(RUNNING, done=401)


def test_summary_lists_every_count() -> None:
    """The summary gives succeeded, failed, skipped, not run, elapsed, requests/s and tokens."""
    console, buffer = _console(terminal=False)
    PlainDisplay(console).summary(SUMMARY)
    assert buffer.getvalue() == (
        "succeeded 890, failed 10, skipped as already done 100, not run 0; 1m15s, 12.0 req/s, "
        "27,000 tokens (9,000 prompt + 18,000 completion)\n"
    )


def test_live_display_draws_a_bar_and_leaves_its_last_state() -> None:
    """On a terminal the bar shows done/total and the status, and closing draws the last state."""
    console, buffer = _console(terminal=True)
    display = make_display(console)
    assert isinstance(display, LiveDisplay)
    display(attrs.evolve(RUNNING, paused_for=1.5))
    display.note("stopping")
    display(attrs.evolve(RUNNING, done=900))  # within the redraw interval: kept, drawn at close
    display.close()
    output = buffer.getvalue()
    assert "rate-limited, resuming in 2 s" in output
    assert "stopping" in output
    assert "1000/1000" in output


def test_make_display_picks_plain_lines_off_a_terminal() -> None:
    """A console that is not a terminal gets the plain display."""
    console, _ = _console(terminal=False)
    assert isinstance(make_display(console), PlainDisplay)
