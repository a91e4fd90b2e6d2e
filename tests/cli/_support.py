"""What the CLI's tests share: running `nebula` as a real process, on a pipe or on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Mapping

from tests.helpers import ROOT

NEBULA = [sys.executable, "-m", "nebula_async.cli"]  # the console script's main(), without installing it
WAIT = 20.0  # seconds: generous, only reached when something is broken


def cli_env(**extra: str) -> dict[str, str]:
    """Return a clean environment (no NEBULA_* or PYTHON* of the developer's) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def nebula(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """Run `nebula ARGS...` on pipes (no terminal) and return the finished process."""
    return subprocess.run(
        [*NEBULA, *args],
        env=dict(env) if env is not None else cli_env(),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class OnTerminal:
    """`nebula ARGS...` with stdout and stderr on a pseudo-terminal, read as it writes."""

    def __init__(self, *args: str, env: Mapping[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*NEBULA, *args], env=dict(env, COLUMNS="120", TERM="xterm"), stdin=subprocess.DEVNULL,
            stdout=slave, stderr=slave, cwd=ROOT,
        )  # fmt: skip
        os.close(slave)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        """Read until ``needle`` has appeared; return all output so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{needle!r} never came; output so far: {self.output!r}")
        return self.output

    def finish(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """Read to the end and wait for the exit; return the status and all output."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        code = self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        os.close(self.master)
        return code, self.output

    def _read(self, timeout: float) -> bool:
        if timeout <= 0:
            return False
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += data
        return bool(data)
