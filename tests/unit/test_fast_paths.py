"""The hot paths give what the general paths give: orjson or not, fast path or converter."""

from __future__ import annotations

import json

import pytest

from nebula_async import ServerError, TextChunk, Usage, _parse
from nebula_async._errors import APIError
from nebula_async._models import structure_chunk
from nebula_async._sse import SSEDecoder

HEADERS = {"x-request-id": "req_1"}

# Documents where orjson and the stdlib disagree, or which take the converter's path.
DOCUMENTS = [
    '{"text": "a", "finish_reason": null}',
    '{"text": "\\ud800", "finish_reason": null}',  # a lone surrogate escape: json accepts, answers refuse
    '{"text": "a", "finish_reason": "stop", "n": 123456789012345678901234567890}',  # a big integer
    '{"text": "a", "finish_reason": NaN}',
    '{"text": 1}',
    '{"finish_reason": "stop"}',
    '{"text": "a", "finish_reason": 5}',
    '{"text": "a", "status": "success"}',
    '{"error": {"code": "rate_limit_exceeded", "message": "slow down"}}',
    '{"status": "error", "error": {"code": "server_error", "message": "x"}}',
    "[1, 2]",
    "not json",
    '{"text": "a", "text": "b"}',  # a repeated key: the last one wins in both
]


@pytest.fixture(params=["orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with orjson (when installed) and with the stdlib's json."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
    else:
        monkeypatch.setattr(_parse, "_fast_loads", None)
    return str(request.param)


def _outcome(document: str) -> object:
    try:
        return _parse.parse_event(document, HEADERS)
    except APIError as exc:
        return type(exc), str(exc)


def _general_outcome(document: str, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patch:
        patch.setattr(_parse, "_fast_loads", None)
        try:
            payload = _parse.loads_text(document)  # json.loads, refusing what is not text
        except ValueError:
            return _outcome(document)
        # The converter's path alone: what the fast path must agree with.
        try:
            if not isinstance(payload, dict):
                raise _parse._malformed(
                    200, HEADERS, f"a stream event is not a JSON object: {document[:200]!r}"
                )
            if isinstance(payload.get("error"), dict) or payload.get("status") == "error":
                raise _parse._error(200, payload, HEADERS, size=len(document))
            return structure_chunk(payload)
        except APIError as exc:
            return type(exc), str(exc)
        except Exception as exc:  # cattrs' errors: the fast path must then raise ServerError too
            return ServerError, type(exc).__name__


@pytest.mark.parametrize("document", DOCUMENTS)
def test_loads_decodes_exactly_what_json_loads_does(decoder: str, document: str) -> None:
    """loads() returns what json.loads returns, and raises ValueError exactly when it does."""
    try:
        expected = json.loads(document)
    except ValueError:
        with pytest.raises(ValueError, match=r"Expecting|Extra data"):
            _parse.loads(document)
        return
    got = _parse.loads(document)
    if decoder == "orjson" and "12345678901234567890" in document:
        expected["n"] = float(expected["n"])  # orjson's one documented difference: integers past 64 bits
    assert json.dumps(got, sort_keys=True, default=str) == json.dumps(expected, sort_keys=True, default=str)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_parse_event_agrees_with_the_converter(
    decoder: str, document: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """parse_event gives the converter's chunk, or an error of the same class, for every document."""
    got = _outcome(document)
    expected = _general_outcome(document, monkeypatch)
    if isinstance(expected, tuple) and expected[0] is ServerError and not isinstance(got, TextChunk):
        assert isinstance(got, tuple)
        assert got[0] is ServerError  # the wording comes from cattrs, the class must match
    else:
        assert got == expected


USAGE = '{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}'
ENVELOPES = [
    (f'{{"status": "success", "data": {{"text": "hi", "usage": {USAGE}}}}}', ("hi", Usage(1, 2, 3))),
    ('{"status": "success", "data": {"text": "hi", "usage": {"prompt_tokens": true, '
     '"completion_tokens": 2, "total_tokens": 3}}}', ServerError),
    ('{"status": "success", "data": {"text": "hi", "usage": {"prompt_tokens": 1.0, '
     '"completion_tokens": 2, "total_tokens": 3}}}', ServerError),
    ('{"status": "success", "data": {"text": null, "usage": {"prompt_tokens": 1, '
     '"completion_tokens": 2, "total_tokens": 3}}}', ServerError),
    ('{"status": "success", "data": {"text": "hi"}}', ServerError),
    ('{"status": "success", "data": []}', ServerError),
    ('{"status": "success"}', ServerError),
    ('{"status": "nope", "data": {"text": "hi"}}', ServerError),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), ENVELOPES)
def test_parse_generation_fast_path_checks_like_the_converter(
    decoder: str, raw: str, expected: object
) -> None:
    """A well-formed envelope gives text and usage; any field of the wrong type is a ServerError."""
    if isinstance(expected, tuple):
        assert _parse.parse_generation(200, raw.encode(), HEADERS) == expected
    else:
        with pytest.raises(ServerError, match=r"malformed|unexpected"):
            _parse.parse_generation(200, raw.encode(), HEADERS)


def test_parse_generation_takes_the_fast_path_only_for_200() -> None:
    """A success envelope with another status is not a success (the status line wins)."""
    raw = f'{{"status": "success", "data": {{"text": "hi", "usage": {USAGE}}}}}'.encode()
    with pytest.raises(ServerError):
        _parse.parse_generation(500, raw, HEADERS)


STREAM = (
    b": keep-alive\n"
    b"event: message\n"
    b"id: 7\n"
    b"retry: 1500\n"
    b'data: {"text": "a"}\n'
    b"data\n"
    b"\n"
    b"data:no space\n\n"
    b"\n\n"
    b"unknown: field\n"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
    b": \xff not UTF-8, but a comment\n"
    b"data: last\n\n"
)


def _decode(chunks: list[bytes], *, general: bool) -> list[object]:
    decoder = SSEDecoder()
    feed = decoder._feed_lines if general else decoder.feed
    return [event for chunk in chunks for event in feed(chunk)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 64, len(STREAM)])
def test_the_lf_fast_path_gives_the_general_paths_events(size: int) -> None:
    """Split anywhere, LF-only streams decode to the same events, ids and retry as the line-by-line path."""
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    fast = _decode(chunks, general=False)
    assert fast == _decode(chunks, general=True)
    assert [e.data for e in fast] == ['{"text": "a"}\n', "no space", "été", "last"]  # type: ignore[attr-defined]
