"""``nebula demo``: the SDK at work against a fake API it starts on 127.0.0.1; no key, no network.

A generation, a stream arriving live, a 429 answered with Retry-After and retried, and a batch of a few
hundred prompts paced under a rate limit, with the progress bar and the summary ``nebula batch`` shows.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._app import EXIT_OK

if TYPE_CHECKING:  # rich is imported when the demo runs: `nebula --help` stays quick
    from rich.console import Console

    from .. import BatchProgress

__all__ = ["BATCH_RPM", "BATCH_SIZE", "demo", "run_demo"]

BATCH_SIZE = 300
BATCH_RPM = 6000  # 100 requests/s: the batch takes about 3 s, long enough to watch the bar
_MODEL = "DeepSeek-V3-0324"
_PROMPT = "Write a hello world program in Python"  # the API reference's example
_REPLY = 'Here\'s a simple Hello World program in Python:\n\nprint("Hello, World!")'
_STREAM_PROMPT = "Tell me a story"
_STORY = (
    "Once upon a time, a batch job ran at night. It kept under its rate limit, it was killed twice, "
    "and each time it resumed where it stopped, with every answer written exactly once."
)
_TOKEN_DELAY = 0.04  # seconds between streamed words: slow enough to watch them arrive
_RETRY_AFTER = 1.0


@click.command(short_help="See it all work offline, in about 10 s.")
def demo() -> int:
    """Show the SDK against a local fake API: no key or network needed, about 10 s."""
    import asyncio

    from rich.console import Console

    # soft_wrap: lines are not cut at 80 columns when the output is not a terminal.
    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)
    return asyncio.run(run_demo(out, err))


class _Narrator(logging.Handler):
    """Show the SDK's retry lines in the demo's output, where they are the point."""

    def __init__(self, out: Console) -> None:
        super().__init__(logging.INFO)
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        # markup=False: a message may hold square brackets, which rich would take for styles.
        self._out.print(f"   log: {record.levelname} {record.getMessage()}", style="dim", markup=False)


def _write_prompts(path: Path) -> None:
    with path.open("w") as file:
        for n in range(1, BATCH_SIZE + 1):
            file.write(json.dumps({"id": f"q{n}", "prompt": f"Question {n}: say a number"}) + "\n")


def _first_line(path: Path) -> str:
    with path.open() as file:
        return file.readline().rstrip("\n")


def _heading(out: Console, text: str, command: str) -> None:
    out.print()
    out.print(f"[bold]{text}[/]  [dim]{command}[/]")


async def run_demo(out: Console, err: Console) -> int:
    """Run the demo's four parts, narrating on ``out``, the batch's progress on ``err``; return 0."""
    from .. import AsyncNebulaClient, RateLimit
    from ..testing import FakeNebulaServer
    from ._progress import make_display

    started = time.monotonic()
    server = FakeNebulaServer(
        replies={_PROMPT: _REPLY, _STREAM_PROMPT: _STORY},
        stream_usage=True,
        requests_per_second=BATCH_RPM // 60,
    )
    narrator = _Narrator(out)
    sdk_logger = logging.getLogger("nebula_async")
    async with server:
        out.print(f"nebula demo: a fake API at {server.base_url}, on this machine (no key, no network)")
        async with AsyncNebulaClient(api_key="demo-key", base_url=server.base_url) as client:
            _heading(out, "1. generate", f'nebula generate "{_PROMPT}"')
            result = await client.generate_text(model=_MODEL, prompt=_PROMPT, max_tokens=100)
            out.print(result.text, markup=False)
            usage = result.usage
            out.print(
                f"   usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens",
                style="dim",
            )

            _heading(out, "2. a stream, arriving live", f'nebula generate --stream "{_STREAM_PROMPT}"')
            server.token_delay = _TOKEN_DELAY
            try:
                async with client.stream_text(model=_MODEL, prompt=_STREAM_PROMPT) as stream:
                    async for chunk in stream:
                        out.print(chunk.text, end="", markup=False)
                        out.file.flush()
            finally:
                server.token_delay = 0.0
            out.print(f"\n   [dim]finish_reason: {stream.finish_reason}[/]")

            _heading(out, "3. a rate limit", f"the API answers 429 with Retry-After: {_RETRY_AFTER:g} s")
            server.fail_next(1, status=429, code="rate_limit_exceeded", retry_after=_RETRY_AFTER)
            sdk_logger.addHandler(narrator)
            previous_level = sdk_logger.level
            sdk_logger.setLevel(logging.WARNING)
            try:
                retried = await client.generate_text(model=_MODEL, prompt="Say hi", max_tokens=20)
            finally:
                sdk_logger.removeHandler(narrator)
                sdk_logger.setLevel(previous_level)
            out.print(f"   succeeded after {retried.retries} retry: {retried.text!r}", markup=False)

        with tempfile.TemporaryDirectory(prefix="nebula-demo-") as folder:
            prompts, results = Path(folder, "prompts.jsonl"), Path(folder, "results.jsonl")
            _write_prompts(prompts)
            _heading(
                out,
                f"4. a batch of {BATCH_SIZE} prompts, paced under the API's {BATCH_RPM // 60} requests/s",
                f"nebula batch prompts.jsonl -o results.jsonl --rpm {BATCH_RPM}",
            )
            out.print(
                f"   a third of the way, the API answers one 429 with Retry-After: {_RETRY_AFTER:g} s: every "
                "request then waits at the client's shared gate",
                markup=False,
            )
            out.file.flush()
            display = make_display(err)
            before = len(server.requests)

            injected: list[int] = []

            def progress(state: BatchProgress) -> None:
                display(state)
                if state.done >= BATCH_SIZE // 3 and not injected:  # once: the hook also runs on a timer
                    injected.append(state.done)
                    server.fail_next(1, status=429, code="rate_limit_exceeded", retry_after=_RETRY_AFTER)

            rate_limit = RateLimit(requests_per_minute=BATCH_RPM)
            async with AsyncNebulaClient(
                api_key="demo-key", base_url=server.base_url, rate_limit=rate_limit
            ) as client:
                try:
                    summary = await client.run_batch(
                        prompts, results, model=_MODEL, max_tokens=16, concurrency=32, progress=progress
                    )
                finally:
                    display.close()
            display.summary(summary)
            err.file.flush()
            first = _first_line(results)
            out.print(f"   first line of results.jsonl: {first}", markup=False)
            limited = sum(1 for request in server.requests[before:] if request.status == 429)
            out.print(
                f"   the API answered 429 to {limited} of the batch's {BATCH_SIZE} requests", markup=False
            )
    out.print(f"\ndone in {time.monotonic() - started:.1f} s. Next: nebula --help, nebula models")
    out.file.flush()
    return EXIT_OK
