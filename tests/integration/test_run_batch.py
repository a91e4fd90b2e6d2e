"""run_batch over the fake server: fresh runs, resume, torn lines, retry_failed, stops, progress, input."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from nebula_async import (
    AuthenticationError,
    BatchInputError,
    BatchProgress,
    InsufficientQuotaError,
    RetryPolicy,
)
from nebula_async._batchfile import CHECK_EVERY
from nebula_async.testing import FakeNebulaServer
from tests.integration._support import echo, make_client, wait_until


def write_input(path: Path, count: int, **fields: Any) -> Path:
    """Write ``count`` lines with prompts p1..pN (ids are the line numbers) and ``fields``."""
    with open(path, "w") as file:
        for i in range(1, count + 1):
            file.write(json.dumps({"prompt": f"p{i}", **fields}) + "\n")
    return path


def records(path: Path) -> list[dict[str, Any]]:
    """The output's records, in file order (every line must be whole)."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def ids(path: Path) -> list[Any]:
    """The output's ids, sorted."""
    return sorted(record["id"] for record in records(path))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """An input path and an output path in a temporary directory."""
    return tmp_path / "in.jsonl", tmp_path / "out.jsonl"


async def test_a_fresh_run_writes_one_record_per_id(fake: FakeNebulaServer, files: tuple[Path, Path]) -> None:
    """Each id gets one success line with its text, usage, request_id and retries; the summary adds up."""
    fake.reply = echo
    source, output = write_input(files[0], 30), files[1]
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m", concurrency=4)
    got = records(output)
    assert sorted(r["id"] for r in got) == list(range(1, 31))
    for record in got:
        assert list(record) == ["id", "text", "usage", "request_id", "retries"]
        assert record["text"] == f"echo:p{record['id']}"
        assert record["request_id"].startswith("req_")
        assert record["retries"] == 0
    assert (summary.total, summary.skipped, summary.succeeded, summary.failed, summary.not_run) == (
        30,
        0,
        30,
        0,
        0,
    )
    assert summary.stopped is None
    assert summary.error is None
    assert summary.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in got)
    assert summary.completion_tokens == sum(r["usage"]["completion_tokens"] for r in got)
    assert summary.output == str(output)
    assert len(fake.requests) == 30


async def test_a_rerun_skips_the_ids_already_in_the_output(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """Ids with a line in the output, success or error, are not sent again."""
    source, output = write_input(files[0], 10), files[1]
    output.write_text(
        '{"id":2,"text":"t","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},'
        '"request_id":null,"retries":0}\n'
        '{"id":5,"error":{"code":"server_error","message":"m","status_code":500,"request_id":null}}\n'
    )
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m")
    assert ids(output) == list(range(1, 11))
    assert (summary.total, summary.skipped, summary.succeeded) == (10, 2, 8)
    assert sorted(r.json["prompt"] for r in fake.requests) == sorted(
        f"p{i}" for i in range(1, 11) if i not in (2, 5)
    )


async def test_a_torn_last_line_is_cut_and_its_id_run_again(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A last line without its newline (a kill mid-write) is cut; its id is sent again, once."""
    source, output = write_input(files[0], 3), files[1]
    whole = (
        '{"id":1,"text":"t","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},'
        '"request_id":null,"retries":0}\n'
    )
    output.write_text(whole + whole.replace('"id":1', '"id":2')[:40])
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m")
    assert ids(output) == [1, 2, 3]
    assert summary.skipped == 1
    assert output.read_text().startswith(whole)


async def test_an_output_line_that_is_not_a_record_stops_the_run(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A complete output line that is not a record is reported with its line number; nothing is sent."""
    source, output = write_input(files[0], 3), files[1]
    output.write_text('{"id": 1, "text": "t"}\nnot json\n')
    async with make_client(fake.base_url) as client:
        with pytest.raises(BatchInputError) as info:
            await client.run_batch(source, output, model="m")
    assert info.value.problems[0][0] == 2
    assert "not a record of run_batch" in info.value.problems[0][1]
    assert str(output) in str(info.value)
    assert output.read_text() == '{"id": 1, "text": "t"}\nnot json\n'  # left as it was
    assert fake.requests == []


async def test_retry_failed_runs_the_failures_again_and_leaves_one_line_per_id(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """Failed ids are written as errors; a rerun with retry_failed replaces them through an atomic rewrite."""
    source, output = write_input(files[0], 8), files[1]
    fake.fail_next(3, status=500)
    async with make_client(fake.base_url, retry=RetryPolicy(max_retries=0)) as client:
        first = await client.run_batch(source, output, model="m", concurrency=1)
        assert (first.succeeded, first.failed) == (5, 3)
        failures = [r for r in records(output) if "error" in r]
        assert [r["error"]["code"] for r in failures] == ["server_error"] * 3
        assert failures[0]["error"]["status_code"] == 500
        again = await client.run_batch(source, output, model="m")  # without retry_failed: nothing to do
        assert (again.skipped, again.succeeded) == (8, 0)
        retried = await client.run_batch(source, output, model="m", retry_failed=True)
    assert (retried.skipped, retried.succeeded, retried.failed) == (5, 3, 0)
    assert ids(output) == list(range(1, 9))
    assert all("text" in r for r in records(output))
    assert sorted(os.listdir(output.parent)) == ["in.jsonl", "out.jsonl"]  # no temporary file left


async def test_fsync_syncs_the_output(
    fake: FakeNebulaServer, files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync=True the output is fsync'ed (at the end at least); without it, never."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    source, output = write_input(files[0], 5), files[1]
    async with make_client(fake.base_url) as client:
        await client.run_batch(source, output, model="m")
        assert synced == []
        output.unlink()
        await client.run_batch(source, output, model="m", fsync=True)
    assert len(synced) >= 1
    assert ids(output) == [1, 2, 3, 4, 5]


async def test_insufficient_quota_stops_the_batch_and_a_rerun_resumes(files: tuple[Path, Path]) -> None:
    """Out of quota: nothing more is sent, the failing item is not written, the summary says why; rerun."""
    source, output = write_input(files[0], 40), files[1]
    async with FakeNebulaServer(models=["m"], token_quota=100) as fake:
        async with make_client(fake.base_url, retry=RetryPolicy(max_retries=0)) as client:
            summary = await client.run_batch(source, output, model="m", concurrency=2, max_tokens=5)
        assert summary.stopped == "insufficient_quota"
        assert isinstance(summary.error, InsufficientQuotaError)
        assert summary.failed == 0
        assert 0 < summary.succeeded < 40
        assert summary.not_run == 40 - summary.succeeded
        assert all("text" in r for r in records(output))
        sent = len(fake.requests)
        assert sent <= summary.succeeded + 2  # the failing ones in flight, and no more
    async with FakeNebulaServer(models=["m"]) as topped_up, make_client(topped_up.base_url) as client:
        rest = await client.run_batch(source, output, model="m", max_tokens=5)
    assert rest.skipped == summary.succeeded
    assert rest.stopped is None
    assert ids(output) == list(range(1, 41))


async def test_a_rejected_key_stops_the_batch_and_writes_nothing(files: tuple[Path, Path]) -> None:
    """An authentication error is job-wide: the batch stops at once and no error lines are written."""
    source, output = write_input(files[0], 50), files[1]
    async with FakeNebulaServer(models=["m"], api_keys=["good-key"]) as fake:
        async with make_client(fake.base_url, retry=RetryPolicy(max_retries=0)) as client:
            summary = await client.run_batch(source, output, model="m", concurrency=4)
        assert len(fake.requests) <= 4
    assert summary.stopped == "authentication"
    assert isinstance(summary.error, AuthenticationError)
    assert summary.not_run == 50
    assert output.read_text() == ""


async def test_errors_that_are_not_api_answers_get_a_record(files: tuple[Path, Path]) -> None:
    """A connection that fails is an error record with the code connection_error, not a crash."""
    source, output = write_input(files[0], 3), files[1]
    async with make_client("http://127.0.0.1:9/v1", retry=RetryPolicy(max_retries=0)) as client:
        summary = await client.run_batch(source, output, model="m")
    assert summary.failed == 3
    assert {r["error"]["code"] for r in records(output)} == {"connection_error"}
    assert {r["error"]["status_code"] for r in records(output)} == {None}


async def test_stop_event_stops_new_requests_and_lets_the_in_flight_finish(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """Once stop_event is set no request starts; those in flight finish within the grace period, written."""
    source, output = write_input(files[0], 200), files[1]
    fake.time_to_first_token = 0.01
    stop = threading.Event()

    def progress(p: BatchProgress) -> None:
        if p.done >= 5:
            stop.set()

    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(
            source, output, model="m", concurrency=4, progress=progress, stop_event=stop
        )
    assert summary.stopped == "interrupted"
    assert summary.error is None
    assert 5 <= summary.succeeded <= 5 + 4 + 4
    assert len(fake.requests) == summary.succeeded  # every request sent was written
    assert summary.not_run == 200 - summary.succeeded
    assert len(records(output)) == summary.succeeded


async def test_stop_event_ends_the_reading_of_a_large_input(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A stop during the validation pass ends it within a few thousand lines: nothing sent, counts 0."""
    # Broke: the whole input was read first (a million lines: ~20 s after Ctrl-C), and a cancel
    # left the reading thread running, so even a second Ctrl-C waited for it at the loop's exit.
    source, output = write_input(files[0], 3 * CHECK_EVERY), files[1]
    stop = threading.Event()
    stop.set()
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m", stop_event=stop)
    assert summary.stopped == "interrupted"
    assert (summary.total, summary.succeeded, summary.not_run) == (0, 0, 0)
    assert fake.requests == []
    assert not output.exists()


async def test_the_grace_period_ends_by_cancelling_what_is_still_in_flight(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """Calls still running when the grace period ends are cancelled and not written."""
    source, output = write_input(files[0], 20), files[1]
    fake.time_to_first_token = 5.0
    stop = threading.Event()
    seen: list[BatchProgress] = []

    def progress(p: BatchProgress) -> None:
        seen.append(p)
        if p.in_flight:
            stop.set()  # called about twice a second even while nothing completes

    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(
            source, output, model="m", concurrency=3, progress=progress, stop_event=stop, grace_period=0.05
        )
    assert summary.stopped == "interrupted"
    assert (summary.succeeded, summary.not_run) == (0, 20)
    assert summary.elapsed < 4
    assert output.read_text() == ""
    assert seen[0].in_flight == 3


async def test_a_progress_hook_that_raises_ends_the_run_with_its_error(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A hook raising while nothing completes (a timer call) ends the run with that error; nothing is lost."""
    source, output = write_input(files[0], 10), files[1]
    fake.time_to_first_token = 5.0

    def progress(p: BatchProgress) -> None:
        raise LookupError("the progress bar broke")

    async with make_client(fake.base_url) as client:
        with pytest.raises(LookupError, match="progress bar"):
            await client.run_batch(source, output, model="m", concurrency=2, progress=progress)
    assert output.read_text() == ""


async def test_progress_reports_what_this_run_did(fake: FakeNebulaServer, files: tuple[Path, Path]) -> None:
    """The hook sees done grow by one per line written, skipped ids apart, and coherent totals and rates."""
    source, output = write_input(files[0], 12), files[1]
    output.write_text('{"id":1,"error":{"code":"x","message":"m","status_code":null,"request_id":null}}\n')
    seen: list[BatchProgress] = []
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m", concurrency=2, progress=seen.append)
    assert [p.done for p in seen[:11]] == list(range(1, 12))
    last = seen[-1]
    assert (last.total, last.skipped, last.done, last.succeeded, last.failed) == (12, 1, 11, 11, 0)
    assert last.in_flight == 0
    assert last.eta == 0
    assert last.paused_for == 0.0
    assert last.prompt_tokens == summary.prompt_tokens
    assert last.completion_tokens == summary.completion_tokens
    assert last.requests_per_second > 0
    assert last.tokens_per_second > 0
    assert all(p.in_flight <= 2 for p in seen)
    assert all(p.eta is None or p.eta >= 0 for p in seen)
    # A first result says little about the rate: no ETA before a second of sending (the first
    # progress line of a 10,000-prompt run once said "ETA 1h02m" for a job of 6 s).
    assert seen[0].eta is None or seen[0].elapsed >= 1.0


async def test_openai_batch_files_run_unchanged(fake: FakeNebulaServer, files: tuple[Path, Path]) -> None:
    """Lines in OpenAI's batch shape run as they are; their custom_id is the output's id."""
    fake.reply = echo
    source, output = files
    lines = [
        {
            "custom_id": "req-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        },
        {
            "custom_id": "req-2",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "Yo"},
        },
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with make_client(fake.base_url) as client:
        await client.run_batch(source, output)
    assert {r["id"]: r["text"] for r in records(output)} == {"req-1": "echo:Hi", "req-2": "echo:Yo"}
    assert sorted((r.json["prompt"], r.json.get("max_tokens")) for r in fake.requests) == [
        ("Hi", 5),
        ("Yo", None),
    ]


async def test_the_retry_failed_rewrite_keeps_the_outputs_permissions(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """The rewritten output has the old file's mode, not the temporary file's 0600."""
    # Broke: a shared 0644 output became 0600 after a retry_failed run.
    source, output = write_input(files[0], 2), files[1]
    output.write_text('{"id": 1, "error": {"code": "server_error"}}\n')
    output.chmod(0o644)
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m", retry_failed=True)
    assert summary.succeeded == 2
    assert output.stat().st_mode & 0o777 == 0o644


async def test_the_retry_failed_rewrite_keeps_failures_of_ids_not_in_the_input(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A failure line whose id the input no longer has stays: it would not be run again."""
    # Broke: the rewrite dropped every failure line, so an output shared with an older input lost them.
    source, output = write_input(files[0], 2), files[1]
    output.write_text(
        '{"id": 1, "error": {"code": "server_error"}}\n{"id": "gone", "error": {"code": "server_error"}}\n'
    )
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, output, model="m", retry_failed=True)
    assert (summary.succeeded, summary.failed) == (2, 0)
    assert sorted(str(r["id"]) for r in records(output)) == ["1", "2", "gone"]
    kept = [r for r in records(output) if r["id"] == "gone"]
    assert kept == [{"id": "gone", "error": {"code": "server_error"}}]


async def test_the_retry_failed_rewrite_goes_through_a_symlinked_output(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """An output that is a symlink stays one: the rewrite replaces the file it points to."""
    # Broke: the rewrite renamed a new file over the link, leaving the old target behind, stale.
    source, link = write_input(files[0], 2), files[1]
    target = link.parent / "elsewhere" / "real.jsonl"
    target.parent.mkdir()
    target.write_text('{"id": 1, "error": {"code": "server_error"}}\n')
    link.symlink_to(target)
    async with make_client(fake.base_url) as client:
        summary = await client.run_batch(source, link, model="m", retry_failed=True)
    assert summary.succeeded == 2
    assert link.is_symlink()
    assert ids(target) == [1, 2]
    assert sorted(os.listdir(target.parent)) == ["real.jsonl"]


async def test_a_copy_left_by_a_rewrite_killed_midway_is_removed(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """The temporary copy a retry_failed rewrite leaves when killed goes at the next run; others stay."""
    # Broke: each kill during a rewrite left a copy as large as the output, forever.
    source, output = write_input(files[0], 2), files[1]
    stale = output.parent / ".out.jsonl.nebula-batch-k1ll3d.tmp"
    stale.write_text('{"id": 1, "text": "t"}\n')
    other = output.parent / ".other.jsonl.nebula-batch-x.tmp"  # another output's: maybe in use
    other.write_text("")
    async with make_client(fake.base_url) as client:
        await client.run_batch(source, output, model="m")
    assert sorted(os.listdir(output.parent)) == [other.name, "in.jsonl", "out.jsonl"]


@pytest.mark.parametrize("retry_failed", [False, True])
async def test_a_second_run_on_the_same_output_fails_while_the_first_runs(
    retry_failed: bool, fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A run started on an output another run is writing raises BlockingIOError and sends nothing."""
    # Broke: two runs of one command on one output both sent every id and wrote each line twice;
    # with retry_failed the first run renames a new file over the output, which must be locked too.
    source, output = write_input(files[0], 20), files[1]
    async with make_client(fake.base_url, retry=RetryPolicy(max_retries=0)) as client:
        if retry_failed:
            fake.fail_next(3, status=500)
            await client.run_batch(source, output, model="m", concurrency=1)
        sent = len(fake.requests)
        fake.time_to_first_token = 0.05
        first = asyncio.create_task(
            client.run_batch(source, output, model="m", concurrency=1, retry_failed=retry_failed)
        )
        await wait_until(lambda: len(fake.requests) > sent, timeout=5.0)
        with pytest.raises(BlockingIOError, match="another run_batch is writing to this output"):
            await client.run_batch(source, output, model="m")
        summary = await first
        assert len(fake.requests) == 20 + (3 if retry_failed else 0)
        assert summary.not_run == 0
        again = await client.run_batch(source, output, model="m")  # the lock went with the first run
    assert again.skipped == 20
    assert ids(output) == list(range(1, 21))
    assert sorted(os.listdir(output.parent)) == ["in.jsonl", "out.jsonl"]


async def test_the_output_must_not_be_the_input(fake: FakeNebulaServer, files: tuple[Path, Path]) -> None:
    """The input file given as the output raises a clear ValueError and is left untouched."""
    # Broke: every input line was reported as "not a record of run_batch".
    source = write_input(files[0], 3)
    before = source.read_bytes()
    async with make_client(fake.base_url) as client:
        with pytest.raises(ValueError, match="the output must not be the input file"):
            await client.run_batch(source, source.parent / "." / source.name, model="m")
    assert source.read_bytes() == before
    assert fake.requests == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
async def test_an_output_that_is_not_a_regular_file_is_refused(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A pipe as the output (or /dev/stdout) raises ValueError instead of hanging while read back."""
    # Broke: the run opened the output to read what a previous run left, and waited on it forever.
    source, output = write_input(files[0], 2), files[1]
    os.mkfifo(output)
    async with make_client(fake.base_url) as client:
        with pytest.raises(ValueError, match="the output must be a regular file"):
            await asyncio.wait_for(client.run_batch(source, output, model="m"), 10)
    assert fake.requests == []


async def test_bad_input_is_reported_before_anything_is_sent(
    fake: FakeNebulaServer, files: tuple[Path, Path]
) -> None:
    """A file with bad lines raises BatchInputError, sends nothing and leaves no output file."""
    source, output = files
    source.write_text('{"prompt": "ok"}\n{"prompt": "x", "max_token": 3}\n{"id": 1, "prompt": "dup"}\n')
    async with make_client(fake.base_url) as client:
        with pytest.raises(BatchInputError) as info:
            await client.run_batch(source, output, model="m")
    assert info.value.problems == [
        (2, "unknown key 'max_token' (did you mean 'max_tokens'?)"),
        (3, "duplicate id 1, first on line 1"),
    ]
    assert fake.requests == []
    assert not output.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be an int >= 1, got 0"),
        ({"grace_period": -1}, ValueError, "grace_period must be a finite number of seconds >= 0"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be an int >= 1, got 0"),
        ({"stop": "END"}, TypeError, "stop must be a list of strings"),
        ({"retry_failed": "yes"}, TypeError, "retry_failed must be True or False, got str"),
        ({"fsync": 1}, TypeError, "fsync must be True or False, got int"),
        ({"progress": 5}, TypeError, "progress must be a callable or None, got int"),
        ({"stop_event": True}, TypeError, "stop_event must be a threading.Event or None, got bool"),
    ],
)
async def test_bad_options_fail_before_reading_anything(
    kwargs: dict[str, Any], error: type[Exception], message: str, files: tuple[Path, Path]
) -> None:
    """Each bad option raises a clear error before the files are touched."""
    async with make_client("http://127.0.0.1:9/v1") as client:
        with pytest.raises(error, match=message.replace("[", r"\[")):
            await client.run_batch(files[0], files[1], model="m", **kwargs)
