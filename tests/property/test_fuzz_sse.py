"""Fuzz the event-stream decoder: any bytes, split anyhow, give events or SSEProtocolError, in bounded memory.

Short in CI; NEBULA_FUZZ_EXAMPLES=20000 runs the long form (see tests/property/_support.py).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nebula_async import NebulaError, TextChunk, _sse
from nebula_async._parse import parse_event
from nebula_async._sse import ServerSentEvent, SSEDecoder, SSEProtocolError
from tests.property._support import fuzz

# Pieces an event stream is made of, and the ways it breaks: bad UTF-8, an encoded surrogate, a BOM,
# every line end, field names with and without their colon, long runs.
_TOKENS = st.sampled_from(
    [
        b"data:", b"data: ", b"data", b"event: ", b"event: error", b"id: ", b"id: \x00", b"retry: 10",
        b":", b": keep-alive", b"\n", b"\r", b"\r\n", b"\n\n", b"\xef\xbb\xbf", b"\xff", b"\xc3",
        b"\xed\xa0\x80", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"x", b"x" * 40, b"[DONE]",
        b'{"text": "a"}', b'{"text": "\\ud800"}', b'{"error": {"code": "server_error"}}',
        b'{"text": "b", "finish_reason": "stop", "usage": {"prompt_tokens": 1}}', b"[" * 50,
    ]
)  # fmt: skip
_STREAMS = st.one_of(st.binary(max_size=300), st.lists(_TOKENS, max_size=60).map(b"".join))


@st.composite
def _split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


_SPLIT_STREAMS = _STREAMS.flatmap(lambda data: st.tuples(st.just(data), _split(data)))


def _decode(chunks: list[bytes]) -> tuple[list[ServerSentEvent], bool]:
    """Return the events of ``chunks`` and whether the decoder refused them."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events.extend(decoder.feed(chunk))
    except SSEProtocolError:
        return events, True
    return events, False


@fuzz(100)
@given(_SPLIT_STREAMS)
def test_fuzz_any_bytes_give_events_or_a_protocol_error(case: tuple[bytes, list[bytes]]) -> None:
    """Whatever the bytes and reads, the decoder gives the same events as in one read, or refuses them."""
    data, chunks = case
    whole, whole_refused = _decode([data])
    split, split_refused = _decode(chunks)
    assert split_refused == whole_refused
    if not whole_refused:
        assert split == whole
    for event in split:
        event.data.encode("utf-8")  # every event is text: decoded strictly


@fuzz(100)
@given(_SPLIT_STREAMS)
def test_fuzz_events_parse_into_chunks_or_api_errors(case: tuple[bytes, list[bytes]]) -> None:
    """Every event's data parses into a chunk of text, or raises one of the SDK's errors."""
    for event in _decode(case[1])[0]:
        try:
            chunk = parse_event(event.data, {})
        except NebulaError as err:
            error: NebulaError | None = err
        else:
            error = None
            assert isinstance(chunk, TextChunk)
            chunk.text.encode("utf-8")
        assert error is None or len(str(error)) < 2000


_DATA_LINE = b"data: " + b"y" * 30 + b"\n"
# Runs of data lines too: two of them, with no blank line between, pass the (lowered) event cap.
_LONG_LINES = st.lists(
    st.sampled_from(
        [_DATA_LINE, _DATA_LINE * 5, b"data:" + b"z" * 70, b"\n", b"\r\n", b": c\n", b"x", b"\r"]
    ),
    max_size=40,
).map(b"".join)


@fuzz(100)
@given(_LONG_LINES.flatmap(lambda data: _split(data)), st.sampled_from([64, 1024]))
def test_fuzz_the_decoder_never_holds_more_than_its_caps(chunks: list[bytes], line_cap: int) -> None:
    """After every read, the partial line and the pending event are within their caps (lowered here)."""
    # A line cap above the event cap too: a read shorter than the line cap takes the fast path.
    with pytest.MonkeyPatch.context() as patch:  # per example: a fixture would span them all
        patch.setattr(_sse, "MAX_LINE_BYTES", line_cap)
        patch.setattr(_sse, "MAX_EVENT_BYTES", 256)
        decoder = SSEDecoder()
        refused = ""
        for chunk in chunks:
            try:
                events = decoder.feed(chunk)
            except SSEProtocolError as exc:
                refused = str(exc)
                break
            assert all(len(event.data) <= 256 for event in events)
            assert sum(map(len, decoder._partial)) <= line_cap
            assert sum(len(line) + 1 for line in decoder._data) <= 256
    assert not refused or "longer than" in refused
