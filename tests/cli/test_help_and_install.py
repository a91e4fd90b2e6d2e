"""`nebula --help` is light; the SDK never imports click or rich; a core install says what to add."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nebula_async._version import __version__
from tests.cli._support import cli_env, nebula
from tests.helpers import ROOT


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=20, cwd=ROOT
    )


def test_help_lists_every_command_and_the_exit_codes() -> None:
    """--help names the five commands and the documented exit codes, on stdout, exit 0."""
    proc = nebula("--help")
    assert proc.returncode == 0
    for command in ("generate", "batch", "models", "fake-server", "demo"):
        assert f"  {command} " in proc.stdout
    assert "0 done, 1 API error" in proc.stdout
    assert "130 interrupted" in proc.stdout


def test_version_prints_the_package_version() -> None:
    """--version prints `nebula <version>`."""
    proc = nebula("--version")
    assert (proc.returncode, proc.stdout) == (0, f"nebula {__version__}\n")


def test_help_and_version_import_no_aiohttp_nor_rich() -> None:
    """Answering --help or --version loads neither aiohttp nor rich: they are what costs at start-up."""
    code = (
        "import sys\nfrom nebula_async.cli import main\n"
        "codes = [main(['--help']), main(['--version']), main(['batch', '--help'])]\n"
        "print(codes, 'aiohttp' in sys.modules, 'rich' in sys.modules, file=sys.stderr)"
    )
    proc = _python(code)
    assert proc.stderr.strip() == "[0, 0, 0] False False", proc.stderr


def test_the_sdk_imports_neither_click_nor_rich() -> None:
    """Importing both packages, making clients and the fake server loads no module of the [cli] extra."""
    code = (
        "import sys, nebula_async, nebula_sync, nebula_async.testing\n"
        "nebula_async.AsyncNebulaClient(api_key='k'); nebula_sync.NebulaClient(api_key='k').close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich')))"
    )
    proc = _python(code)
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stderr


@pytest.mark.parametrize("missing", ["click", "rich"])
def test_without_the_extra_main_prints_the_install_hint_and_exits_2(missing: str) -> None:
    """With click or rich missing (a None in sys.modules), main() says which extra to install; exit 2."""
    proc = _python(
        f"import sys\nsys.modules[{missing!r}] = None\n"
        "from nebula_async.cli import main\nsys.exit(main(['--help']))"
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "nebula: the command line needs the [cli] extra: pip install 'nebula-sdk[cli]'\n"


def test_a_usage_error_exits_2_with_clicks_message() -> None:
    """An unknown command or option exits 2 with a usage message on stderr and nothing on stdout."""
    for args in (["no-such-command"], ["generate"], ["--no-such-option"]):
        proc = nebula(*args)
        assert proc.returncode == 2, args
        assert proc.stdout == ""
        assert "Usage: " in proc.stderr
