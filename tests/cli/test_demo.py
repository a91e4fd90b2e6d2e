"""`nebula demo`: offline, every part shown, exit 0, well under 30 s, on a pipe and on a terminal."""

from __future__ import annotations

import time

import pytest

from tests.cli._support import OnTerminal, cli_env, nebula

REPLY = 'Here\'s a simple Hello World program in Python:\n\nprint("Hello, World!")'  # the reference's text


@pytest.mark.timeout(60)  # the demo takes about 8 s; a loaded CI machine may double it
def test_demo_on_a_pipe_shows_every_part_and_exits_0() -> None:
    """Without a terminal: the generation, the stream, the retried 429 and the batch summary; exit 0."""
    started = time.monotonic()
    proc = nebula("demo", env=cli_env(), timeout=50)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("nebula demo: a fake API at http://127.0.0.1:")
    assert f'1. generate  nebula generate "Write a hello world program in Python"\n{REPLY}\n' in out
    assert "2. a stream, arriving live" in out
    assert "finish_reason: stop" in out
    assert "log: WARNING rate limited by the API (rate_limit_exceeded" in out
    assert "succeeded after 1 retry: " in out
    assert "4. a batch of 300 prompts" in out
    assert '   first line of results.jsonl: {"id":"q' in out
    assert "the API answered 429 to " in out
    assert "batch: " in proc.stderr
    assert "succeeded 300, failed 0, skipped as already done 0, not run 0;" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30  # the promise; about 8 s when the machine is idle


@pytest.mark.timeout(60)
def test_demo_on_a_terminal_streams_live_and_shows_the_rate_limit_pause() -> None:
    """On a terminal the story arrives while the demo runs, and the bar shows the 429 pause as a countdown."""
    run = OnTerminal("demo", env=cli_env())
    run.read_until(b"Once upon a time")
    assert b"finish_reason" not in run.output  # the stream is still arriving
    code, output = run.finish(timeout=50)
    text = output.decode()
    assert code == 0, text
    assert "rate-limited, resuming in 1 s" in text
    assert "300/300" in text
    assert "succeeded 300, failed 0" in text
