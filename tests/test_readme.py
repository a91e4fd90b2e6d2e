"""README.md's two set-up commands stay true: CI runs the check command, read from README itself."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    """The Development section gives exactly two commands: the demo and every check."""
    readme = (ROOT / "README.md").read_text()
    development = readme.split("## Development", 1)[1]
    commands = _bash_blocks(development)
    assert len(commands) == 2
    assert commands[0].endswith("python -m nebula_sync.demo")
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
