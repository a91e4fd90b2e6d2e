"""Closing a client: from any event loop, when nobody closed it (collection, loop shutdown, exit), pickling.

Each check counts the connections a raw server on 127.0.0.1 holds open: a connection is released
only when the server sees the client close it, not when the client merely forgets it.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import pickle
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nebula_async import AsyncNebulaClient
from tests.helpers import ROOT, expect_clean_exit, run_code, success_body
from tests.integration._support import RawConnection, RawServer, http_head, make_client, wait_until

ANSWER = json.dumps(success_body("hi")).encode()
HEAD = http_head(headers={"Content-Type": "application/json", "Content-Length": str(len(ANSWER))})


class KeepAlive:
    """Answers every request on a connection, keeping it open; counts the connections still open."""

    def __init__(self) -> None:
        self.open = 0

    async def __call__(self, connection: RawConnection) -> None:
        self.open += 1
        try:
            while await connection.read_request() is not None:
                await connection.send(HEAD + ANSWER)
        finally:
            self.open -= 1


@pytest.fixture
async def keep_alive() -> AsyncIterator[tuple[RawServer, KeepAlive]]:
    handler = KeepAlive()
    async with RawServer(handler) as server:
        yield server, handler


async def use(client: AsyncNebulaClient) -> str:
    return (await client.generate_text(model="m", prompt="p")).text


def in_thread(target: object) -> object:
    """Run ``target()`` in a new thread (whose own loops are not the test's) and return its result."""
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(target()))  # type: ignore[operator]
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return results[0]


async def test_asyncio_run_ending_closes_the_connections_of_a_client_nobody_closed(
    keep_alive: tuple[RawServer, KeepAlive],
) -> None:
    """asyncio.run() closes an unclosed client's connections before it closes its loop."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    await asyncio.to_thread(lambda: asyncio.run(use(client)))
    await wait_until(lambda: server.connections == 1 and handler.open == 0)


async def test_aclose_in_a_second_loop_after_the_first_ended(keep_alive: tuple[RawServer, KeepAlive]) -> None:
    """A client used in a finished asyncio.run() can be closed in another; then calls say it is closed."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    await asyncio.to_thread(lambda: asyncio.run(use(client)))
    await asyncio.to_thread(lambda: asyncio.run(client.aclose()))
    await wait_until(lambda: handler.open == 0)
    with pytest.raises(RuntimeError, match="closed"):
        await use(client)


async def test_aclose_from_another_loop_closes_in_the_loop_that_runs_the_client(
    keep_alive: tuple[RawServer, KeepAlive],
) -> None:
    """aclose() from another thread's loop closes the connections in the client's own, running, loop."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    await use(client)
    assert handler.open == 1
    await asyncio.to_thread(lambda: asyncio.run(client.aclose()))
    await wait_until(lambda: handler.open == 0)
    with pytest.raises(RuntimeError, match="closed"):
        await use(client)


async def test_aclose_from_another_loop_when_the_client_loop_is_idle(
    keep_alive: tuple[RawServer, KeepAlive],
) -> None:
    """A loop driven by run_until_complete() and left idle: aclose() from another loop still closes."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    idle = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(idle.run_until_complete, use(client))
        assert handler.open == 1
        await asyncio.to_thread(lambda: asyncio.run(client.aclose()))
        await wait_until(lambda: handler.open == 0)
    finally:
        idle.close()


@pytest.mark.parametrize("runner", ["run_until_complete", "asyncio.run"])
async def test_aclose_from_another_loop_while_the_client_loop_stops(
    keep_alive: tuple[RawServer, KeepAlive], runner: str
) -> None:
    """The owner loop stops, or its asyncio.run() cancels our close, just as aclose() is sent to it.

    aclose() neither waits forever nor raises CancelledError: the connections are closed anyway.
    """
    server, handler = keep_alive
    client = make_client(server.base_url)
    owner = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(owner.run_until_complete, use(client))
        started = threading.Event()

        async def last_step() -> None:
            started.set()
            time.sleep(0.2)  # noqa: ASYNC251  # blocking on purpose: the close sent meanwhile waits

        def run_owner() -> None:
            owner.run_until_complete(last_step())
            if runner == "asyncio.run":  # what asyncio.run() does as it ends
                for task in asyncio.all_tasks(owner):
                    task.cancel()
                owner.run_until_complete(owner.shutdown_asyncgens())

        thread = threading.Thread(target=run_owner)
        thread.start()
        await asyncio.to_thread(started.wait, 5)
        await asyncio.wait_for(asyncio.to_thread(lambda: asyncio.run(client.aclose())), 5)
        await asyncio.to_thread(thread.join, 5)
        await wait_until(lambda: handler.open == 0)
    finally:
        owner.close()


async def test_a_loop_used_again_after_shutdown_asyncgens_closes_its_new_session(
    keep_alive: tuple[RawServer, KeepAlive],
) -> None:
    """shutdown_asyncgens() closed the session; a later call opens another, which aclose() closes."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    loop = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(loop.run_until_complete, use(client))
        await asyncio.to_thread(loop.run_until_complete, loop.shutdown_asyncgens())
        await wait_until(lambda: handler.open == 0)
        await asyncio.to_thread(loop.run_until_complete, use(client))
        assert handler.open == 1
        await asyncio.to_thread(loop.run_until_complete, client.aclose())
        await wait_until(lambda: handler.open == 0)
    finally:
        loop.close()


async def test_a_collected_client_closes_its_connections(keep_alive: tuple[RawServer, KeepAlive]) -> None:
    """A client dropped without aclose() (a re-run notebook cell) closes its connections in its loop."""
    server, handler = keep_alive
    client = make_client(server.base_url)
    await use(client)
    assert handler.open == 1
    gone = weakref.ref(client)
    del client
    gc.collect()
    assert gone() is None
    await wait_until(lambda: handler.open == 0)


async def test_a_client_collected_in_another_thread_closes_in_its_loop(
    keep_alive: tuple[RawServer, KeepAlive],
) -> None:
    """The last reference dropped in another thread: the close still runs in the client's loop."""
    server, handler = keep_alive
    holder = [make_client(server.base_url)]
    await use(holder[0])

    def drop() -> None:
        holder.clear()
        gc.collect()

    await asyncio.to_thread(drop)
    await wait_until(lambda: handler.open == 0)


async def test_a_client_never_used_needs_no_closing() -> None:
    """aclose() of a client that never sent anything works in any loop, and twice."""
    client = AsyncNebulaClient("k", base_url="http://127.0.0.1:9/v1")
    await client.aclose()
    await asyncio.to_thread(lambda: asyncio.run(client.aclose()))


def test_pickling_a_client_says_to_create_it_in_the_worker() -> None:
    """pickle (a process pool's arguments) and copy fail with a TypeError that names the fix."""
    client = AsyncNebulaClient("k")
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match=r"AsyncNebulaClient can't be pickled.*pool's init"):
            attempt(client)


def test_the_readme_process_pool_example_runs_as_a_script(tmp_path: Path) -> None:
    """README's process pool example, saved as a file and run: each worker makes its own client."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Closing, event loops and processes", 1)[1]
    script = tmp_path / "pool_example.py"
    script.write_text(re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)[1])  # type: ignore[index]
    code = f"""\
import os, runpy
from nebula_async.testing import FakeNebulaServer

with FakeNebulaServer().run_in_thread() as server:
    os.environ["NEBULA_BASE_URL"] = server.base_url
    os.environ["NEBULA_API_KEY"] = server.api_key
    runpy.run_path({str(script)!r}, run_name="__main__")
    print(len(server.requests), "requests")
"""
    proc, _ = run_code(code)
    assert proc.returncode == 0, proc.stderr
    summaries, count = proc.stdout.splitlines()
    assert summaries.startswith("['")
    assert count == "2 requests"


# --- interpreter exit, in a fresh process, as a user runs it --------------------------------------

EXIT_PRELUDE = """\
import asyncio, gc
from nebula_async import AsyncNebulaClient
from nebula_async.testing import FakeNebulaServer

server = FakeNebulaServer(models=["gpt-4"])
server.start()

async def use(client):
    result = await client.generate_text(model="gpt-4", prompt="hi", max_tokens=5)
    stream = client.stream_text(model="gpt-4", prompt="hi", max_tokens=5)
    async for _ in stream:
        pass
    return "ok" if result.text else "empty"
"""

EXIT_SCRIPTS = {
    "made-at-import-time": """\
client = AsyncNebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
print(asyncio.run(use(client)))
""",
    "made-in-main": """\
async def main():
    client = AsyncNebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
    return await use(client)

print(asyncio.run(main()))
""",
    "collected-in-the-loop": """\
async def main():
    client = AsyncNebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
    text = await use(client)
    del client
    gc.collect()
    await asyncio.sleep(0.05)
    return text

print(asyncio.run(main()))
""",
    "two-asyncio-runs-then-aclose": """\
client = AsyncNebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
print(asyncio.run(use(client)))
asyncio.run(client.aclose())
""",
}


@pytest.mark.parametrize("dev_mode", [False, True], ids=["plain", "dev-mode"])
@pytest.mark.parametrize("name", list(EXIT_SCRIPTS))
def test_an_unclosed_client_exits_without_noise(name: str, dev_mode: bool) -> None:
    """No "Unclosed client session", no ResourceWarning (-X dev shows them), exit code 0."""
    expect_clean_exit(EXIT_PRELUDE + EXIT_SCRIPTS[name], "ok\n", *(["-X", "dev"] if dev_mode else []))


ONE_CALL = """\
async def one_call(client):
    return (await client.generate_text(model="gpt-4", prompt="hi")).text != ""

loop = asyncio.new_event_loop()
"""

# A plain call only: a stream's tail may still be draining in a task, which loop.close() would destroy.
HAND_DRIVEN = {
    "closed": "client = AsyncNebulaClient(api_key='k', base_url=server.base_url)\n"
    "print(loop.run_until_complete(one_call(client)))\nloop.close()\n",
    "left-open": "client = AsyncNebulaClient(api_key='k', base_url=server.base_url)\n"
    "print(loop.run_until_complete(one_call(client)))\n",
    # Collected as its coroutine ends, while the loop runs its last steps: the close runs at exit.
    "collected-in-the-last-step": "print(loop.run_until_complete("
    "one_call(AsyncNebulaClient(api_key='k', base_url=server.base_url))))\n",
}


@pytest.mark.parametrize("name", list(HAND_DRIVEN))
def test_a_loop_driven_by_hand_leaves_no_unclosed_session_message(name: str) -> None:
    """A loop closed without shutdown_asyncgens(), or left open: no "Unclosed" message from aiohttp.

    Those messages print even without warning flags. A loop left open is run once more at exit to
    close the connections; a closed one can close nothing, and its sockets go with the process.
    """
    proc, _ = run_code(EXIT_PRELUDE + ONE_CALL + HAND_DRIVEN[name])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True\n", "")
