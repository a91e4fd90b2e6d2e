"""NebulaClient under random faults: 16 threads share one client, close() mid-flight, exit without close()."""

from __future__ import annotations

import random
import re
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from nebula_async.testing import FakeNebulaServer, FaultMix, default_reply
from nebula_sync import NebulaClient, NebulaError, RetryPolicy, Timeout
from tests.helpers import run_code
from tests.sync._support import CLOSED_MID_CALL, KEY, wait_for

MODEL = "gpt-4"
THREADS = 16
CALLS_PER_THREAD = 20
# Short Retry-Afters and a "slow" fault longer than the client's read timeout (0.25 s, below).
MIX = FaultMix(rate=0.1, slow_seconds=0.5)
# asyncio's debug mode (-X dev) reports callbacks over 0.1 s: with nine threads sharing the GIL on
# a loaded machine that is noise; what this test looks for is everything else on stderr.
SLOW_CALLBACK = re.compile(r"^Executing <.*> took \d+\.\d+ seconds\n", re.MULTILINE)


def retrying_client(base_url: str) -> NebulaClient:
    """Return a client that rides out most faults fast: 3 quick retries, a 0.25 s read timeout."""
    return NebulaClient(
        KEY,
        base_url=base_url,
        max_connections=THREADS,
        timeout=Timeout(connect=5.0, read=0.25, total=10.0, stream_idle=0.25),
        retry=RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.01),
    )


@pytest.fixture
def faulty() -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer in its own thread, faulting 10% of the requests at random (seed in the repr)."""
    mix = FaultMix(rate=MIX.rate, slow_seconds=MIX.slow_seconds, seed=random.randrange(1 << 30))
    with FakeNebulaServer(faults=mix, max_recorded=0).run_in_thread() as server:
        yield server


def expected(prompt: str) -> str:
    """The fault-free text of ``prompt`` at the API's default settings."""
    return default_reply(MODEL, prompt, 0.7, 1.0)


def call(client: NebulaClient, prompt: str, *, stream: bool) -> str:
    """Make one call and return its text (a stream's chunks joined)."""
    if not stream:
        return client.generate_text(model=MODEL, prompt=prompt).text
    with client.stream_text(model=MODEL, prompt=prompt) as chunks:
        return "".join(chunk.text for chunk in chunks)


def connections_left(server: FakeNebulaServer) -> int:
    """Return the connections still open on ``server``, once it has had up to 5 s to see them close."""
    wait_for(lambda: not server.open_connections, timeout=5.0)
    return server.open_connections


def test_sixteen_threads_sharing_one_client_end_each_call_in_its_text_or_a_typed_error(
    faulty: FakeNebulaServer,
) -> None:
    """320 calls, plain and streamed, from 16 threads through 10% faults: the right text or a NebulaError.

    And no connection is left open once the client is closed.
    """
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        for i in range(CALLS_PER_THREAD):
            prompt = f"thread {number} call {i}"
            try:
                text = call(client, prompt, stream=i % 2 == 1)
            except NebulaError as exc:
                outcome = type(exc).__name__
            except BaseException as exc:  # outside the error tree: the test reports it
                outcome = f"UNTYPED {type(exc).__name__}: {exc}"
            else:
                outcome = "success"
                if text != expected(prompt):
                    with lock:
                        wrong.append(prompt)
            with lock:
                outcomes[outcome] += 1

    with retrying_client(faulty.base_url) as client:
        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not [t.name for t in threads if t.is_alive()], "a call hung"
    assert connections_left(faulty) == 0
    assert sum(outcomes.values()) == THREADS * CALLS_PER_THREAD, outcomes
    assert not [o for o in outcomes if o.startswith("UNTYPED")], (faulty.faults, outcomes)
    assert wrong == [], faulty.faults
    assert outcomes["success"] >= THREADS * CALLS_PER_THREAD * 0.8, (faulty.faults, outcomes)
    assert sum(faulty.faults_injected.values()) > 0


def test_close_while_sixteen_threads_call_through_faults_ends_each_one_promptly(
    faulty: FakeNebulaServer,
) -> None:
    """close() mid-flight: every thread's call ends in a NebulaError or "closed" RuntimeError; none hangs."""
    faulty.token_delay = 0.01  # streams of about 30 events last about 0.3 s: close() lands mid-stream
    ended: list[str] = []
    lock = threading.Lock()
    client = retrying_client(faulty.base_url)
    calls_made = Counter[int]()

    def work(number: int) -> None:
        i = 0
        while True:
            i += 1
            try:
                call(client, f"thread {number} call {i}", stream=i % 2 == 0)
            except NebulaError as exc:
                if not client.closed:
                    continue  # a fault the retries did not ride out: carry on
                outcome = f"typed {type(exc).__name__}"
            except RuntimeError as exc:
                outcome = (
                    "closed" if "client is closed" in str(exc) or CLOSED_MID_CALL in str(exc) else repr(exc)
                )
            except BaseException as exc:  # outside the error tree: the test reports it
                outcome = f"UNTYPED {type(exc).__name__}: {exc}"
            else:
                with lock:
                    calls_made[number] += 1
                continue
            with lock:
                ended.append(outcome)
            return

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(calls_made) < THREADS and time.monotonic() < deadline:  # every thread is under way
        time.sleep(0.01)
    time.sleep(0.2)  # calls in every state now: streaming, waiting out a Retry-After, held by "slow"
    started = time.monotonic()
    client.close()
    for thread in threads:
        thread.join(max(0.1, started + 10 - time.monotonic()))
    elapsed = time.monotonic() - started
    assert not [t.name for t in threads if t.is_alive()], "a thread was still calling 10 s after close()"
    assert len(ended) == THREADS
    assert all(o == "closed" or o.startswith("typed ") for o in ended), (faulty.faults, ended)
    assert elapsed < 10.0  # measured: about 0.1 s; generous for a loaded machine
    assert connections_left(faulty) == 0


EXIT_WHILE_CALLING = textwrap.dedent(
    """\
    import threading
    from nebula_async.testing import FakeNebulaServer, FaultMix
    from nebula_sync import NebulaClient, NebulaError, RetryPolicy, Timeout

    server = FakeNebulaServer(faults=FaultMix(rate=0.1, seed=SEED, slow_seconds=0.5), token_delay=0.005)
    server.start()  # never stopped: its thread ends at exit too
    client = NebulaClient(
        "key",
        base_url=server.base_url,
        timeout=Timeout(read=0.25),
        retry=RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.01),
    )
    done = threading.Semaphore(0)

    def poll(number):
        i = 0
        while True:
            i += 1
            try:
                if i % 2:
                    client.generate_text(model="gpt-4", prompt=f"{number} {i}")
                else:
                    with client.stream_text(model="gpt-4", prompt=f"{number} {i}") as stream:
                        for _ in stream:
                            pass
            except NebulaError:
                pass
            done.release()

    for number in range(8):
        threading.Thread(target=poll, args=(number,), daemon=True).start()
    for _ in range(40):  # calls ended: the threads are now mid-call, some in a fault
        done.acquire()
    print("leaving")
    """
)


def test_exit_without_close_while_threads_call_through_faults_is_clean() -> None:
    """A script whose 8 threads keep calling through faults exits 0 without close(), quietly, under -X dev."""
    code = EXIT_WHILE_CALLING.replace("SEED", str(random.randrange(1 << 30)))
    proc, elapsed = run_code(code, "-X", "dev")
    stderr = SLOW_CALLBACK.sub("", proc.stderr)
    assert (proc.returncode, proc.stdout, stderr) == (0, "leaving\n", ""), code.splitlines()[4]
    assert elapsed < 20.0  # measured: about 3 s; a hang would hit run_code's 25 s timeout first
