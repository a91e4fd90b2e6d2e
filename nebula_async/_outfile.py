"""The batch output file: what a previous run left in it, the cut or rewrite before a rerun, and the writer.

Every record is one ``write()`` of a whole line on a file opened for appending without a buffer,
so a kill leaves at most the last line torn: a rerun cuts anything after the last newline.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import attrs

from ._batchfile import MAX_PROBLEMS, BatchInputError
from ._doneset import IdSet
from ._records import BatchId, parse_record

__all__ = ["OutputScan", "RecordWriter", "prepare_output", "scan_output"]


@attrs.frozen
class OutputScan:
    """What the output holds: the digests of the ids done (not counting failures with retry_failed)."""

    done: IdSet
    failed: int  # failure lines (with retry_failed: to be run again)
    torn_at: int | None  # where the torn last line starts, if there is one


def scan_output(
    path: str | os.PathLike[str], digest: Callable[[BatchId], int], *, retry_failed: bool
) -> OutputScan:
    """Read a previous run's output (if any); BatchInputError if a complete line is not a record.

    Nothing is changed here: prepare_output() cuts or rewrites, once the input is known to be good.
    """
    done = IdSet()
    failed = 0
    torn_at = None
    problems: list[tuple[int, str]] = []
    count = 0
    offset = 0
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is a first run
    except FileNotFoundError:
        done.freeze()
        return OutputScan(done, 0, None)
    with file:
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):  # killed mid-write: the rerun cuts it
                torn_at = offset
                break
            offset += len(raw)
            try:
                batch_id, is_failure = parse_record(raw)
            except ValueError as exc:
                count += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append((number, f"not a record of run_batch: {exc}"))
                continue
            if is_failure:
                failed += 1
                if retry_failed:
                    continue
            done.add(digest(batch_id))
    if count:
        raise BatchInputError(os.fspath(path), problems, count)
    done.freeze()
    return OutputScan(done, failed, torn_at)


def prepare_output(path: str | os.PathLike[str], scan: OutputScan, *, retry_failed: bool) -> None:
    """Cut a torn last line; with ``retry_failed``, rewrite the file without its failure lines.

    The rewrite goes through a temporary file in the same directory, fsync'ed, renamed over the
    output (atomic), then the directory is fsync'ed: a crash leaves the old file or the new one.
    """
    if retry_failed and scan.failed:
        import tempfile  # only for a rewrite: not at import

        directory = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".nebula-batch-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as old:
                for raw in old:
                    if not raw.endswith(b"\n"):
                        break
                    if not parse_record(raw)[1]:
                        out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)
    elif scan.torn_at is not None:
        with open(path, "r+b") as file:
            file.truncate(scan.torn_at)
            os.fsync(file.fileno())


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows can't open a directory; its rename is durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordWriter:
    """Append whole lines to the output, one write() each; with ``fsync``, fsync at most once a second."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._fsync = fsync
        self._synced_at = time.monotonic()
        self._dirty = False

    def write(self, line: bytes) -> None:
        """Write ``line`` (with its newline) at the end of the file."""
        written = self._file.write(line)
        if written is not None and written < len(line):  # pragma: no cover - a full disk, say
            view = memoryview(line)[written:]
            while view:
                written = self._file.write(view) or 0
                view = view[written:]
        if self._fsync:
            self._dirty = True
            self.sync_if_due()

    def sync_if_due(self) -> None:
        """With ``fsync``: fsync if a second has passed since the last one (and something was written)."""
        if self._dirty and time.monotonic() - self._synced_at >= 1.0:
            self.sync()

    def sync(self) -> None:
        """fsync the file if anything was written since the last fsync."""
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """fsync (with ``fsync``) and close; idempotent."""
        if self._file.closed:
            return
        try:
            if self._fsync:
                self.sync()
        finally:
            self._file.close()
