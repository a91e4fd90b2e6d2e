"""The batch output file: what a previous run left in it, the cut or rewrite before a rerun, and the writer.

Every record is one ``write()`` of a whole line on a file opened for appending without a buffer,
so a kill leaves at most the last line torn: a rerun cuts anything after the last newline.

A run holds an exclusive lock on the output (``flock``, released when the process dies, even by
``kill -9``) from before it reads it until it ends: a second run on the same output, started by
mistake, fails at once instead of sending every id again and writing each one twice. (Windows has
no such advisory lock: there nothing stops two runs.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

import attrs

from ._batchfile import CHECK_EVERY, MAX_PROBLEMS, BatchInputError
from ._doneset import IdSet
from ._records import BatchId, parse_record

__all__ = ["OutputScan", "RecordWriter", "open_output", "prepare_output", "scan_output"]


@attrs.frozen
class OutputScan:
    """What the output holds: the digests of the ids done (not counting failures with retry_failed)."""

    done: IdSet
    failed: int  # failure lines (with retry_failed: to be run again)
    torn_at: int | None  # where the torn last line starts, if there is one


def scan_output(
    path: str | os.PathLike[str],
    digest: Callable[[BatchId], int],
    *,
    retry_failed: bool,
    check: Callable[[], None] | None = None,
) -> OutputScan:
    """Read a previous run's output (if any); BatchInputError if a complete line is not a record.

    ``check`` is called every CHECK_EVERY lines (it may raise to end the scan).
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
            if check is not None and number % CHECK_EVERY == 0:
                check()
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


if sys.platform == "win32":  # pragma: no cover - no flock there

    def _lock(file: BinaryIO, path: str | os.PathLike[str]) -> None:
        pass

else:
    import fcntl

    def _lock(file: BinaryIO, path: str | os.PathLike[str]) -> None:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockingIOError(
                errno.EWOULDBLOCK,
                "another run_batch is writing to this output (it holds the file's lock); wait for it to end",
                os.fspath(path),
            ) from None


def open_output(path: str | os.PathLike[str]) -> BinaryIO:
    """Open the output for appending (creating it) and lock it; BlockingIOError if another run holds it."""
    while True:
        file = open(path, "ab", buffering=0)  # noqa: SIM115 - returned, or closed below
        try:
            _lock(file, path)
            opened = os.fstat(file.fileno())
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            file.close()
            raise
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return file
        # Another run's retry_failed rewrite renamed a new file over this one between our open and
        # our lock: the lock we hold is on a file that is no longer the output. Open the new one.
        file.close()


def prepare_output(
    file: BinaryIO,
    path: str | os.PathLike[str],
    scan: OutputScan,
    *,
    retry_failed: bool,
    rerun: Callable[[BatchId], bool] = lambda batch_id: True,
) -> BinaryIO:
    """Cut a torn last line; with ``retry_failed``, rewrite the file without the failure lines to rerun.

    ``rerun(id)`` says whether a failure's id will be run again (it is in the input): the others
    stay, or an output left by a run of another input would lose them.

    ``file`` is the locked output from open_output(); return the locked file to append to (after
    a rewrite, the new one: ``file`` is then closed). The rewrite goes through a temporary file in
    the same directory, fsync'ed and locked, renamed over the output (atomic), then the directory
    is fsync'ed: a crash leaves the old file or the new one, and no other run slips in between.
    """
    path = os.path.realpath(path)  # through a symlink: the rewrite replaces its target, not the link
    directory = os.path.dirname(path)
    prefix = f".{os.path.basename(path)}.nebula-batch-"
    _remove_stale_copies(directory, prefix)
    if retry_failed and scan.failed:
        import tempfile  # only for a rewrite: not at import

        fd, temporary = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
        new: BinaryIO | None = None
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as old:
                for raw in old:
                    if not raw.endswith(b"\n"):
                        break
                    batch_id, is_failure = parse_record(raw)
                    if not (is_failure and rerun(batch_id)):
                        out.write(raw)
                out.flush()
                # mkstemp's file is 0600: the output keeps its own permissions (a shared 0644 one too)
                os.chmod(temporary, os.fstat(old.fileno()).st_mode & 0o7777)
                os.fsync(out.fileno())
            new = open(temporary, "ab", buffering=0)  # noqa: SIM115 - returned, or closed below
            _lock(new, temporary)  # before the rename: the new output is never unlocked
            os.replace(temporary, path)
        except BaseException:
            if new is not None:
                new.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        file.close()
        _fsync_directory(directory)
        return new
    if scan.torn_at is not None:
        file.truncate(scan.torn_at)
        os.fsync(file.fileno())
    return file


def _remove_stale_copies(directory: str, prefix: str) -> None:
    # A run killed during its rewrite leaves its temporary copy (as large as the output). Named
    # after the output, one can only be stale here: we hold the output's lock, so no other run on
    # it is rewriting (runs on other outputs in the directory use other names).
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


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
    """Append whole lines to the output, one write() each; with ``fsync``, fsync at most once a second.

    ``file`` is the locked output (open_output(), prepare_output()); close() closes it, releasing the lock.
    """

    def __init__(self, file: BinaryIO, *, fsync: bool) -> None:
        self._file = file
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
