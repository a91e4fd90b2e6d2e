"""README.md's two set-up commands stay true: CI runs the check command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_ci_runs_the_readme_check_command_verbatim() -> None:
    """The command after README's ci:check marker is the last line of .ci/run, character for character."""
    readme = (ROOT / "README.md").read_text()
    marked = readme.split("<!-- ci:check -->", 1)[1]
    command = _bash_blocks(marked)[0]
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == command
    for check in ("ruff check", "ruff format --check", "mypy", "pytest"):
        assert check in command


def test_readme_development_section_has_exactly_two_commands() -> None:
    """The Development section gives exactly two commands: the demo and every check."""
    readme = (ROOT / "README.md").read_text()
    development = readme.split("## Development", 1)[1]
    commands = _bash_blocks(development)
    assert len(commands) == 2
    assert commands[0].endswith("python -m nebula_sync.demo")
    assert commands[1].endswith("python -m pytest")
