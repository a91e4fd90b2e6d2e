"""Regression tests for the second review's sync-client findings: exit under pollers, SystemExit in input."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Iterator

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient
from tests.helpers import KEY
from tests.sync.test_sync_exit import PRELUDE, run_code

# --- exit while daemon threads keep calling --------------------------------------------------------

POLLERS = PRELUDE + textwrap.dedent(
    """\
    import threading, time

    client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)

    def poll():
        while True:
            client.generate_text(model="gpt-4", prompt="hi")

    for _ in range(4):
        threading.Thread(target=poll, daemon=True).start()
    while server.request_count < 20:
        time.sleep(0.005)
    print("leaving")
    """
)
RUNS = 5  # the race is between exit and a call starting: one run can miss it


def test_exit_while_daemon_threads_keep_calling_is_clean() -> None:
    """A script whose 4 daemon threads keep calling as the main thread exits ends with 0, quietly, at once."""
    outcomes = []
    for _ in range(RUNS):
        proc, elapsed = run_code(POLLERS)
        outcomes.append((proc.returncode, proc.stderr, proc.stdout, elapsed < 5.0))
    assert outcomes == [(0, "", "leaving\n", True)] * RUNS


# --- SystemExit raised by the caller's generator --------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("items_before", [0, 1], ids=["at-the-first-item", "after-an-item"])
def test_system_exit_in_the_generator_propagates_and_the_client_survives(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, concurrency: int, items_before: int
) -> None:
    """SystemExit raised by the caller's generator reaches the caller as is, and the client keeps working."""

    def requests() -> Iterator[dict[str, str]]:
        for i in range(items_before):
            yield {"model": "m", "prompt": f"p{i}"}
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        fake_client.generate_many(requests(), concurrency=concurrency)
    assert info.value.code == 3
    assert fake_client.closed is False
    assert fake_client.generate_text(model="m", prompt="after").text == "echo: after"
    assert fake_thread.requests[-1].json["prompt"] == "after"
    assert len(fake_thread.requests) <= items_before + 1  # the items read before, and "after"


@pytest.mark.parametrize("exit_exception", [SystemExit(3), KeyboardInterrupt()])
def test_exit_raised_by_an_async_generator_reaches_the_caller_and_the_client_survives(
    fake_thread: FakeNebulaServer, exit_exception: BaseException
) -> None:
    """SystemExit or Ctrl-C from an async generator given to sync generate_many reaches the caller as is."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    try:

        async def prompts() -> AsyncIterator[dict[str, str]]:
            yield {"model": "m", "prompt": "p0"}
            raise exit_exception

        with pytest.raises(type(exit_exception)):
            client.generate_many(prompts(), concurrency=1)
        assert not client.closed
        assert client.generate_text(model="m", prompt="after").text == "echo: after"
    finally:
        client.close()
