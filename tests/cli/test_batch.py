"""`nebula batch`: results to the file, progress and summary on stderr, resume, bad input, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from nebula_async.testing import FakeNebulaServer
from tests.cli._support import OnTerminal, nebula
from tests.cli.conftest import KEY


def write_prompts(path: Path, count: int) -> Path:
    """Write ``count`` prompts with ids p1..pN to ``path``."""
    path.write_text(
        "".join(json.dumps({"id": f"p{n}", "prompt": f"prompt {n}"}) + "\n" for n in range(1, count + 1))
    )
    return path


def read_ids(path: Path) -> list[str]:
    """Return the ids of the output's lines, in file order."""
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_batch_writes_every_result_and_resumes_with_nothing_to_do(
    api: FakeNebulaServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Every id is written once; stdout stays empty; a rerun skips all of them and sends nothing."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    proc = nebula("batch", str(prompts), "-o", str(out), "--max-tokens", "8", "-m", "gpt-4", env=env)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert sorted(read_ids(out)) == sorted(f"p{n}" for n in range(1, 51))
    assert {(r.json["model"], r.json["max_tokens"]) for r in api.requests} == {("gpt-4", 8)}
    assert "succeeded 50, failed 0, skipped as already done 0, not run 0;" in proc.stderr
    again = nebula("batch", str(prompts), "-o", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert "succeeded 0, failed 0, skipped as already done 50, not run 0;" in again.stderr
    assert len(api.requests) == 50


def test_without_a_terminal_progress_is_plain_lines(
    api: FakeNebulaServer, env: dict[str, str], tmp_path: Path
) -> None:
    """On a pipe, progress is plain `batch: N/T done, ...` lines without terminal escapes."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    proc = nebula("batch", str(prompts), "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("batch: ")
    assert "/20 done, 0 failed, " in proc.stderr
    assert "\x1b[" not in proc.stderr
    assert "\r" not in proc.stderr


def test_on_a_terminal_progress_is_a_live_bar(
    api: FakeNebulaServer, env: dict[str, str], tmp_path: Path
) -> None:
    """On a terminal the bar is redrawn in place and ends at total/total with the summary after it."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    code, output = OnTerminal("batch", str(prompts), "-o", str(out), env=env).finish()
    text = output.decode()
    assert code == 0, text
    assert "40/40" in text
    assert "\x1b[" in text  # drawn with terminal escapes, not printed line by line
    assert "succeeded 40, failed 0" in text.split("40/40")[-1]


def test_bad_input_lists_each_problem_and_exits_2(
    api: FakeNebulaServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Malformed lines are each reported with their line number; exit 2; nothing sent, no output file."""
    prompts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts.write_text('{"prompt": "fine"}\nnot json\n{"id": "x"}\n{"prompt": "ok", "temperature": 9}\n')
    proc = nebula("batch", str(prompts), "-o", str(out), env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"nebula: error: {prompts}: 3 problems, nothing was sent:\n")
    for number in (2, 3, 4):
        assert f"\nline {number}: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert api.requests == []


def test_a_missing_input_file_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    """An input path that does not exist: exit 2, naming it."""
    proc = nebula("batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl"), env=env)
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr


def test_stdin_as_the_input_is_refused_saying_why(env: dict[str, str], tmp_path: Path) -> None:
    """IN.jsonl "-" is a usage error that says a batch reads its input again, not that "-" is missing."""
    # This broke: "File '-' does not exist.", as if "-" were a file name the user mistyped.
    proc = nebula("batch", "-", "-o", str(tmp_path / "out.jsonl"), env=env, stdin='{"prompt": "p"}\n')
    assert proc.returncode == 2
    assert "a batch can't read stdin ('-'): it reads its input again to resume" in proc.stderr


def test_failed_rows_exit_1_and_retry_failed_runs_them_again(
    api: FakeNebulaServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Rows that failed give exit 1 and the --retry-failed command; that command completes them, exit 0."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 10), tmp_path / "out.jsonl"
    api.fail_next(2, status=400, code="invalid_request", message="bad luck")
    proc = nebula("batch", str(prompts), "-o", str(out), "--concurrency", "1", env=env)
    assert proc.returncode == 1
    assert "succeeded 8, failed 2," in proc.stderr
    command = proc.stderr.split("to run them again: ", 1)[1].splitlines()[0]
    assert command.endswith(f"batch {prompts} -o {out} --concurrency 1 --retry-failed")
    again = nebula("batch", str(prompts), "-o", str(out), "--concurrency", "1", "--retry-failed", env=env)
    assert again.returncode == 0, again.stderr
    assert "succeeded 2, failed 0, skipped as already done 8" in again.stderr
    assert sorted(read_ids(out)) == sorted(f"p{n}" for n in range(1, 11))
    assert all("error" not in json.loads(line) for line in out.read_text().splitlines())


def test_insufficient_quota_stops_exit_1_and_says_how_to_resume(env: dict[str, str], tmp_path: Path) -> None:
    """A job-wide error stops the batch: exit 1, the reason, and a resume command without the API key."""
    with FakeNebulaServer(token_quota=200).run_in_thread() as server:
        prompts, out = write_prompts(tmp_path / "in.jsonl", 100), tmp_path / "out.jsonl"
        env = {**env, "NEBULA_BASE_URL": server.base_url}
        del env["NEBULA_API_KEY"]
        proc = nebula("--api-key", KEY, "batch", str(prompts), "-o", str(out), "--concurrency", "2", env=env)
    assert proc.returncode == 1
    assert "stopped (insufficient_quota): insufficient_quota: " in proc.stderr
    resume = proc.stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert resume.endswith(f"batch {prompts} -o {out} --concurrency 2 (with the same --api-key)")
    assert KEY not in proc.stderr + proc.stdout
    assert 0 < len(read_ids(out)) < 100


def test_rpm_paces_the_batch_under_the_servers_limit(env: dict[str, str], tmp_path: Path) -> None:
    """--rpm matching the server's 20 requests/s limit sends 60 prompts with at most one 429 answered."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 60), tmp_path / "out.jsonl"
    with FakeNebulaServer(requests_per_second=20).run_in_thread() as server:
        env = {**env, "NEBULA_BASE_URL": server.base_url}
        proc = nebula("batch", str(prompts), "-o", str(out), "--rpm", "1200", "--concurrency", "32", env=env)
        statuses = [request.status for request in server.requests]
    assert proc.returncode == 0, proc.stderr
    assert statuses.count(429) <= 1
    assert statuses.count(200) == 60


def test_tpm_is_passed_to_the_rate_limit(api: FakeNebulaServer, env: dict[str, str], tmp_path: Path) -> None:
    """With --tpm below one request's estimate, rows fail unsent, their lines naming both numbers."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    proc = nebula("batch", str(prompts), "-o", str(out), "--tpm", "100", "--max-tokens", "500", env=env)
    assert proc.returncode == 1
    assert "succeeded 0, failed 3," in proc.stderr
    for line in out.read_text().splitlines():
        message = json.loads(line)["error"]["message"]
        assert "max_tokens 500" in message
        assert "tokens_per_minute=100" in message
    assert api.requests == []


def test_a_bad_rate_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    """--rpm 0 or --tpm nan is refused with exit 2, naming the option, before anything runs."""
    prompts, out = write_prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    # This broke: the message named RateLimit's requests_per_minute, which is no option of the command.
    for option, value in (("--rpm", "0"), ("--tpm", "nan")):
        proc = nebula("batch", str(prompts), "-o", str(out), option, value, env=env)
        assert proc.returncode == 2
        assert f"Invalid value for '{option}': must be a finite number > 0, got {value}" in proc.stderr
    assert not out.exists()
