"""Regression tests for the review's sync-client findings: fork, bad base_url, closing, batch input, races."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, RetryPolicy
from tests.helpers import KEY, error_body
from tests.sync._server import ThreadedServer, call_in_thread, echo, stalled_stream, wait_for
from tests.sync.conftest import PORTAL_THREAD, portal_threads
from tests.sync.test_sync_exit import PRELUDE, expect_clean_exit

CLOSED_MID_CALL = "closed while the call was running"

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no os.fork")


# --- fork ----------------------------------------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        # Python >= 3.12 warns about forking a process with threads; the test does so on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _reap(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` for child ``pid``; return its exit code, or kill it and return None."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


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
    read_end, write_end = os.pipe()
    pid = _fork()
    if pid == 0:  # the child: never return into pytest, report through the pipe and the exit code
        code = 70
        try:
            os.close(read_end)
            problems = _child_checks(fake_client)
            os.write(write_end, "; ".join(problems).encode())
            code = 1 if problems else 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        exit_code = _reap(pid, timeout=5)
        report = os.read(read_end, 65536).decode()
    finally:
        os.close(read_end)
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


# --- an invalid base_url -------------------------------------------------------------------------

BAD_BASE_URLS = ["http://127.0.0.1:99999/v1", "http://[::1/v1"]


@pytest.mark.parametrize("base_url", BAD_BASE_URLS, ids=["port-out-of-range", "broken-ipv6"])
def test_an_invalid_base_url_fails_at_construction(base_url: str) -> None:
    """A base_url that does not parse raises ValueError naming base_url, and no thread is started."""
    before = threading.active_count()
    with pytest.raises(ValueError, match="base_url"):
        NebulaClient(KEY, base_url=base_url)
    with pytest.raises(ValueError, match="base_url"), NebulaClient(KEY, base_url=base_url):
        pass  # pragma: no cover - never entered
    assert threading.active_count() == before
    assert portal_threads() == []


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


# --- closing a stream after its client -----------------------------------------------------------


def test_closing_a_finished_stream_after_the_client_is_a_no_op(threaded_server: ThreadedServer) -> None:
    """A stream read to its end can still be closed, and left by ``with``, after client.close()."""
    client = NebulaClient(KEY, base_url=threaded_server.base_url)
    stream = client.stream_text(model="m", prompt="p")
    assert [chunk.text for chunk in stream] == ["echo", ": ", "p"]
    with client.stream_text(model="m", prompt="q") as in_with:
        assert in_with.text == ""
        assert [chunk.text for chunk in in_with] == ["echo", ": ", "q"]
        client.close()
    stream.close()
    stream.close()
    assert stream.text == "echo: p"
    assert stream.finish_reason == "stop"
    assert wait_for(lambda: threaded_server.open_connections == 0)


def test_client_close_closes_a_half_read_stream(threaded_server: ThreadedServer) -> None:
    """client.close() drops a half-read stream's connection; closing the stream afterwards is a no-op."""
    threaded_server.behaviour = stalled_stream(events=3)
    client = NebulaClient(KEY, base_url=threaded_server.base_url, timeout=5)
    stream = client.stream_text(model="m", prompt="p")
    assert next(stream).text == "w0 "
    assert threaded_server.open_connections == 1
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    # The server sees the connection go away while its handler still waits to finish the stream.
    assert wait_for(lambda: threaded_server.open_connections == 0)
    assert wait_for(lambda: threaded_server.cancelled == 1)
    stream.close()
    stream.close()


def test_closing_a_half_read_stream_after_the_client_is_quiet_at_exit() -> None:
    """In dev mode, stream.close() after client.close() on a half-read stream prints nothing and exits 0."""
    code = PRELUDE + textwrap.dedent(
        """\
        server.behaviour = stalled_stream(events=3)
        client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
        stream = client.stream_text(model="gpt-4", prompt="hi")
        print(next(stream).text)
        client.close()
        stream.close()
        del stream
        import gc
        gc.collect()
        print("closed")
        """
    )
    expect_clean_exit(code, "w0 \nclosed\n", "-X", "dev")


# --- generate_many reads the caller's iterable in the caller's thread ------------------------------


def test_generate_many_reads_the_iterable_in_the_calling_thread(fake_client: NebulaClient) -> None:
    """The caller's generator runs in the caller's own thread, never in the client's event-loop thread."""
    loop_thread = fake_client._portal.call(threading.current_thread)
    seen: list[threading.Thread] = []

    def prompts() -> Iterator[dict[str, str]]:
        for i in range(5):
            seen.append(threading.current_thread())
            yield {"model": "m", "prompt": f"p{i}"}
        seen.append(threading.current_thread())

    results = fake_client.generate_many(prompts(), concurrency=2)
    assert [r.text for r in results] == [f"echo: p{i}" for i in range(5)]
    assert len(seen) == 6
    assert loop_thread.name == PORTAL_THREAD
    assert seen == [threading.current_thread()] * 6  # thread-bound inputs (a sqlite3 cursor) work


def test_base_exception_in_the_generator_reaches_the_caller_and_the_client_survives(
    fake_client: NebulaClient,
) -> None:
    """KeyboardInterrupt raised by the caller's generator propagates as is, and the client keeps working."""

    def interrupted() -> Iterator[dict[str, str]]:
        yield {"model": "m", "prompt": "p0"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fake_client.generate_many(interrupted(), concurrency=1)
    assert fake_client.generate_text(model="m", prompt="after").text == "echo: after"


def test_an_error_in_the_generator_fails_the_call_with_that_error(fake_client: NebulaClient) -> None:
    """A ValueError raised by the caller's generator is what generate_many raises."""

    def broken() -> Iterator[dict[str, str]]:
        yield {"model": "m", "prompt": "p0"}
        raise ValueError("bad row 2")

    with pytest.raises(ValueError, match="bad row 2"):
        fake_client.generate_many(broken(), concurrency=1)


def test_a_slow_generator_does_not_stall_other_threads(fake_client: NebulaClient) -> None:
    """While generate_many waits on a slow generator, a generate_text from another thread takes < 0.3 s."""
    started = threading.Event()
    exhausted = threading.Event()

    def slow_prompts() -> Iterator[dict[str, str]]:
        started.set()
        for i in range(3):
            time.sleep(0.5)  # a slow source: a database cursor, a queue, a network file
            yield {"model": "m", "prompt": f"p{i}"}
        exhausted.set()

    worker, outcome = call_in_thread(lambda: fake_client.generate_many(slow_prompts(), concurrency=2))
    try:
        assert started.wait(2)
        for i in range(3):
            begun = time.monotonic()
            assert fake_client.generate_text(model="m", prompt=f"other{i}").text == f"echo: other{i}"
            took = time.monotonic() - begun
            assert took < 0.3, f"an unrelated call waited {took:.2f} s for the batch's generator"
            time.sleep(0.1)
        assert not exhausted.is_set()  # the calls above really overlapped the slow generator
    finally:
        worker.join(10)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert [r.text for r in outcome["result"]] == ["echo: p0", "echo: p1", "echo: p2"]


def test_a_generator_that_calls_the_client_works(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer
) -> None:
    """A generate_many input generator may itself call client.generate_text for each item."""

    def seeded() -> Iterator[dict[str, str]]:
        for i in range(3):
            yield {"model": "m", "prompt": fake_client.generate_text(model="m", prompt=f"seed{i}").text}

    worker, outcome = call_in_thread(lambda: fake_client.generate_many(seeded(), concurrency=2))
    worker.join(10)
    assert not worker.is_alive(), "generate_many hung on a generator that calls the client"
    assert "error" not in outcome, outcome.get("error")
    assert [r.text for r in outcome["result"]] == [f"echo: echo: seed{i}" for i in range(3)]
    assert len(fake_thread.requests) == 6


def test_each_batch_request_is_sent_as_soon_as_its_item_is_read(fake_thread: FakeNebulaServer) -> None:
    """With a slow generator, generate_many sends each request when its item is read, not a batch later."""
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        yielded_at: list[
            float
        ] = []  # when the generator yielded each item (time.time(), as the fake records)

        def slow_prompts() -> Iterator[dict[str, str]]:
            for i in range(3):
                time.sleep(0.2)
                yielded_at.append(time.time())
                yield {"model": "m", "prompt": f"p{i}"}

        results = client.generate_many(slow_prompts())  # the default concurrency, 16, exceeds the input
    assert [r.text for r in results] == ["echo: p0", "echo: p1", "echo: p2"]
    # How many items the generator had yielded when each request arrived: the first, one.
    sent = [sum(at <= request.time for at in yielded_at) for request in fake_thread.requests]
    assert sent[0] == 1, f"the first request waited until {sent[0]} items were read"


def test_close_does_not_wait_for_a_blocked_input_generator(fake_thread: FakeNebulaServer) -> None:
    """close() returns in < 1 s while generate_many's thread waits in its generator; the call then fails."""
    client = NebulaClient(KEY, base_url=fake_thread.base_url)
    gate = threading.Event()
    waiting = threading.Event()

    def queue_fed() -> Iterator[dict[str, str]]:
        waiting.set()
        gate.wait(10)  # say, queue.get() on a queue nobody feeds any more
        yield {"model": "m", "prompt": "late"}

    def close() -> None:
        client.close()
        outcome["closed_in"] = time.monotonic() - started

    worker, outcome = call_in_thread(lambda: client.generate_many(queue_fed(), concurrency=1), daemon=True)
    assert waiting.wait(2)
    time.sleep(0.05)
    started = time.monotonic()
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    try:
        closer.join(1.0)
        assert not closer.is_alive(), "close() is waiting for the caller's generator to yield"
        # The generator runs in the caller's own thread, so the call can only end once it yields.
        gate.set()
        worker.join(2.0)
        assert isinstance(outcome.get("error"), RuntimeError), outcome
        assert CLOSED_MID_CALL in str(outcome["error"])
    finally:
        gate.set()  # let the generator go, so a failing run still ends its threads
        closer.join(5)
        worker.join(5)
    assert fake_thread.requests == []


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


# --- close() while other threads are mid-call ----------------------------------------------------


async def _by_prompt(
    server: ThreadedServer, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Answer "retry" with 429, Retry-After: 5; "slow" once released; a stream with one event, then stall."""
    if body.get("stream"):
        return await stalled_stream(events=1)(server, request, body)
    if body.get("prompt") == "retry":
        return web.json_response(error_body("rate_limit_exceeded"), status=429, headers={"Retry-After": "5"})
    if body.get("prompt") == "slow":
        await server.wait_released()
    return await echo(server, request, body)


def test_close_ends_every_running_call_promptly(threaded_server: ThreadedServer) -> None:
    """close() returns in < 1 s while 5 threads are mid-call, and each call raises "closed while running"."""
    threaded_server.behaviour = _by_prompt
    client = NebulaClient(KEY, base_url=threaded_server.base_url)
    chunks: list[str] = []

    def read_stream() -> None:
        with client.stream_text(model="m", prompt="s") as stream:
            for chunk in stream:
                chunks.append(chunk.text)

    calls: dict[str, Callable[[], object]] = {
        "retry-1": lambda: client.generate_text(model="m", prompt="retry"),
        "retry-2": lambda: client.generate_text(model="m", prompt="retry"),
        "slow": lambda: client.generate_text(model="m", prompt="slow"),
        "stream": read_stream,
        "batch": lambda: client.generate_many(
            [{"model": "m", "prompt": "retry"}, {"model": "m", "prompt": "slow"}]
        ),
    }
    outcomes: dict[str, tuple[object, float]] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            result: object = call()
        except BaseException as exc:  # whatever it is, the test inspects it
            result = exc
        outcomes[name] = (result, time.monotonic())

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: threaded_server.request_count == 6 and chunks == ["w0 "])
    time.sleep(0.1)  # the 429s are now being slept out
    started = time.monotonic()
    client.close()
    closed_in = time.monotonic() - started
    for thread in threads:
        thread.join(max(0.1, started + 3 - time.monotonic()))
    assert closed_in < 1.0, f"close() took {closed_in:.1f} s"
    assert not [t.name for t in threads if t.is_alive()]
    for name, (result, ended) in outcomes.items():
        assert isinstance(result, RuntimeError), (name, result)
        # Every call still running, a stream's wait for its next chunk too, is ended before the pool closes.
        assert CLOSED_MID_CALL in str(result), (name, result)
        assert ended - started < 1.0, f"{name} ended {ended - started:.1f} s after close()"
    assert sorted(outcomes) == sorted(calls)
    time.sleep(0.1)
    assert threaded_server.request_count == 6  # no retry was sent after close()


# --- racing close() ------------------------------------------------------------------------------


def _race_close(base_url: str) -> None:
    """Start 8 threads calling in a loop, close the client once each has an answer, check how all ended."""
    client = NebulaClient(KEY, base_url=base_url, retry=RetryPolicy(initial_delay=0.001))
    results: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException | None] = [None] * 8

    def hammer(index: int) -> None:
        while True:
            try:
                results[index].append(client.generate_text(model="m", prompt=str(index)).text)
            except BaseException as exc:  # whatever it is, the test inspects it
                errors[index] = exc
                return

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: all(results))
    client.close()
    deadline = time.monotonic() + 5
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "a call hung across close()"
    for index, error in enumerate(errors):
        assert isinstance(error, RuntimeError), error
        assert "closed" in str(error), error
        assert set(results[index]) == {f"echo: {index}"}
    assert portal_threads() == []


def test_threads_racing_close_all_end(fake_thread: FakeNebulaServer) -> None:
    """8 threads calling in a loop while close() runs all end with results and a RuntimeError, 10 rounds."""
    for _ in range(10):
        _race_close(fake_thread.base_url)
