"""Example-based tests for SSEDecoder, the pure event-stream parser."""

from __future__ import annotations

import json
import time

import pytest

from nebula_async import _sse
from nebula_async._sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, ServerSentEvent, SSEDecoder, SSEProtocolError

BOM = b"\xef\xbb\xbf"


def feed(*chunks: bytes) -> list[ServerSentEvent]:
    """Feed ``chunks`` to one new decoder and return every event, in order."""
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_data_with_and_without_the_space() -> None:
    """One space after the colon is dropped, no space is fine, and a second space is kept."""
    assert feed(b"data: a\n\ndata:b\n\ndata:  c\n\n") == [
        ServerSentEvent("a"),
        ServerSentEvent("b"),
        ServerSentEvent(" c"),
    ]


def test_several_data_lines_are_joined_by_newline() -> None:
    """Three data lines of one event, one of them empty, give their values joined by LF."""
    assert feed(b"data: one\ndata:\ndata: three\n\n") == [ServerSentEvent("one\n\nthree")]


def test_a_data_line_without_colon_is_an_empty_value() -> None:
    """A line that is just the field name 'data' adds an empty data line, as the spec says."""
    assert feed(b"data\ndata: x\n\n") == [ServerSentEvent("\nx")]


def test_comments_are_ignored() -> None:
    """Comment lines, before and inside an event, change nothing and dispatch nothing."""
    assert feed(b": keep-alive\n\n:\ndata: a\n: inside\ndata: b\n\n: trailing\n\n") == [
        ServerSentEvent("a\nb")
    ]


def test_unknown_fields_are_ignored() -> None:
    """Unknown and wrongly-cased field names are ignored, not taken as data."""
    assert feed(b"foo: bar\nDATA: no\nData: no\ndata: yes\nx-extra\n\n") == [ServerSentEvent("yes")]


def test_an_event_with_no_data_is_not_dispatched() -> None:
    """An event with only event and id fields is not dispatched, and its type does not leak to the next."""
    decoder = SSEDecoder()
    assert decoder.feed(b"event: ping\nid: 7\n\n") == []
    assert not decoder.pending()
    # The id sticks (it is the last event id), but the type was reset by the blank line.
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent("x", "message", "7")]


def test_event_field_sets_the_type_of_one_event() -> None:
    """An event field names only the event it belongs to; the next one is a 'message' again."""
    assert feed(b"event: error\ndata: e\n\ndata: m\n\n") == [
        ServerSentEvent("e", "error"),
        ServerSentEvent("m", "message"),
    ]


def test_id_field_persists_and_ignores_nul() -> None:
    """The last id applies to later events; an id holding NUL is ignored; an empty id resets it to ''."""
    assert feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x003\ndata: c\n\nid\ndata: d\n\n") == [
        ServerSentEvent("a", id="1"),
        ServerSentEvent("b", id="1"),
        ServerSentEvent("c", id="1"),
        ServerSentEvent("d", id=""),
    ]


def test_retry_field_takes_only_ascii_digits() -> None:
    """retry sets an int from ASCII digits; other values (signs, spaces, non-ASCII digits) are ignored."""
    assert feed(
        b"retry: 1500\ndata: a\n\nretry: -1\ndata: b\n\nretry: 1 0\ndata: c\n\n"
        b"retry: \xd9\xa3\ndata: d\n\nretry:250\ndata: e\n\n"
    ) == [
        ServerSentEvent("a", retry=1500),
        ServerSentEvent("b", retry=1500),
        ServerSentEvent("c", retry=1500),
        ServerSentEvent("d", retry=1500),
        ServerSentEvent("e", retry=250),
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_end(end: bytes) -> None:
    """LF, CRLF and CR each end a line and, doubled, an event."""
    assert feed(b"data: a" + end + b"data: b" + end + end + b"data: c" + end + end) == [
        ServerSentEvent("a\nb"),
        ServerSentEvent("c"),
    ]


def test_cr_split_from_lf_across_chunks_is_one_line_end() -> None:
    """A CRLF whose CR ends one read and whose LF opens the next is one line end, not a blank line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a\nb")]
    assert decoder.feed(b"\n") == []  # the LF of that last CRLF, not another blank line
    assert not decoder.pending()


def test_cr_then_lf_of_a_blank_line_in_the_next_chunk() -> None:
    """A read ending in CR followed by a read holding CR LF LF gives one event, the same as fed whole."""
    whole = b"data: a\r\r\n\n"
    assert feed(whole) == [ServerSentEvent("a")]
    assert feed(whole[:8], whole[8:]) == [ServerSentEvent("a")]


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    """An empty read between the CR and the LF of a CRLF does not turn the LF into a blank line."""
    # The same bytes as b"data: a\r\ndata: b\n\n", one event; an empty read must not split it in two.
    assert feed(b"data: a\r", b"", b"\ndata: b\n\n") == [ServerSentEvent("a\nb")]


def test_a_multibyte_character_split_across_chunks() -> None:
    """Two- to four-byte UTF-8 characters cut between reads are decoded once their line is whole."""
    raw = "data: é€😀\n\n".encode()
    for cut in range(len(b"data: "), len(raw)):
        assert feed(raw[:cut], raw[cut:]) == [ServerSentEvent("é€😀")], cut
    assert feed(*(raw[i : i + 1] for i in range(len(raw)))) == [ServerSentEvent("é€😀")]


def test_done_is_an_ordinary_event() -> None:
    """The decoder dispatches 'data: [DONE]' like any event; giving it meaning is the stream's job."""
    assert feed(b'data: {"text": "a"}\n\ndata: [DONE]\n\n') == [
        ServerSentEvent('{"text": "a"}'),
        ServerSentEvent("[DONE]"),
    ]


def test_a_line_over_max_line_bytes_without_end_raises() -> None:
    """A line growing past MAX_LINE_BYTES with no line end raises SSEProtocolError, not endless buffering."""
    decoder = SSEDecoder()
    step = 1024 * 1024
    assert decoder.feed(b"data: " + b"x" * (step - 6)) == []
    for _ in range(MAX_LINE_BYTES // step - 1):
        assert decoder.feed(b"x" * step) == []  # up to exactly MAX_LINE_BYTES: still buffered
    assert decoder.pending()
    with pytest.raises(SSEProtocolError, match="longer than"):
        decoder.feed(b"x")


def test_a_line_of_exactly_max_line_bytes_is_accepted() -> None:
    """A partial line of exactly MAX_LINE_BYTES is still buffered, and completes into an event."""
    decoder = SSEDecoder()
    head = b"data: "
    assert decoder.feed(head + b"x" * (MAX_LINE_BYTES - len(head))) == []
    assert decoder.pending()
    events = decoder.feed(b"\n\n")
    assert len(events) == 1
    assert len(events[0].data) == MAX_LINE_BYTES - len(head)


def test_a_line_over_max_line_bytes_raises_whatever_the_split() -> None:
    """An over-long line raises SSEProtocolError whether its line end comes in the same read or the next."""
    line = b"data: " + b"x" * MAX_LINE_BYTES  # one byte over the limit
    with pytest.raises(SSEProtocolError):
        feed(line, b"\n\n")  # the line end in the next read
    with pytest.raises(SSEProtocolError):
        feed(line + b"\n\n")  # the same bytes in one read


def test_an_event_of_exactly_max_event_bytes_is_accepted_and_one_more_raises() -> None:
    """Data lines totalling MAX_EVENT_BYTES (each counted with its line end) pass; one byte more raises."""
    # Regression: only lines were capped, so endless 1 KB data lines without a blank line were buffered.
    step = 1024 * 1024
    line = b"data:" + b"x" * (step - 1) + b"\n"  # counts step: its data and its line end
    decoder = SSEDecoder()
    for _ in range(MAX_EVENT_BYTES // step):
        assert decoder.feed(line) == []
    events = decoder.feed(b"\n")
    assert len(events) == 1
    assert len(events[0].data) == MAX_EVENT_BYTES - 1  # the joined lines: one newline fewer
    for _ in range(MAX_EVENT_BYTES // step):
        assert decoder.feed(line) == []  # the cap is per event: the count started again
    with pytest.raises(SSEProtocolError, match=f"event longer than {MAX_EVENT_BYTES} bytes"):
        decoder.feed(b"data:\n")


@pytest.mark.parametrize("size", [1, 7, 100, 1000, 4096, 1 << 20])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_the_event_cap_does_not_depend_on_the_split_or_the_line_ends(
    size: int, end: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes raise at the same event, whatever the reads and line ends (cap lowered to 4 KiB)."""
    monkeypatch.setattr(_sse, "MAX_EVENT_BYTES", 4096)
    fits = (b"data:" + b"a" * 1023 + end) * 4 + end  # exactly 4096: delivered
    over = (b"data:" + b"b" * 1023 + end) * 4 + b"data:" + end  # one more: refused
    stream = fits + b"data: small" + end + end + over
    got: list[ServerSentEvent] = []
    with pytest.raises(SSEProtocolError, match="event longer than 4096 bytes"):
        _feed_into(got, [stream[start : start + size] for start in range(0, len(stream), size)])
    # What a read completed before the one that raised was delivered (a read that raises gives none).
    assert [len(e.data) for e in got] == [4095, 5][: len(got)]
    assert feed(fits + end)[0].data == ("a" * 1023 + "\n") * 3 + "a" * 1023


def _feed_into(out: list[ServerSentEvent], chunks: list[bytes]) -> None:
    decoder = SSEDecoder()
    for chunk in chunks:
        out.extend(decoder.feed(chunk))


def test_comments_and_other_fields_do_not_count_toward_the_event_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only data is kept, so only data counts: keep-alive comments in an event's middle are free."""
    monkeypatch.setattr(_sse, "MAX_EVENT_BYTES", 100)
    chunk = b"data: a\n" + b": keep-alive\n" * 50 + b"event: message\n" * 20 + b"id: 1\n\n"
    assert feed(chunk, chunk) == [ServerSentEvent("a", id="1")] * 2


@pytest.mark.parametrize(
    "raw",
    [b"data: \xff\n\n", b"data: \xc3\n\n", b"event: \xed\xa0\x80\ndata: x\n\n", b"\xfe: value\n\n"],
    ids=["invalid-byte", "truncated-sequence", "surrogate", "in-field-name"],
)
def test_invalid_utf8_raises(raw: bytes) -> None:
    """A line that is not valid UTF-8 raises SSEProtocolError, a ValueError."""
    with pytest.raises(SSEProtocolError, match="UTF-8"):
        feed(raw)
    assert issubclass(SSEProtocolError, ValueError)


def test_invalid_utf8_split_across_reads_raises() -> None:
    """A bad byte sequence that only shows once the line is whole still raises SSEProtocolError."""
    with pytest.raises(SSEProtocolError):
        feed(b"data: \xe2\x82", b"\n\n")  # a 3-byte character cut short by the line end


def test_pending_is_true_for_a_truncated_stream() -> None:
    """pending() is true with a partial line or an undispatched event, false once the event is out."""
    decoder = SSEDecoder()
    assert not decoder.pending()
    decoder.feed(b"data: par")
    assert decoder.pending()  # a partial line
    decoder.feed(b"tial\n")
    assert decoder.pending()  # a whole data line, no blank line yet
    assert decoder.feed(b"\n") == [ServerSentEvent("partial")]
    assert not decoder.pending()


def test_a_comment_only_tail_is_not_pending() -> None:
    """A stream that ends with only comments or an empty event after its last event has nothing pending."""
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n: ping\n\nevent: x\n\n")
    assert not decoder.pending()


def _event(text: str, finish_reason: str | None = "stop") -> bytes:
    """Return one documented stream event, framed."""
    return b"data: " + json.dumps({"text": text, "finish_reason": finish_reason}).encode() + b"\n\n"


# Regression (6705a48, "SSE BOM"): a BOM is dropped even when a read boundary cuts it.
@pytest.mark.parametrize("cut", range(1, len(BOM) + 3))
def test_bom_split_anywhere_across_reads_is_dropped(cut: int) -> None:
    """A UTF-8 BOM opening the stream is dropped wherever a read boundary cuts it (or the event after it)."""
    body = BOM + _event("Hi")
    split = feed(body[:cut], body[cut:])
    assert split == feed(_event("Hi"))
    assert [e.data for e in split] == ['{"text": "Hi", "finish_reason": "stop"}']


def test_bom_in_byte_sized_reads_and_after_an_empty_read_is_dropped() -> None:
    """A BOM sent one byte per read, after an empty read, is still recognised and dropped."""
    body = BOM + _event("Hi")
    decoder = SSEDecoder()
    reads = [b"", *(body[i : i + 1] for i in range(len(body)))]
    events = [event for part in reads for event in decoder.feed(part)]
    assert events == feed(_event("Hi"))
    assert not decoder.pending()


def test_bom_is_dropped_only_at_the_start() -> None:
    """Only the stream's first bytes may be a BOM: one later on stays part of the line it opens."""
    events = feed(BOM + _event("a", None), BOM + _event("b"))
    assert [json.loads(e.data)["text"] for e in events] == ["a"]  # "\ufeffdata" is an unknown field


def test_long_line_in_small_reads_is_decoded_in_linear_time() -> None:
    """A 3 MiB line fed in 1 KiB reads decodes in well under a second (quadratic re-joining took seconds)."""
    payload = _event("x" * (3 * 1024 * 1024))
    started = time.perf_counter()
    events = feed(*(payload[i : i + 1024] for i in range(0, len(payload), 1024)))
    elapsed = time.perf_counter() - started
    assert len(events) == 1
    assert len(json.loads(events[0].data)["text"]) == 3 * 1024 * 1024
    assert elapsed < 1.0
