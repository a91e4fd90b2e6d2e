"""`nebula generate`: text on stdout, live on a terminal, JSON on request, stdin, errors as exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from nebula_async.cli._app import DEFAULT_MODEL
from nebula_async.testing import FakeNebulaServer
from tests.cli._support import NEBULA, WAIT, OnTerminal, nebula
from tests.cli.conftest import KEY
from tests.helpers import ROOT


def test_generate_prints_the_text_on_stdout_only(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """The generated text is stdout's only line; stderr stays empty; nothing is streamed on a pipe."""
    api.replies["Say hi"] = "Hi there!"
    proc = nebula("generate", "Say hi", env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Hi there!\n", "")
    (request,) = api.requests
    assert request.json == {"model": DEFAULT_MODEL, "prompt": "Say hi"}  # no stream, only what was given


def test_generate_sends_every_option(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """-m, --max-tokens, --temperature, --top-p and repeated --stop all reach the request body."""
    proc = nebula(
        "generate", "-m", "Llama3.3-70B", "--max-tokens", "5", "--temperature", "0.5", "--top-p", "0.9",
        "--stop", "END", "--stop", "\n\n", "hello", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert api.requests[0].json == {
        "model": "Llama3.3-70B", "prompt": "hello", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
        "stop": ["END", "\n\n"],
    }  # fmt: skip


def test_nebula_model_sets_the_default_model(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """NEBULA_MODEL replaces the default model; -m still wins over it."""
    assert nebula("generate", "hi", env={**env, "NEBULA_MODEL": "gpt-4"}).returncode == 0
    assert nebula("generate", "-m", "claude-2", "hi", env={**env, "NEBULA_MODEL": "gpt-4"}).returncode == 0
    assert [r.json["model"] for r in api.requests] == ["gpt-4", "claude-2"]


def test_a_dash_reads_the_prompt_from_stdin(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """`nebula generate -` sends what stdin holds as the prompt."""
    proc = nebula("generate", "-", env=env, stdin="a prompt\nof two lines\n")
    assert proc.returncode == 0, proc.stderr
    assert api.requests[0].json["prompt"] == "a prompt\nof two lines\n"


def test_json_prints_the_whole_result(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """--json prints one JSON object: text, usage, request_id and retries."""
    api.replies["Say hi"] = "Hi!"
    proc = nebula("generate", "--json", "Say hi", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["text"] == "Hi!"
    assert (
        result["usage"]["total_tokens"]
        == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
    )
    assert result["request_id"] == api.requests[0].request_id
    assert result["retries"] == 0


def test_stream_on_a_pipe_streams_when_asked(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """--stream on a pipe sends a streaming request and prints the whole text with a final newline."""
    api.replies["Say hi"] = "Hi there!"
    proc = nebula("generate", "--stream", "Say hi", env=env)
    assert (proc.returncode, proc.stdout) == (0, "Hi there!\n")
    assert api.requests[0].json["stream"] is True


def test_on_a_terminal_tokens_appear_while_the_stream_runs(
    api: FakeNebulaServer, env: dict[str, str]
) -> None:
    """On a terminal the first words are shown while the server is still sending the rest."""
    api.replies["Tell me"] = "one two three four five six seven eight nine ten"
    api.token_delay = 0.2  # ten chunks: the stream lasts two seconds after its first word
    run = OnTerminal("generate", "Tell me", env=env)
    run.read_until(b"one")
    assert run.proc.poll() is None  # still streaming
    code, output = run.finish()
    assert code == 0
    assert (
        output.decode().replace("\r\n", "\n").endswith("one two three four five six seven eight nine ten\n")
    )
    assert api.requests[0].json["stream"] is True


def test_no_stream_on_a_terminal_waits_for_the_whole_text(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """--no-stream on a terminal sends one non-streaming request."""
    run = OnTerminal("generate", "--no-stream", "hi", env=env)
    code, _ = run.finish()
    assert code == 0
    assert "stream" not in api.requests[0].json


def test_an_api_error_is_one_line_and_exit_1(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """An unknown model ends with exit 1 and one line naming the error, no traceback."""
    proc = nebula("generate", "-m", "no-such-model", "hi", env=env)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("nebula: error: model_not_found: ")
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_a_wrong_key_is_never_printed(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """A refused --api-key gives exit 1 and an error that does not show the key, even with -v."""
    wrong = "sk-wrong-SECRET-" + KEY[::-1]
    proc = nebula("-v", "--api-key", wrong, "generate", "hi", env=env)
    assert proc.returncode == 1
    assert "nebula: error: " in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert KEY not in proc.stdout + proc.stderr


def test_bad_arguments_exit_2_before_sending(api: FakeNebulaServer, env: dict[str, str]) -> None:
    """A temperature out of range, a bad number, or --json with --stream: exit 2 and nothing sent."""
    bad_value = nebula("generate", "--temperature", "3", "hi", env=env)
    assert (bad_value.returncode, bad_value.stderr) == (
        2, "nebula: error: temperature must be between 0 and 2, got 3.0\n"
    )  # fmt: skip
    assert nebula("generate", "--max-tokens", "many", "hi", env=env).returncode == 2
    both = nebula("generate", "--json", "--stream", "hi", env=env)
    assert both.returncode == 2
    assert "can't be combined with --stream" in both.stderr
    assert api.requests == []


def test_no_api_key_says_how_to_give_one() -> None:
    """Without --api-key or NEBULA_API_KEY: exit 2 and a line naming both."""
    proc = nebula("generate", "hi")
    assert proc.returncode == 2
    assert "no API key: pass --api-key KEY or set NEBULA_API_KEY" in proc.stderr


def test_an_empty_api_key_option_says_so(env: dict[str, str]) -> None:
    """--api-key "" (a script's unset variable) is exit 2 naming the option, even with NEBULA_API_KEY set."""
    # This broke: "no API key: pass api_key=... or set the NEBULA_API_KEY environment variable",
    # while NEBULA_API_KEY was set, in the SDK's words rather than the command's.
    proc = nebula("--api-key", "", "generate", "hi", env=env)
    assert proc.returncode == 2
    assert "--api-key is empty: pass the key, or leave it out to use NEBULA_API_KEY" in proc.stderr


def test_unreachable_api_is_exit_1_and_verbose_shows_the_traceback(env: dict[str, str]) -> None:
    """A refused connection is exit 1: one line; with -v the SDK's retry logs and the traceback."""
    env = {**env, "NEBULA_BASE_URL": "http://127.0.0.1:9/v1"}  # the discard port: nobody listens
    quiet = nebula("generate", "hi", env=env)
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("nebula: error: connection to the API failed")
    assert "Traceback" not in quiet.stderr
    loud = nebula("-v", "generate", "hi", env=env)
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert "WARNING nebula_async: retrying in" in loud.stderr


def test_ctrl_c_during_a_call_exits_130_without_a_traceback(
    api: FakeNebulaServer, env: dict[str, str]
) -> None:
    """SIGINT while waiting for the answer ends `nebula generate` with exit 130 and one line."""
    api.delay_next(1, seconds=20)
    proc = subprocess.Popen([*NEBULA, "generate", "hi"], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + WAIT
    while not api.requests:  # the call is in flight once the server has it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT)
    assert (proc.returncode, stderr.strip()) == (130, "nebula: interrupted")  # after click's blank line


@pytest.mark.parametrize(
    ("args", "unbuffered"),
    [
        (("models",), False),
        (("generate", "hi"), False),
        (("generate", "--json", "hi"), False),
        (("generate", "--stream", "hi"), True),
        (("--help",), True),
    ],
)
def test_a_reader_gone_away_ends_the_command_quietly_with_1(
    env: dict[str, str], args: tuple[str, ...], unbuffered: bool
) -> None:
    """With stdout's pipe closed (`| head -c 10` done), the command exits 1 and says nothing."""
    # This broke: Python flushed stdout at exit and printed "Exception ignored ... BrokenPipeError",
    # exit status 120; written mid-command (unbuffered), the same pipe gave 1, silently.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*NEBULA, *args],
            env=dict(env, PYTHONUNBUFFERED="1") if unbuffered else env,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=WAIT,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")
