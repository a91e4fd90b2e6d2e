"""Prompt interrupts in a Jupyter kernel: have signals wake the kernel's event loop.

ipykernel turns a kernel interrupt into a cancel of the cell's task, queued from its SIGINT handler
with a ``call_soon`` that does not wake the loop (ipykernel#881): an awaited call still waiting for
its answer was cancelled only when the answer arrived. A no-op handler for SIGWINCH, registered with
the loop, gives the loop a wakeup fd, so that every signal, SIGINT included, wakes it. SIGWINCH is
ignored by default, so nothing else changes. Pure stdlib; done once per loop, at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading

__all__ = ["wake_loop_on_signals"]


def wake_loop_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    """In an ipykernel's main-thread loop, register a no-op SIGWINCH handler; elsewhere do nothing."""
    sigwinch = getattr(signal, "SIGWINCH", None)  # not on Windows, whose kernels interrupt otherwise
    if (
        sigwinch is None
        or "ipykernel" not in sys.modules
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(sigwinch) is not signal.SIG_DFL  # someone's handler (or ours): leave it
    ):
        return
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # a loop without signals
        loop.add_signal_handler(sigwinch, _ignore)


def _ignore() -> None:
    pass
