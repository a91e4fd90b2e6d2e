"""Property tests for SSEDecoder: any split of a valid event stream into reads gives the same events."""

from __future__ import annotations

import itertools
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_async._sse import ServerSentEvent, SSEDecoder

LINE_ENDS = (b"\n", b"\r\n", b"\r")

# Text that never holds an SSE line end. Besides ASCII it mixes in multi-byte UTF-8 (2, 3 and 4
# bytes), NUL, and the characters str.splitlines (not bytes.splitlines) treats as line ends.
_line_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\r\n"),
        st.sampled_from(["é", "€", "中", "😀", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", " ", ":"]),
    ),
    max_size=12,
)


class Event(NamedTuple):
    """One generated event: its data lines, optional fields, and the comments and noise around them."""

    data: list[str]
    event: str | None
    id: str | None
    retry: int | None
    extra: list[str]  # comments and unknown fields: each must be ignored


@st.composite
def _an_event(draw: st.DrawFn) -> Event:
    data = draw(st.lists(_line_text, min_size=1, max_size=4))
    event = draw(st.none() | _line_text)  # "" means the default type, "message"
    ident = draw(st.none() | _line_text.filter(lambda s: "\x00" not in s))
    retry = draw(st.none() | st.integers(min_value=0, max_value=10**12))
    comments = draw(st.lists(_line_text.map(lambda s: ":" + s), max_size=2))
    unknown = draw(
        st.lists(st.sampled_from(["foo: bar", "Data: x", "data ", "eventx: y", "ID: 1"]), max_size=2)
    )
    return Event(data, event, ident, retry, comments + unknown)


def _field_lines(draw: st.DrawFn, ev: Event) -> list[str]:
    """Return the event's lines (without the blank line that ends it), in a drawn order."""
    lines = []
    for value in ev.data:
        # "data:" without a space is only the same field when the value does not start with one.
        lines.append("data: " + value if value[:1] == " " or draw(st.booleans()) else "data:" + value)
    if ev.event is not None:
        lines.append("event: " + ev.event)
    if ev.id is not None:
        lines.append("id: " + ev.id)
    if ev.retry is not None:
        lines.append(f"retry: {ev.retry}")
    # Interleave comments and unknown fields anywhere, keeping the data lines' order.
    for extra in ev.extra:
        lines.insert(draw(st.integers(0, len(lines))), extra)
    return lines


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """Draw an encoded event stream, each line with its own line end, and the events it must give."""
    events = draw(st.lists(_an_event(), min_size=1, max_size=5))
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(": leading keep-alive")
    expected = []
    last_id: str | None = None
    last_retry: int | None = None
    for ev in events:
        lines.extend(_field_lines(draw, ev))
        lines.append("")  # the blank line dispatches the event
        if draw(st.booleans()):
            lines.append("")  # an extra blank line dispatches nothing
        last_id = ev.id if ev.id is not None else last_id
        last_retry = ev.retry if ev.retry is not None else last_retry
        expected.append(ServerSentEvent("\n".join(ev.data), ev.event or "message", last_id, last_retry))
    out = bytearray()
    previous_end = b""
    for line in lines:
        end = draw(st.sampled_from(LINE_ENDS))
        if previous_end == b"\r" and line == "" and end == b"\n":
            end = b"\r\n"  # CR then a bare LF would be one CRLF line end, not a blank line
        out += line.encode() + end
        previous_end = end
    return bytes(out), expected


@st.composite
def _split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Cut ``data`` into non-empty reads at drawn points."""
    if len(data) < 2:
        return [data]
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=min(20, len(data) - 1))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _feed_all(reads: list[bytes]) -> tuple[list[ServerSentEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for read in reads:
        events.extend(decoder.feed(read))
    return events, decoder


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_gives_the_expected_events(data: st.DataObject) -> None:
    """A stream split at arbitrary points gives the same events as fed whole, and the expected ones."""
    raw, expected = data.draw(_streams())
    reads = data.draw(_split(raw))
    assert b"".join(reads) == raw
    whole, whole_decoder = _feed_all([raw])
    split, split_decoder = _feed_all(reads)
    assert whole == expected
    assert split == expected
    assert not whole_decoder.pending()
    assert not split_decoder.pending()


@settings(max_examples=50, deadline=None)
@given(_streams())
def test_one_byte_reads_give_the_expected_events(stream: tuple[bytes, list[ServerSentEvent]]) -> None:
    """One-byte reads, splitting every multi-byte character and CRLF, give the expected events."""
    raw, expected = stream
    events, decoder = _feed_all([raw[i : i + 1] for i in range(len(raw))])
    assert events == expected
    assert not decoder.pending()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_stream_cut_before_its_last_blank_line_is_pending(data: st.DataObject) -> None:
    """A stream cut before its last blank line gives every earlier event and reports pending()."""
    raw, expected = data.draw(_streams())
    # Drop the final blank line(s) and the end of the last data line: the event can't be complete.
    cut = raw.rstrip(b"\r\n")
    reads = data.draw(_split(cut))
    events, decoder = _feed_all(reads)
    assert events == expected[:-1]
    assert decoder.pending()
