"""``nebula batch``: parse, call ``AsyncNebulaClient.run_batch``, show its progress, say how to resume."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ._app import EXIT_API_ERROR, EXIT_INTERRUPTED, EXIT_OK, Settings, model_option

if TYPE_CHECKING:  # rich is imported when a batch runs: `nebula --help` stays quick
    from rich.console import Console

    from .. import BatchSummary, RateLimit
    from ._progress import BatchDisplay

__all__ = ["GRACE_PERIOD", "batch", "resume_command", "run_batch_command"]

GRACE_PERIOD = 10.0  # seconds the requests in flight get to finish after the first Ctrl-C


def _a_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # "-" would read "File '-' does not exist": it is refused for what it is.
    if value == "-":
        raise click.BadParameter(
            "a batch can't read stdin ('-'): it reads its input again to resume; save it to a file"
        )
    return value


def _per_minute(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # Checked here, not by RateLimit: its message would name requests_per_minute, not --rpm.
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number > 0, got {value:g}")
    return value


@click.command(short_help="Run a JSONL file of prompts; resumable.")
@click.argument(
    "input_path", metavar="IN.jsonl", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    callback=_a_file,
)  # fmt: skip
@click.option(
    "-o", "--output", "output_path", metavar="OUT.jsonl", required=True, type=click.Path(dir_okay=False),
    help="results, one line per input id; ids already there are skipped (resume)",
)  # fmt: skip
@model_option
@click.option(
    "--concurrency", type=int, default=16, show_default=True, metavar="N", help="requests in flight"
)
@click.option(
    "--rpm", type=float, metavar="R", callback=_per_minute, help="requests per minute to stay under"
)
@click.option(
    "--tpm", type=float, metavar="T", callback=_per_minute,
    help="tokens per minute to stay under (prompt + max_tokens)",
)  # fmt: skip
@click.option("--max-tokens", type=int, metavar="N", help="for the lines that don't set max_tokens")
@click.option("--retry-failed", is_flag=True, help="run again the ids whose output line is an error")
@click.option("--fsync", is_flag=True, help="fsync the output once a second (machines that may lose power)")
@click.pass_context
def batch(
    ctx: click.Context,
    input_path: str,
    output_path: str,
    model: str,
    concurrency: int,
    rpm: float | None,
    tpm: float | None,
    max_tokens: int | None,
    retry_failed: bool,
    fsync: bool,
) -> int:
    """Run every prompt of IN.jsonl, writing each result to OUT.jsonl as it completes.

    \b
    IN.jsonl: one {"prompt": ..., "id": ...} per line (id defaults to the line number; model,
    max_tokens, temperature, top_p and stop are optional), or OpenAI's batch-file lines as they are.
    Run the same command again to resume: ids already in OUT.jsonl are skipped.
    Ctrl-C stops starting requests and lets those in flight finish; a second Ctrl-C cancels them.
    """
    settings: Settings = ctx.obj
    options: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "concurrency": concurrency,
        "retry_failed": retry_failed,
        "fsync": fsync,
    }
    rate_limit: RateLimit | None = None
    if rpm is not None or tpm is not None:
        from .. import RateLimit

        rate_limit = RateLimit(requests_per_minute=rpm, tokens_per_minute=tpm)
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    program, argv = ctx.find_root().info_name or "nebula", list(settings.argv)
    commands = {
        "resume": resume_command(program, argv),
        "retry": resume_command(program, argv if retry_failed else [*argv, "--retry-failed"]),
    }
    return asyncio.run(
        run_batch_command(
            settings, input_path, output_path, options, rate_limit=rate_limit, console=console, **commands
        )
    )


def resume_command(program: str, args: list[str]) -> str:
    """Return the command line that resumes this batch: the same one, the API key's value left out."""
    words: list[str] = []
    hidden = False
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--api-key":
            skip = hidden = True
        elif arg.startswith("--api-key="):
            hidden = True
        else:
            words.append(arg)
    command = f"{program} {shlex.join(words)}"
    return command + " (with the same --api-key)" if hidden else command


@contextlib.contextmanager
def _signals(display: BatchDisplay, stop_event: threading.Event) -> Iterator[list[int]]:
    """Make SIGINT and SIGTERM stop the batch gracefully; a second one cancels this task."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal() -> None:
        received.append(1)
        if len(received) == 1:
            stop_event.set()
            # No count: the last progress can be half a second old, or not have come yet ("0 in flight").
            display.note(
                f"stopping: no new requests; those in flight get up to {GRACE_PERIOD:.0f} s "
                "to finish (Ctrl-C again to cancel them)"
            )
        elif task is not None:
            task.cancel()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal)
        except (NotImplementedError, RuntimeError):  # Windows' loops; not the main thread
            continue
        installed.append(signum)
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def run_batch_command(
    settings: Settings,
    input_path: str,
    output_path: str,
    options: dict[str, Any],
    *,
    rate_limit: RateLimit | None,
    console: Console,
    resume: str,
    retry: str,
) -> int:
    """Run the batch with progress on ``console``; return the exit code (0, 1 or 130)."""
    from ._progress import make_display

    display = make_display(console)
    stop_event = threading.Event()
    summary: BatchSummary | None = None
    limits = {} if rate_limit is None else {"rate_limit": rate_limit}
    async with settings.client(**limits) as client:
        with _signals(display, stop_event) as received:
            try:
                summary = await client.run_batch(
                    input_path,
                    output_path,
                    progress=display,
                    stop_event=stop_event,
                    grace_period=GRACE_PERIOD,
                    **options,
                )
            except asyncio.CancelledError:
                if len(received) < 2:
                    raise
                task = asyncio.current_task()
                if task is not None and sys.version_info >= (3, 11):
                    task.uncancel()  # ours, from the second signal: handled here, closing may await
            finally:
                display.close()
    if summary is None:  # the second signal cancelled what was in flight: no summary was made
        last = display.last
        done = f"{last.done:,} written in this run, {last.failed:,} of them failed; " if last else ""
        console.print(
            f"cancelled: {done}the requests in flight were not written", markup=False, soft_wrap=True
        )
        console.print(f"resume with: {resume}", markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    display.summary(summary)
    if summary.stopped == "interrupted":
        console.print(f"interrupted; resume with: {resume}", markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    if summary.stopped is not None:
        console.print(f"stopped ({summary.stopped}): {summary.error}", markup=False, soft_wrap=True)
        console.print(f"once that is fixed, resume with: {resume}", markup=False, soft_wrap=True)
        return EXIT_API_ERROR
    if summary.failed:
        console.print(
            f"{summary.failed:,} failed (their lines in {output_path} say why); to run them again: {retry}",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_API_ERROR
    return EXIT_OK
