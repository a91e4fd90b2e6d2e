"""A script that never calls close() exits at once and cleanly: run in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each script starts its own server in a daemon thread, then uses the client the way the API
# reference does: no close(), no with. The server is left running, so the client still holds open
# connections when the interpreter exits.
PRELUDE = """\
from tests.sync._server import ThreadedServer, stalled_stream
from nebula_sync import NebulaClient

server = ThreadedServer().start()
"""

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


def run_code(code: str, *python_options: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter that imports this checkout; return the process and its run time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *python_options, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
    )
    return proc, time.monotonic() - started


def expect_clean_exit(code: str, stdout: str, *python_options: str, within: float = 5.0) -> None:
    """Run ``code``; it must print exactly ``stdout``, nothing on stderr, and exit 0 within ``within`` s."""
    proc, elapsed = run_code(code, *python_options)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, stdout, ""), proc.stderr
    assert elapsed < within, f"the interpreter took {elapsed:.1f} s to exit"


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
        from tests.helpers import error_body

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
