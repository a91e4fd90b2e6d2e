"""Which exception ends with which exit code, -v found among the global options, and the resume command."""

from __future__ import annotations

import pytest

from nebula_async import (
    APIConnectionError,
    AuthenticationError,
    BatchInputError,
    InsufficientQuotaError,
    NebulaError,
)
from nebula_async.cli._app import _verbose, exit_code_for, run
from nebula_async.cli._batch import resume_command


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AuthenticationError("bad key", status_code=401), 1),
        (InsufficientQuotaError("no quota", status_code=402), 1),
        (APIConnectionError("refused"), 1),
        (OSError(28, "No space left on device"), 1),
        (RuntimeError("a bug"), 1),
        (ValueError("temperature must be between 0 and 2, got 3"), 2),
        (TypeError("stop must be a list of str"), 2),
        (BatchInputError("in.jsonl", [(2, "not JSON")], 1), 2),
        (NebulaError("no API key"), 2),
        (KeyboardInterrupt(), 130),
    ],
)
def test_each_error_has_its_documented_exit_code(error: BaseException, code: int) -> None:
    """API errors and write failures exit 1, bad input 2, an interrupt 130."""
    assert exit_code_for(error) == code


@pytest.mark.parametrize(
    ("args", "verbose"),
    [
        (["-v", "generate", "x"], True),
        (["--verbose", "models"], True),
        (["-vv", "models"], True),
        (["--api-key", "-v", "models"], False),  # a key that looks like an option is still the key
        (["--base-url", "http://h/v1", "-v", "models"], True),
        (["generate", "-v"], False),  # after the command's name: the command's own argument
        (["-x"], False),
    ],
)
def test_verbose_is_read_from_the_global_options_only(args: list[str], verbose: bool) -> None:
    """-v counts before the command's name, never as an option's value."""
    assert _verbose(args) is verbose


def test_resume_command_leaves_the_api_key_out() -> None:
    """The resume command repeats the arguments but the API key's value, in either spelling."""
    args = ["--api-key", "sk-SECRET", "batch", "in file.jsonl", "-o", "out.jsonl"]
    assert (
        resume_command("nebula", args)
        == "nebula batch 'in file.jsonl' -o out.jsonl (with the same --api-key)"
    )
    assert (
        resume_command("nebula", ["--api-key=sk-SECRET", "batch", "a"])
        == "nebula batch a (with the same --api-key)"
    )
    assert resume_command("nebula", ["batch", "a", "-o", "b"]) == "nebula batch a -o b"


def test_a_bug_is_one_line_that_asks_for_a_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception is named on one line with a request to rerun with -v; exit 1, no traceback."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something impossible")

    monkeypatch.setattr("nebula_async.cli._app.cli.main", broken)
    assert run(["models"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "nebula: error: RuntimeError: something impossible\n"
        "nebula: this is a bug: please report it with the output of -v\n"
    )
