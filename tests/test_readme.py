"""README.md stays true: its python examples run against a fake server, and CI runs its check command."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nebula_async import AsyncNebulaClient
from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient

ROOT = Path(__file__).resolve().parents[1]

# README sections whose python blocks another test runs, where they can run as written.
RUN_ELSEWHERE = {
    "## Jupyter and IPython": "tests/integration/test_notebooks.py runs them in a real Jupyter kernel",
    "## Testing your code": "tests/testing/test_plugin.py runs it with pytest",
    "## Closing, event loops and processes": "tests/integration/test_client_closing.py runs it as a script",
    "## Proxies and TLS": "placeholder proxy and CA paths: test_proxies.py and test_tls.py make these calls",
}
PROMPTS = ["Say hi", "Tell me a story"]  # the ``prompts`` of the "Many requests" example


def _python_blocks() -> list[Any]:
    """Return README's python blocks as pytest params, each named by its line, but those run elsewhere."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL):
        before = text[: match.start()]
        section = re.findall(r"^## .*$", before, flags=re.MULTILINE)[-1]
        line = before.count("\n") + 2  # the block's first line of code
        marks = [pytest.mark.skip(reason=RUN_ELSEWHERE[section])] if section in RUN_ELSEWHERE else []
        blocks.append(pytest.param(line, match.group(1), id=f"README.md:{line}", marks=marks))
    return blocks


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer with its defaults, which NEBULA_BASE_URL and NEBULA_API_KEY point at."""
    with FakeNebulaServer().run_in_thread() as server:
        monkeypatch.setenv("NEBULA_BASE_URL", server.base_url)
        monkeypatch.setenv("NEBULA_API_KEY", server.api_key)
        yield server


async def _run_awaiting(code: Any, namespace: dict[str, Any]) -> None:
    """Run a block that awaits at its top level, as a notebook would, with an async ``client``."""
    async with AsyncNebulaClient() as client:
        namespace.setdefault("client", client)
        result = eval(code, namespace)  # a block with a top-level await evaluates to its coroutine
        await result


@pytest.mark.parametrize(("line", "source"), _python_blocks())
def test_readme_python_example_runs_against_the_fake_server(
    line: int,
    source: str,
    api: FakeNebulaServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each python example of README.md runs unchanged against a FakeNebulaServer with its default models."""
    monkeypatch.chdir(tmp_path)  # the batch examples write their files in the current directory
    # Regression: the quick start's model="gpt-4" got model_not_found from the fake server's defaults.
    code = compile(source, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__readme__", "prompts": PROMPTS}
    if code.co_flags & inspect.CO_COROUTINE:  # a fragment of async code: await it in a loop
        asyncio.run(_run_awaiting(code, namespace))
    else:  # a script, or a fragment of sync code, whose ``client`` is then a NebulaClient
        made = [NebulaClient()]
        namespace["client"] = made[0]
        try:
            exec(code, namespace)
        finally:
            made += [value for value in namespace.values() if isinstance(value, NebulaClient)]
            for client in made:
                client.close()
    assert api.requests, "the example sent nothing"
    # The errors example asks for an unknown model on purpose; every other one must succeed.
    expected = {404} if "except ModelNotFoundError" in source else {200}
    assert {request.status for request in api.requests} == expected
    if "print(" in source:
        assert capsys.readouterr().out.strip()


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def _readme_check_command() -> str:
    marked = (ROOT / "README.md").read_text().split("<!-- ci:check -->", 1)[1]
    return _bash_blocks(marked)[0]


def _ci_command(python: str, folder: str) -> str:
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-command", python, folder],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return run.stdout.rstrip("\n")


@pytest.mark.parametrize(
    ("python", "folder"),
    [
        ("/root/.pyenv/versions/3.10.13/bin/python3.10", ".ci/venvs/py3.10"),
        ("/opt/my python/bin/python3.13", ".ci/venvs/py 3.13"),  # spaces: quoted, not split
    ],
)
def test_ci_runs_the_readme_check_command_with_only_python_and_folder_replaced(
    python: str, folder: str
) -> None:
    """CI's command is README's, word for word, but for its own Python and environment folder."""
    command = _ci_command(python, folder)
    assert ".venv" not in command  # a developer's environment is never used, nor deleted
    words = shlex.split(command)
    assert words[:4] == [python, "-m", "venv", folder]
    restored = ["python3", "-m", "venv", ".venv"] + [
        ".venv/" + word.removeprefix(folder + "/") if word.startswith(folder + "/") else word
        for word in words[4:]
    ]
    assert restored == shlex.split(_readme_check_command())


def test_the_check_command_runs_every_check_with_a_coverage_floor() -> None:
    """The check command lints, formats, type-checks, and runs the tests under coverage with a floor >= 90."""
    command = _readme_check_command()
    for check in ("ruff check .", "ruff format --check .", "mypy", "coverage run -m pytest"):
        assert check in command
    floor = re.search(r"coverage report --fail-under=(\d+)$", command)
    assert floor is not None
    assert int(floor.group(1)) >= 90


def test_readme_development_section_has_exactly_two_commands() -> None:
    """The Development section gives exactly two commands: the CLI's install and demo, then every check."""
    readme = (ROOT / "README.md").read_text()
    development = readme.split("## Development", 1)[1]
    commands = _bash_blocks(development)
    assert len(commands) == 2
    assert (
        commands[0] == "python3 -m venv .venv && .venv/bin/pip install -e '.[cli]' && .venv/bin/nebula demo"
    )
    assert commands[1] == _readme_check_command()


def test_ci_refuses_a_check_command_it_cannot_place(tmp_path: Path) -> None:
    """A README whose check command does not make .venv first makes CI fail, rather than run elsewhere."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    marker = "<!-- ci:check -->\n```bash\n"
    readme = (ROOT / "README.md").read_text().replace(marker + "python3 -m venv .venv && ", marker, 1)
    assert readme != (ROOT / "README.md").read_text()
    (tmp_path / "README.md").write_text(readme)
    run = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run"), "--print-command", "python3", ".ci/venvs/x"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert run.returncode != 0
    assert "must start with 'python3 -m venv .venv && '" in run.stderr
