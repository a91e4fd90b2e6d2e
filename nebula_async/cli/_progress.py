"""How a batch's progress and summary look on stderr: a live rich bar on a terminal, plain lines otherwise.

Both displays are callables for ``run_batch(progress=...)``: the same hook a library user would pass.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from .. import BatchProgress, BatchSummary

__all__ = ["PLAIN_INTERVAL", "BatchDisplay", "LiveDisplay", "PlainDisplay", "make_display", "status_text"]

PLAIN_INTERVAL = 5.0  # seconds between two plain progress lines: a log, not an animation
_LIVE_INTERVAL = 0.1  # the bar redraws ten times a second: more updates would only cost the loop time


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_text(progress: BatchProgress) -> str:
    """Return the one-line state of a running batch: failures, rates, ETA, or the rate-limit pause."""
    parts = [
        f"{progress.failed:,} failed",
        f"{progress.requests_per_second:,.1f} req/s",
        f"{progress.tokens_per_second:,.0f} tok/s",
    ]
    if progress.paused_for > 0:
        parts.append(
            f"rate-limited, resuming in {math.ceil(progress.paused_for)} s"
        )  # 0.3 s: "1 s", not "0 s"
    else:
        parts.append(f"ETA {_duration(progress.eta)}")
    return ", ".join(parts)


class BatchDisplay:
    """Show a batch's progress on ``console``: call it with each BatchProgress; ``close()`` at the end."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: BatchProgress | None = None

    def __call__(self, progress: BatchProgress) -> None:
        """Record ``progress``; subclasses show it."""
        self.last = progress

    def note(self, message: str) -> None:
        """Print a line about the batch (a signal received, ...) above the progress."""
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        """Stop showing progress; the last state stays on screen."""

    def summary(self, summary: BatchSummary) -> None:
        """Print the closing summary."""
        self.close()
        tokens = summary.prompt_tokens + summary.completion_tokens
        self.console.print(
            f"succeeded {summary.succeeded:,}, failed {summary.failed:,}, "
            f"skipped as already done {summary.skipped:,}, not run {summary.not_run:,}; "
            f"{_duration(summary.elapsed)}, {summary.requests_per_second:,.1f} req/s, "
            f"{tokens:,} tokens ({summary.prompt_tokens:,} prompt + "
            f"{summary.completion_tokens:,} completion)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


class PlainDisplay(BatchDisplay):
    """A plain line every PLAIN_INTERVAL seconds (and the first at once): for logs and pipes."""

    def __init__(self, console: Console, *, interval: float = PLAIN_INTERVAL) -> None:
        super().__init__(console)
        self._interval = interval
        self._next = 0.0

    def __call__(self, progress: BatchProgress) -> None:
        """Print a line when the last one is ``interval`` seconds old."""
        self.last = progress
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self._line(progress)

    def _line(self, progress: BatchProgress) -> None:
        done = progress.skipped + progress.done
        self.console.print(
            f"batch: {done:,}/{progress.total:,} done, {status_text(progress)}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


class LiveDisplay(BatchDisplay):
    """A rich progress bar, redrawn in place: done/total, failed, rates, ETA or the rate-limit pause."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._progress = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            refresh_per_second=10,
        )
        self._task: TaskID | None = None
        self._next = 0.0

    def __call__(self, progress: BatchProgress) -> None:
        """Update the bar, at most ten times a second (the hook runs after every result)."""
        self.last = progress
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + _LIVE_INTERVAL
        self._show(progress)

    def _show(self, progress: BatchProgress) -> None:
        done = progress.skipped + progress.done
        status = status_text(progress)
        if progress.paused_for > 0:
            status = f"[yellow]{status}[/]"
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("batch", total=progress.total, completed=done, status=status)
        else:
            self._progress.update(self._task, total=progress.total, completed=done, status=status)

    def note(self, message: str) -> None:
        """Print above the bar, which stays at the bottom."""
        self._progress.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        """Draw the last state and leave it on screen."""
        if self.last is not None:
            self._show(self.last)
        self._progress.stop()


def make_display(console: Console) -> BatchDisplay:
    """Return the live bar when ``console`` is a terminal, plain lines otherwise."""
    return LiveDisplay(console) if console.is_terminal else PlainDisplay(console)
