"""run_batch: a JSONL file of prompts to a JSONL file of results, exactly once per id across reruns.

1. Validation (in a worker thread, before anything is sent): the whole input is read, every
   problem reported at once (BatchInputError); the ids' digests are kept (``_doneset``).
2. The output a previous run left is read: its ids are done (failures too, unless
   ``retry_failed``); a torn last line is cut; with ``retry_failed`` the failure lines go.
3. The input is read again, lazily, and every id not done is sent through Completions; each result
   is appended as one line as soon as it arrives. A kill loses only the calls in flight, which a
   rerun sends again.

A job-wide error (no quota, a bad key, no permission) or ``stop_event`` stops it: no new request
starts, the ones in flight get ``grace_period`` seconds to finish (a job-wide error's own item is
not written: a rerun does it), then are cancelled and not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from ._batch import Completions
from ._batchfile import Defaults, iter_requests, scan_input
from ._checks import check_int, check_number
from ._doneset import IdDigester, IdSet
from ._errors import AuthenticationError, InsufficientQuotaError, PermissionDeniedError
from ._models import GenerateRequest, TextGeneration
from ._outfile import RecordWriter, open_output, prepare_output, scan_output
from ._records import BatchId, error_record, success_record

if TYPE_CHECKING:
    from ._calls import CallPath

__all__ = ["JOB_WIDE_ERRORS", "BatchProgress", "BatchSummary", "check_batch_options", "run_batch"]

JOB_WIDE_ERRORS: dict[type[Exception], str] = {
    InsufficientQuotaError: "insufficient_quota",
    AuthenticationError: "authentication",
    PermissionDeniedError: "permission_denied",
}
"""The errors that stop a batch (no other request could succeed), with BatchSummary.stopped's value."""

_TICK_SECONDS = 0.1  # how often stop_event is looked at
_PROGRESS_TICKS = 5  # progress every 5 ticks, about twice a second, even when nothing completes
_ETA_AFTER_SECONDS = 1.0  # of sending, before an ETA is given
_SKIPS_PER_YIELD = 1000  # a resumed run skipping many done lines still lets the loop breathe


@attrs.frozen
class BatchProgress:
    """Where a running batch stands; given to run_batch's ``progress`` hook.

    ``total`` counts the input's ids, ``skipped`` those already in the output when the run began,
    ``done`` those written by this run (``succeeded`` + ``failed``). Rates and ``eta`` (seconds;
    None during the first second of sending, and once stopped) come from this run's sending alone,
    so a resumed run's ETA is right, and checking a large input first does not skew them.
    ``paused_for`` is the seconds until the client's shared 429 back-off ends (0.0 when none).
    """

    total: int
    skipped: int
    done: int
    succeeded: int
    failed: int
    in_flight: int
    prompt_tokens: int
    completion_tokens: int
    elapsed: float
    requests_per_second: float
    tokens_per_second: float
    eta: float | None
    paused_for: float


@attrs.frozen
class BatchSummary:
    """How a batch run ended.

    ``not_run`` counts the input's ids with no line in the output yet (a rerun does them); a stop
    that came while the files were being read leaves every count at 0. ``stopped`` is None when
    the run went to the end, else why it stopped: ``"interrupted"`` (stop_event, Ctrl-C),
    ``"insufficient_quota"``, ``"authentication"`` or ``"permission_denied"``; ``error`` is then
    the job-wide error that stopped it.
    """

    total: int
    skipped: int
    succeeded: int
    failed: int
    not_run: int
    elapsed: float
    requests_per_second: float
    prompt_tokens: int
    completion_tokens: int
    stopped: str | None = None
    error: Exception | None = attrs.field(default=None, eq=False)
    output: str = ""


@attrs.define
class _Counts:
    total: int
    skipped: int
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str | None = None
    error: Exception | None = None

    def progress(self, elapsed: float, sending: float, in_flight: int, paused_for: float) -> BatchProgress:
        """``sending``: seconds since the first request could start (reading the input comes before)."""
        done = self.succeeded + self.failed
        # Rates count from the first send, not from the start: checking a large input first takes
        # seconds in which nothing can complete, and would make the first rates (and ETA) far too low.
        rate = done / sending if sending > 0 else 0.0
        left = self.total - self.skipped - done
        # A first result or two say little about the rate: no ETA before a second of sending.
        measured = done > 0 and sending >= _ETA_AFTER_SECONDS
        if self.stopped is not None:
            eta = None
        elif left == 0:
            eta = 0.0
        else:
            eta = left / rate if measured else None
        tokens = self.prompt_tokens + self.completion_tokens
        return BatchProgress(
            self.total, self.skipped, done, self.succeeded, self.failed, in_flight,
            self.prompt_tokens, self.completion_tokens, elapsed, rate,
            tokens / sending if sending > 0 else 0.0, eta, paused_for,
        )  # fmt: skip


@attrs.frozen
class _Plan:
    total: int
    skipped: int
    done: IdSet
    digest: IdDigester
    output: BinaryIO  # open for appending, and locked


def check_batch_options(
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: Sequence[str] | None,
    concurrency: int,
    retry_failed: bool,
    fsync: bool,
    progress: Callable[[BatchProgress], None] | None,
    stop_event: threading.Event | None,
    grace_period: float,
) -> Defaults:
    """Check run_batch's options (TypeError or ValueError naming the option); return the lines' defaults."""
    check_int("concurrency", concurrency, 1)
    check_number("grace_period", grace_period, unit=" of seconds")
    for name, flag in (("retry_failed", retry_failed), ("fsync", fsync)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable or None, got {type(progress).__name__}")
    if stop_event is not None and not callable(getattr(stop_event, "is_set", None)):
        raise TypeError(f"stop_event must be a threading.Event or None, got {type(stop_event).__name__}")
    # The options go through the request's own checks, with the same messages.
    options = GenerateRequest(model or "-", "-", max_tokens, temperature, top_p, stop)
    return Defaults(model, max_tokens, temperature, top_p, options.stop)


class _StoppedEarly(Exception):
    """Raised by the check in the preparing thread: a stop came before the files were read."""


def _prepare(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    defaults: Defaults,
    retry_failed: bool,
    check: Callable[[], None],
) -> _Plan:
    # In a worker thread: a million-line file takes seconds to read, and the loop may serve others.
    same = False
    with contextlib.suppress(OSError):  # either missing: not the same file
        same = os.path.samefile(input, output)
    if same:  # its lines would be read as records: a confusing list of problems
        raise ValueError(f"the output must not be the input file: {os.fspath(output)}")
    with contextlib.suppress(FileNotFoundError):  # a first run creates it
        if not stat.S_ISREG(os.stat(output).st_mode):  # /dev/stdout, a pipe: reading it back would hang
            raise ValueError(
                f"the output must be a regular file (it is read back to resume), got {os.fspath(output)}"
            )
    for _ in range(5):
        digest = IdDigester()
        scan = scan_input(input, defaults, digest, check)
        if not scan.collided:  # else two ids of the input share a digest: try another key
            break
    else:  # pragma: no cover - each try fails with a probability below 2**-24 for 1,000,000 ids
        raise RuntimeError("the input's ids could not be told apart by their digests")
    file = open_output(output)  # locked before it is read: no other run writes to it until we end
    try:
        out = scan_output(output, digest, retry_failed=retry_failed, check=check)
        skipped = scan.ids.count_in(out.done)
        ids = scan.ids

        def rerun(batch_id: BatchId) -> bool:
            return digest(batch_id) in ids

        file = prepare_output(file, output, out, retry_failed=retry_failed, rerun=rerun)
    except BaseException:
        file.close()
        raise
    return _Plan(scan.total, skipped, out.done, digest, file)


class _Jobs:
    """The Source of the sending pass: the input's (id, request) pairs not yet done, until stop()."""

    def __init__(
        self,
        lines: Generator[tuple[BatchId, GenerateRequest], None, None],
        plan: _Plan,
        stop_event: threading.Event | None,
        interrupted: Callable[[], None],
    ) -> None:
        self._lines = lines
        self._done = plan.done
        self._digest = plan.digest
        self._stop_event = stop_event
        self._interrupted = interrupted
        self._stopped = False

    async def next(self) -> tuple[tuple[BatchId, GenerateRequest]] | None:
        if self._stop_event is not None and self._stop_event.is_set():  # looked at before each request
            self._interrupted()
        skips = 0
        while not self._stopped:
            job = next(self._lines, None)
            if job is None:
                return None
            if self._digest(job[0]) not in self._done:
                return (job,)
            skips += 1
            if skips % _SKIPS_PER_YIELD == 0:
                await asyncio.sleep(0)
        return None

    def stop(self) -> None:
        self._stopped = True


async def run_batch(
    calls: CallPath,
    generate: Callable[[GenerateRequest], Awaitable[TextGeneration]],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    defaults: Defaults,
    concurrency: int,
    retry_failed: bool,
    fsync: bool,
    progress: Callable[[BatchProgress], None] | None,
    stop_event: threading.Event | None,
    grace_period: float,
) -> BatchSummary:
    """Run the batch; see AsyncNebulaClient.run_batch (the arguments are checked there)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    abandoned = threading.Event()

    def check() -> None:  # in the preparing thread, every few thousand lines
        if abandoned.is_set() or (stop_event is not None and stop_event.is_set()):
            raise _StoppedEarly

    # Reading a million-line input takes seconds: a stop (Ctrl-C) or a cancel must not wait for it.
    # The thread can't be cancelled; the check ends it, and what it opened is closed.
    preparing = loop.run_in_executor(None, _prepare, input, output, defaults, retry_failed, check)
    try:
        plan = await asyncio.shield(preparing)
    except asyncio.CancelledError:
        abandoned.set()
        preparing.add_done_callback(_close_abandoned)
        raise
    except _StoppedEarly:
        elapsed = loop.time() - started
        return BatchSummary(0, 0, 0, 0, 0, elapsed, 0.0, 0, 0, "interrupted", None, os.fspath(output))
    writer = RecordWriter(plan.output, fsync=fsync)
    sending_from = loop.time()
    counts = _Counts(plan.total, plan.skipped)
    lines = iter_requests(input, defaults)
    jobs = _Jobs(lines, plan, stop_event, lambda: stop("interrupted"))

    async def send(job: tuple[BatchId, GenerateRequest]) -> TextGeneration:
        return await generate(job[1])

    completions = Completions(jobs, send, concurrency=concurrency, calls=calls)
    deadline: asyncio.TimerHandle | None = None

    def stop(reason: str, error: Exception | None = None) -> None:
        nonlocal deadline
        if counts.stopped is None:
            counts.stopped, counts.error = reason, error
        jobs.stop()
        if deadline is None:
            deadline = loop.call_later(grace_period, completions.cancel)

    def report() -> None:
        writer.sync_if_due()  # lines written just before a quiet spell are not left unsynced for long
        if progress is not None:
            now = loop.time()
            in_flight, paused_for = completions.in_flight, calls.paused_for()
            progress(counts.progress(now - started, now - sending_from, in_flight, paused_for))

    ticker = loop.create_task(_tick(stop_event, stop, report))
    hook_failed: list[BaseException] = []

    def ticker_done(task: asyncio.Task[None]) -> None:
        # The progress hook raised between two results: end the run with that error, as it would
        # have ended had it raised after a result.
        if not task.cancelled() and task.exception() is not None:
            hook_failed.append(task.exception())  # type: ignore[arg-type]  # checked just above
            completions.cancel()

    ticker.add_done_callback(ticker_done)
    try:
        async with completions:
            async for outcome in completions:
                batch_id: BatchId = outcome.request[0]
                error = outcome.error
                if error is None:
                    result: Any = outcome.result
                    writer.write(success_record(batch_id, result))
                    counts.succeeded += 1
                    counts.prompt_tokens += result.usage.prompt_tokens
                    counts.completion_tokens += result.usage.completion_tokens
                else:
                    reason = _job_wide(error)
                    if reason is not None:
                        stop(reason, error)  # not written: no request would get through, a rerun resumes
                        continue
                    writer.write(error_record(batch_id, error))
                    counts.failed += 1
                report()
    finally:
        ticker.cancel()
        if deadline is not None:
            deadline.cancel()
        lines.close()
        writer.close()
    if hook_failed:
        raise hook_failed[0]
    elapsed = loop.time() - started
    report()
    done = counts.succeeded + counts.failed
    return BatchSummary(
        counts.total, counts.skipped, counts.succeeded, counts.failed, counts.total - counts.skipped - done,
        elapsed, done / elapsed if elapsed > 0 else 0.0, counts.prompt_tokens, counts.completion_tokens,
        counts.stopped, counts.error, os.fspath(output),
    )  # fmt: skip


def _close_abandoned(preparing: asyncio.Future[_Plan]) -> None:
    if not preparing.cancelled() and preparing.exception() is None:  # it ended before its next check
        preparing.result().output.close()


def _job_wide(error: Exception) -> str | None:
    for cls, reason in JOB_WIDE_ERRORS.items():
        if isinstance(error, cls):
            return reason
    return None


async def _tick(
    stop_event: threading.Event | None, stop: Callable[[str], None], report: Callable[[], None]
) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(_TICK_SECONDS)
        ticks += 1
        if stop_event is not None and stop_event.is_set():
            stop("interrupted")
        if ticks % _PROGRESS_TICKS == 0:
            report()
