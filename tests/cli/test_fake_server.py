"""`nebula fake-server`: `python -m nebula_async.testing`, its options and help, under the CLI's name."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from tests.cli._support import NEBULA, WAIT, cli_env, nebula
from tests.helpers import ROOT


def test_fake_server_help_is_the_testing_servers_help() -> None:
    """`nebula fake-server --help` prints the testing module's help, under its own program name."""
    ours = nebula("fake-server", "--help")
    theirs = subprocess.run(
        [sys.executable, "-m", "nebula_async.testing", "--help"],
        env=cli_env(), capture_output=True, text=True, timeout=WAIT, cwd=ROOT,
    )  # fmt: skip
    assert ours.returncode == theirs.returncode == 0
    prog = f"{sys.executable} -m nebula_async.cli fake-server"
    # The same words: only the usage line's wrapping differs, the program names being of different lengths.
    assert (
        ours.stdout.replace(prog, "PROG").split()
        == theirs.stdout.replace("python -m nebula_async.testing", "PROG").split()
    )


def test_fake_server_rejects_a_bad_option_with_exit_2() -> None:
    """An option the testing server does not have is a usage error: exit 2."""
    proc = nebula("fake-server", "--no-such-option")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_fake_server_serves_generate_until_sigint() -> None:
    """`nebula fake-server --port 0` serves `nebula generate`; SIGINT stops it with exit 0."""
    server = subprocess.Popen(
        [*NEBULA, "fake-server", "--port", "0", "--quiet"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        match = re.match(r"FakeNebulaServer at (http://127\.0\.0\.1:\d+/v1) ", banner)
        assert match, banner
        proc = nebula("--base-url", match.group(1), "--api-key", "any", "generate", "--json", "hi")
        assert proc.returncode == 0, proc.stderr
        assert '"text": ' in proc.stdout
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=WAIT) == 0
    finally:
        server.kill()
        server.communicate()
