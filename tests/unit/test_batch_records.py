"""The batch output's record format, its two encoders, and the compact id sets."""

from __future__ import annotations

import json

import pytest

from nebula_async import (
    APIConnectionError,
    APITimeoutError,
    ContextLengthExceededError,
    NebulaError,
    ServerError,
    TextGeneration,
    Usage,
)
from nebula_async import _records as records_module
from nebula_async._doneset import IdDigester, IdSet
from nebula_async._records import _json_dumps, dumps, error_record, parse_record, success_record

GENERATION = TextGeneration('Hé 👋\n"quoted"\x01', Usage(3, 4, 7), "req_1", 2)


def test_a_success_record_has_the_documented_keys_in_order() -> None:
    """A success line is one compact JSON object: id, text, usage, request_id, retries, then a newline."""
    line = success_record("a", GENERATION)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # the newline in the text is escaped
    assert list(json.loads(line)) == ["id", "text", "usage", "request_id", "retries"]
    assert json.loads(line) == {
        "id": "a",
        "text": GENERATION.text,
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "request_id": "req_1",
        "retries": 2,
    }


def test_orjson_and_the_stdlib_write_the_same_bytes() -> None:
    """Without orjson, the stdlib's json writes exactly the bytes orjson writes."""
    pytest.importorskip("orjson")
    value = json.loads(success_record(7, GENERATION))
    assert dumps(value) == _json_dumps(value)


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_a_text_with_a_lone_surrogate_is_written_escaped(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text with a lone surrogate (the API sent "\\ud800") is written as ASCII and reads back the same."""
    # Broke: the record could not be encoded, run_batch crashed after the request, and every rerun
    # sent it again and crashed again: the batch could never finish.
    if encoder == "orjson":
        pytest.importorskip("orjson")
    else:
        monkeypatch.setattr(records_module, "_dumps", _json_dumps)
    generation = TextGeneration("bad \ud800 é", Usage(1, 1, 2), "req_1", 0)
    line = success_record(1, generation)
    line.decode("ascii")
    assert line.endswith(b"\n")
    assert json.loads(line)["text"] == generation.text
    assert parse_record(line) == (1, False)


@pytest.mark.parametrize(
    ("error", "code", "status", "request_id"),
    [
        (ContextLengthExceededError("long", code="context_length_exceeded", status_code=400, request_id="r"),
         "context_length_exceeded", 400, "r"),
        (ServerError("bad gateway", status_code=502), "api_error", 502, None),
        (APITimeoutError("timed out waiting for the API"), "timeout", None, None),
        (APIConnectionError("connection refused", request_id="r2"), "connection_error", None, "r2"),
        (NebulaError("stream ended early"), "sdk_error", None, None),
        (ValueError("prompt too large"), "invalid_request", None, None),
    ],
)  # fmt: skip
def test_each_kind_of_error_gets_a_stable_code(
    error: Exception, code: str, status: int | None, request_id: str | None
) -> None:
    """API errors keep the API's code; others get timeout, connection_error, sdk_error or invalid_request."""
    record = json.loads(error_record(1, error))
    assert record == {
        "id": 1,
        "error": {
            "code": code,
            "message": record["error"]["message"],
            "status_code": status,
            "request_id": request_id,
        },
    }
    assert record["error"]["message"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{torn", "not valid JSON"),
        (b"[1]\n", "not a JSON object but list"),
        (b'{"text": "t"}\n', "no valid id"),
        # Broke: a lone surrogate id raised UnicodeEncodeError when its digest was taken.
        (b'{"id": "a\\ud800", "text": "t"}\n', "no valid id"),
        (b'{"id": 1, "error": "x"}\n', "its error is not an object"),
        (b'{"id": 1, "note": "x"}\n', 'neither a "text" string nor an "error" object'),
    ],
)
def test_lines_that_are_not_records_are_named(line: bytes, message: str) -> None:
    """parse_record says why a line is not a record."""
    with pytest.raises(ValueError, match=message):
        parse_record(line)


def test_records_parse_back_to_their_id_and_kind() -> None:
    """A success and a failure line parse back to (id, is_failure)."""
    assert parse_record(success_record("x", GENERATION)) == ("x", False)
    assert parse_record(error_record(3, ValueError("v"))) == (3, True)


def test_an_id_set_holds_each_digest_once_and_reports_repeats() -> None:
    """freeze() sorts, drops repeats and returns them; membership is exact on the digests."""
    digest = IdDigester(b"k" * 16)
    ids = IdSet()
    added: list[str | int] = ["a", "b", 1, "a", "1"]
    for batch_id in added:
        ids.add(digest(batch_id))
    assert ids.freeze() == {digest("a")}
    assert len(ids) == 4
    assert digest("b") in ids
    assert digest(1) in ids
    assert digest("1") != digest(1)
    assert digest("c") not in ids
    other = IdSet()
    for batch_id in ["b", "c"]:
        other.add(digest(batch_id))
    other.freeze()
    assert ids.count_in(other) == 1
