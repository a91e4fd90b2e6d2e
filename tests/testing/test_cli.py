"""`python -m nebula_async.testing`: the standalone fake server, run as a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import queue
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from typing import IO

import pytest

from nebula_async.testing import count_tokens
from tests.testing._support import BANNER, EXAMPLE_MODELS, FAKE_KEY, MODEL, PATH, WAIT, body, post


class CLI:
    """A running `python -m nebula_async.testing`, with its output read line by line in the background."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nebula_async.testing", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=_pump, args=(pipe, lines), daemon=True)
            for pipe, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()
        self.err_lines: list[str] = []

    def banner(self) -> str:
        """Wait for the first stdout line and return the base URL it announces."""
        line = self.stdout.get(timeout=WAIT)
        match = BANNER.match(line)
        assert match, line
        return match.group(1)

    def next_stderr(self) -> str:
        line = self.stderr.get(timeout=WAIT)
        self.err_lines.append(line)
        return line

    def finish(self, sig: signal.Signals | None = None) -> tuple[int, str, str]:
        """Send ``sig`` (if any), wait for the exit; return the status, the rest of stdout, all stderr."""
        if sig is not None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=WAIT)
        for reader in self._readers:
            reader.join(timeout=WAIT)
        return code, _drain(self.stdout), "".join(self.err_lines) + _drain(self.stderr)

    def kill(self) -> None:
        """Kill the process if it still runs, and close its pipes once the readers have seen their end."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        for reader in self._readers:
            reader.join(timeout=WAIT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _pump(pipe: IO[str] | None, lines: queue.Queue[str]) -> None:
    assert pipe is not None
    for line in pipe:
        lines.put(line)


def _drain(lines: queue.Queue[str]) -> str:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return "".join(out)


@contextlib.contextmanager
def _cli(*args: str) -> Iterator[CLI]:
    """Run the CLI with ``args``; kill it on the way out whatever happened."""
    cli = CLI(*args)
    try:
        yield cli
    finally:
        cli.kill()


@pytest.fixture
def cli() -> Iterator[CLI]:
    """The CLI on a free port with default options; killed after the test whatever happens."""
    with _cli("--port", "0") as running:
        yield running


def test_cli_serves_logs_and_stops_on_sigint(cli: CLI) -> None:
    """The CLI announces its URL, serves a request, logs it without the key, and exits 0 on Ctrl-C."""
    base_url = cli.banner()
    status, _, answer = post(base_url)
    assert status == 200
    assert answer["status"] == "success"
    line = cli.next_stderr()
    assert '"POST /v1/text/generate HTTP/1.1" 200' in line
    assert FAKE_KEY not in line
    code, _, err = cli.finish(signal.SIGINT)
    assert code == 0
    assert "Traceback" not in err
    assert FAKE_KEY not in err


def test_cli_exits_0_on_sigterm(cli: CLI) -> None:
    """SIGTERM stops a CLI that has served a request with exit status 0 and no traceback."""
    assert post(cli.banner())[0] == 200
    code, _, err = cli.finish(signal.SIGTERM)
    assert code == 0
    assert "Traceback" not in err


def test_cli_sigterm_right_after_the_banner_exits_0() -> None:
    """SIGTERM sent the moment the banner appears exits 0, even when the CLI is slow to go on after it."""
    # A busy machine, made deterministic: the child is held up in add_signal_handler for half a second.
    script = textwrap.dedent(
        """
        import asyncio, runpy, sys, time

        original = asyncio.SelectorEventLoop.add_signal_handler

        def slow_add_signal_handler(self, *args):
            time.sleep(0.5)
            return original(self, *args)

        asyncio.SelectorEventLoop.add_signal_handler = slow_add_signal_handler
        sys.argv = ["nebula_async.testing", "--port", "0", "--quiet"]
        runpy.run_module("nebula_async.testing", run_name="__main__")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(WAIT), "no banner"
        assert BANNER.match(proc.stdout.readline())  # one flushed write: a whole line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_quiet_prints_no_access_line() -> None:
    """--quiet serves requests without printing a line for each."""
    with _cli("--port", "0", "--quiet") as cli:
        status, _, _ = post(cli.banner())
        assert status == 200
        code, out, err = cli.finish(signal.SIGTERM)
        assert (code, out, err) == (0, "", "")


def test_cli_serves_the_reference_example_models_without_options() -> None:
    """With no --model, the models of the API reference's examples (gpt-4, ...) are served."""
    # Regression: README's quick start, model="gpt-4", got model_not_found unless run with --model gpt-4.
    with _cli("--port", "0", "--quiet") as cli:
        base_url = cli.banner()
        assert [post(base_url, body(model=model))[0] for model in EXAMPLE_MODELS] == [200, 200, 200]
        assert cli.finish(signal.SIGTERM)[0] == 0


def test_cli_api_key_restricts() -> None:
    """--api-key accepts only that key; another one gets 401 invalid_api_key."""
    with _cli("--port", "0", "--quiet", "--api-key", FAKE_KEY) as cli:
        base_url = cli.banner()
        status, _, answer = post(base_url, key="sk-someone-else")
        assert status == 401
        assert answer["error"]["code"] == "invalid_api_key"
        assert post(base_url)[0] == 200
        assert cli.finish(signal.SIGTERM)[0] == 0


def test_cli_model_names_and_context_lengths() -> None:
    """--model gpt-4:16 gives gpt-4 a 16-token context; --model llama3:8b adds "llama3:8b" as named."""
    # Regression: "llama3:8b" was read as model "llama3" with context length "8b", and refused.
    with _cli("--port", "0", "--quiet", "--model", "gpt-4:16", "--model", "llama3:8b") as cli:
        base_url = cli.banner()
        fits = " ".join(["word"] * 16)
        assert count_tokens(fits) == 16
        assert post(base_url, body(model="gpt-4", prompt=fits))[0] == 200
        status, _, answer = post(base_url, body(model="gpt-4", prompt=fits + " more"))
        assert (status, answer["error"]["code"]) == (400, "context_length_exceeded")
        many = " word" * 100  # well over 8 tokens: "8b" is not a context length
        assert post(base_url, body(model="llama3:8b", prompt=many))[0] == 200
        status, _, answer = post(base_url, body(model="llama3"))
        assert (status, answer["error"]["code"]) == (404, "model_not_found")
        assert post(base_url, body(model=MODEL))[0] == 200  # the documented models stay
        assert cli.finish(signal.SIGTERM)[0] == 0


def test_cli_stream_usage_puts_usage_in_the_final_event() -> None:
    """--stream-usage makes the final event of a stream carry the non-streamed answer's usage."""
    with _cli("--port", "0", "--quiet", "--stream-usage") as cli:
        base_url = cli.banner()
        _, _, answer = post(base_url, body(max_tokens=5))
        request = urllib.request.Request(
            base_url + PATH,
            data=json.dumps(body(max_tokens=5, stream=True)).encode(),
            headers={"Authorization": f"Bearer {FAKE_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            raw = response.read()
        assert cli.finish(signal.SIGTERM)[0] == 0
    *_, last = raw.rstrip(b"\n").split(b"\n\n")
    final = json.loads(last.removeprefix(b"data: "))
    assert final["usage"] == answer["data"]["usage"]
    assert final["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt-4:0"], "expected NAME or NAME:CONTEXT_LENGTH, got 'gpt-4:0'"),
        (["--token-delay", "-1"], "error: token_delay must be a finite number of seconds >= 0"),
    ],
)
def test_cli_bad_options_exit_2(args: list[str], message: str) -> None:
    """A bad option value exits 2 with a message naming what is wrong."""
    done = subprocess.run(
        [sys.executable, "-m", "nebula_async.testing", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_model_without_a_name_exits_2_with_the_usage_hint() -> None:
    """--model ':16' exits 2 with the same NAME or NAME:CONTEXT_LENGTH hint as other bad values."""
    done = subprocess.run(
        [sys.executable, "-m", "nebula_async.testing", "--port", "0", "--model", ":16"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2
    assert "expected NAME or NAME:CONTEXT_LENGTH, got ':16'" in done.stderr


def test_cli_taken_port_exits_1() -> None:
    """A port another socket listens on makes the CLI exit 1 with 'cannot listen' and no traceback."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "nebula_async.testing", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_tokens_per_minute_limits_each_key() -> None:
    """--tokens-per-minute answers 429 rate_limit_exceeded once a key's window holds that many tokens."""
    with _cli("--port", "0", "--quiet", "--tokens-per-minute", "5") as cli:
        base_url = cli.banner()
        assert post(base_url, body(max_tokens=5))[0] == 200  # at least 6 tokens with the prompt
        status, headers, answer = post(base_url, body(max_tokens=5))
        assert cli.finish(signal.SIGTERM)[0] == 0
    assert (status, answer["error"]["code"]) == (429, "rate_limit_exceeded")
    assert int(headers["Retry-After"]) == 60


def test_cli_faults_flag_faults_requests_at_random() -> None:
    """--faults 1 --faults-seed 1 with no stream faults possible answers every plain request with a fault."""
    with _cli("--port", "0", "--quiet", "--faults", "1", "--faults-seed", "1", "--slow-seconds", "0") as cli:
        base_url = cli.banner()
        answered: list[int | None] = []
        for _ in range(12):
            try:
                answered.append(post(base_url)[0])
            except (OSError, json.JSONDecodeError):  # a disconnect, or an HTML error page
                answered.append(None)
        # Every kind but "slow" (held 0 s, then answered) is an error or a dropped connection. Seed 1
        # draws, in order: slow, server_error, html, rate_limit, html, server_error, rate_limit,
        # disconnect, slow, slow, html, html: only requests 0, 8 and 9 are answered 200.
        assert [i for i, status in enumerate(answered) if status == 200] == [0, 8, 9], answered
        assert cli.finish(signal.SIGTERM)[0] == 0
