"""Interpreter exit and fork with a client never closed: run in a subprocess, as a user would."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import (
    NebulaClient,
)
from tests.helpers import expect_clean_exit, run_code
from tests.sync._support import (
    PRELUDE,
    in_child,
)

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no os.fork")


SCRIPTS = {
    "call": """\
client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
response = client.generate_text(model="gpt-4", prompt="hi", max_tokens=100)
print(response.text)
""",
    "half-read-stream": """\
server.behaviour = stalled_stream(events=3)
client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
stream = client.stream_text(model="gpt-4", prompt="hi")
print(next(iter(stream)).text)
""",
    "client-in-a-worker-thread": """\
import threading

def work():
    client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
    print(client.generate_text(model="gpt-4", prompt="hi").text)

thread = threading.Thread(target=work)
thread.start()
thread.join()
""",
    "inside-asyncio-run": """\
import asyncio

async def cell():
    client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
    print(client.generate_text(model="gpt-4", prompt="hi").text)

asyncio.run(cell())
""",
}

EXPECTED_STDOUT = {
    "call": "echo: hi\n",
    "half-read-stream": "w0 \n",
    "client-in-a-worker-thread": "echo: hi\n",
    "inside-asyncio-run": "echo: hi\n",
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_exits_cleanly_without_close(name: str) -> None:
    """A script leaving its client open exits with 0 within seconds, printing the text, nothing on stderr."""
    expect_clean_exit(PRELUDE + textwrap.dedent(SCRIPTS[name]), EXPECTED_STDOUT[name])


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_exits_cleanly_without_close_in_dev_mode(name: str) -> None:
    """Under ``python -X dev`` an unclosed client exits at once with an empty stderr: no ResourceWarning,
    no "Unclosed client session", no destroyed task, even for the half-read stream."""
    expect_clean_exit(PRELUDE + textwrap.dedent(SCRIPTS[name]), EXPECTED_STDOUT[name], "-X", "dev")


def test_exit_is_not_held_up_by_a_call_waiting_to_retry() -> None:
    """A script whose daemon thread sleeps out a Retry-After: 4 when the main thread ends exits at once."""
    code = PRELUDE + textwrap.dedent(
        """\
        import threading, time
        from aiohttp import web
        from tests.sync._support import error_body

        async def always_429(server, request, body):
            return web.json_response(
                error_body("rate_limit_exceeded"), status=429, headers={"Retry-After": "4"}
            )

        server.behaviour = always_429
        client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)

        def work():
            try:
                client.generate_text(model="gpt-4", prompt="hi")
            except Exception:
                pass

        threading.Thread(target=work, daemon=True).start()
        while server.request_count == 0:
            time.sleep(0.01)
        time.sleep(0.1)
        print("leaving")
        """
    )
    expect_clean_exit(code, "leaving\n", within=2.0)


def test_exit_is_not_held_up_by_a_blocked_input_generator() -> None:
    """A script whose daemon thread's generate_many waits on its generator exits at once and quietly."""
    code = PRELUDE + textwrap.dedent(
        """        import threading, time

        client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
        reading = threading.Event()

        def prompts():
            reading.set()
            time.sleep(4)  # a slow source, still producing when the script ends
            yield {"model": "gpt-4", "prompt": "hi"}

        threading.Thread(target=lambda: client.generate_many(prompts()), daemon=True).start()
        reading.wait()
        print("leaving")
        """
    )
    expect_clean_exit(code, "leaving\n", within=2.0)


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


BAD_BASE_URLS = ["http://127.0.0.1:99999/v1", "http://[::1/v1"]


def test_an_invalid_base_url_leaves_nothing_for_exit() -> None:
    """A script that catches the bad-base_url ValueError exits 0 with nothing on stderr, even in dev mode."""
    code = textwrap.dedent(
        f"""\
        import threading
        from nebula_sync import NebulaClient

        before = threading.active_count()
        for url in {BAD_BASE_URLS!r}:
            try:
                NebulaClient(api_key="YOUR_API_KEY", base_url=url)
            except ValueError as exc:
                print("ValueError", "base_url" in str(exc))
        print("threads", threading.active_count() - before)
        """
    )
    expect_clean_exit(code, "ValueError True\nValueError True\nthreads 0\n", "-X", "dev")


def _child_checks(client: NebulaClient) -> list[str]:
    """Run in the forked child: every way into the client must fail fast, naming the other process."""
    problems: list[str] = []
    calls: dict[str, Callable[[], object]] = {
        "generate_text": lambda: client.generate_text(model="m", prompt="child"),
        "generate_many": lambda: client.generate_many([{"model": "m", "prompt": "child"}]),
        "stream": lambda: next(iter(client.stream_text(model="m", prompt="child"))),
    }
    for name, call in calls.items():
        started = time.monotonic()
        try:
            call()
        except RuntimeError as exc:
            if "another process" not in str(exc):
                problems.append(f"{name} raised RuntimeError({str(exc)!r})")
        except BaseException as exc:  # anything else is the finding
            problems.append(f"{name} raised {exc!r}")
        else:
            problems.append(f"{name} returned")
        if time.monotonic() - started >= 2.0:
            problems.append(f"{name} took {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    client.close()  # the parent's resources: nothing to do here, and nothing to wait for
    if time.monotonic() - started >= 2.0:
        problems.append(f"close() took {time.monotonic() - started:.1f} s")
    if not client.closed:
        problems.append("client.closed is False")
    return problems


@needs_fork
def test_a_client_used_after_fork_fails_fast_in_the_child(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer
) -> None:
    """In a forked child each call raises RuntimeError naming another process at once; the parent's works."""
    assert fake_client.generate_text(model="m", prompt="before").text == "echo: before"
    exit_code, report = in_child(lambda: _child_checks(fake_client))
    assert exit_code is not None, f"the child hung and was killed; it had reported {report!r}"
    assert exit_code == 0, report
    started = time.monotonic()
    assert fake_client.generate_text(model="m", prompt="after").text == "echo: after"
    assert time.monotonic() - started < 1.0
    assert [r.json["prompt"] for r in fake_thread.requests] == ["before", "after"]  # nothing from the child


FORK_EXIT_SCRIPT = """\
import os, signal, sys, time, warnings

# Python >= 3.12 warns about forking a process with threads; the script does so on purpose.
warnings.filterwarnings("ignore", "This process", DeprecationWarning)
client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
print(client.generate_text(model="gpt-4", prompt="before").text, flush=True)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: atexit hooks, then interpreter shutdown
started = time.monotonic()
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        took = time.monotonic() - started
        when = "in time" if took < 2 else f"after {took:.1f} s"
        print("child exit code", os.waitstatus_to_exitcode(status), when)
        break
    if time.monotonic() - started > 5:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("child hung at exit and was killed")
        break
    time.sleep(0.01)
print(client.generate_text(model="gpt-4", prompt="after").text)
"""


@needs_fork
@pytest.mark.parametrize("python_options", [(), ("-X", "dev")], ids=["plain", "dev-mode"])
def test_a_forked_child_exits_promptly_and_quietly(python_options: tuple[str, ...]) -> None:
    """A child forked from a script with a client ends with sys.exit(0) at once; the parent's still works."""
    stdout = "echo: before\nchild exit code 0 in time\necho: after\n"
    expect_clean_exit(PRELUDE + FORK_EXIT_SCRIPT, stdout, *python_options, within=8.0)
