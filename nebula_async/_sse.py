"""A pure server-sent events decoder: bytes in, events out (WHATWG HTML "event stream" rules)."""

from __future__ import annotations

import functools
from typing import NamedTuple

__all__ = ["MAX_EVENT_BYTES", "MAX_LINE_BYTES", "SSEDecoder", "SSEProtocolError", "ServerSentEvent"]

# One event's line never comes near this; a server that never sends a line end must not make us
# buffer without bound.
MAX_LINE_BYTES = 4 * 1024 * 1024
# Nor does one event's data, its lines counted with their line ends (in characters, which are at most
# their UTF-8 bytes): a server that never sends the blank line ending an event must not either.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SSEProtocolError(ValueError):
    """The bytes are not a valid event stream (a line or an event too long, or not UTF-8)."""


class ServerSentEvent(NamedTuple):
    """One dispatched event. ``data`` has its lines joined by ``\\n``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


# tuple.__new__ bound to the class, all in C: cheaper than the generated keyword constructor.
_make_event = functools.partial(tuple.__new__, ServerSentEvent)


class SSEDecoder:
    """Turn the bytes of an event stream, split anyhow into chunks, into events.

    Lines may end in LF, CRLF or CR, and a CRLF may be split across two chunks. Each line is
    decoded as UTF-8 once whole, so a character split across chunks is fine. Comments and unknown
    fields are ignored; an event with no ``data`` is not dispatched.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_size",
        "_event",
        "_last_id",
        "_partial",
        "_partial_len",
        "_retry",
        "_skip_lf",
    )

    def __init__(self) -> None:
        # The start of a line whose end has not arrived yet, as parts: joined once the end comes,
        # so a long line sent in many reads costs linear time, not quadratic.
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next one belongs to it
        self._at_start = True  # a UTF-8 byte order mark may open the stream, and is dropped
        self._data: list[str] = []
        self._data_size = 0  # of _data's lines, each counted with a line end: see MAX_EVENT_BYTES
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume ``chunk`` and return the events it completes, in order."""
        if not chunk:
            return []
        if self._skip_lf or self._at_start or b"\r" in chunk:
            return self._feed_lines(chunk)
        # The usual case, LF line ends only: the whole lines of a read are decoded in one go (an LF
        # never sits inside a UTF-8 character) and walked as str, not one bytes line at a time.
        end = chunk.rfind(b"\n")
        if end < 0:
            self._keep_partial(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            end += self._partial_len
            self._partial.clear()
            self._partial_len = 0
        events = self._feed_whole_lines(chunk[: end + 1])
        self._keep_partial(chunk[end + 1 :])  # after: the line-by-line path would read it first
        return events

    def _feed_whole_lines(self, lines: bytes) -> list[ServerSentEvent]:
        """Decode ``lines`` (LF-ended, nothing partial before them) at once, and walk them as str."""
        # Only then can a line be too long, or the event reach its cap: each data line adds at most
        # its bytes to the event. The line-by-line path counts exactly, so the caps hold at any split.
        if len(lines) > MAX_LINE_BYTES or self._data_size + len(lines) > MAX_EVENT_BYTES:
            return self._feed_lines(lines)
        try:
            text = lines[:-1].decode("utf-8")
        except UnicodeDecodeError:  # the line-by-line path finds the line at fault (it may be a comment)
            return self._feed_lines(lines)
        events: list[ServerSentEvent] = []
        append = events.append
        data = started = self._data
        before = len(data)
        for line in text.split("\n"):
            if line.startswith("data:"):
                data.append(line[6:] if line[5:6] == " " else line[5:])
            elif not line:
                if data:  # _dispatch(), inlined: this runs once per event
                    joined = data[0] if len(data) == 1 else "\n".join(data)
                    append(_make_event((joined, self._event or "message", self._last_id, self._retry)))
                    data = self._data = []
                self._event = ""
            elif line == "data":  # here, not in _field, which would count its size a second time
                data.append("")
            elif line[0] != ":":
                self._field(line)
        if not data:
            self._data_size = 0
        elif data is started:  # the event begun in an earlier read goes on: count what this one added
            self._data_size += sum(map(len, data[before:])) + len(data) - before
        else:
            self._data_size = sum(map(len, data)) + len(data)
        return events

    def _feed_lines(self, chunk: bytes) -> list[ServerSentEvent]:
        """The general path: any line ends, a BOM, and one line decoded at a time."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._at_start:
            chunk = b"".join(self._partial) + chunk
            self._partial.clear()
            self._partial_len = 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._keep_partial(chunk)  # maybe a BOM split across reads: wait for more
                return []
            self._at_start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if b"\n" not in chunk and b"\r" not in chunk:
            self._keep_partial(chunk)
            return []
        if self._partial:
            chunk = b"".join(self._partial) + chunk
            self._partial.clear()
            self._partial_len = 0
        # bytes.splitlines splits on exactly LF, CRLF and CR: the three SSE line ends.
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            self._keep_partial(last)
            lines.pop()
        elif last[-1:] == b"\r":
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if len(line) > MAX_LINE_BYTES:  # checked here too: the limit must not depend on the split
                raise SSEProtocolError(f"event stream line longer than {MAX_LINE_BYTES} bytes")
            if not line:
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._event = ""
                continue
            self._process(line)
        return events

    def _keep_partial(self, data: bytes) -> None:
        if not data:
            return
        self._partial_len += len(data)
        if self._partial_len > MAX_LINE_BYTES:
            raise SSEProtocolError(f"event stream line longer than {MAX_LINE_BYTES} bytes")
        self._partial.append(data)

    def _process(self, line: bytes) -> None:
        if line[:1] == b":":  # a comment, often a keep-alive
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEProtocolError(f"event stream line is not valid UTF-8: {exc.reason}") from exc
        self._field(text)

    def _field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > MAX_EVENT_BYTES:
                raise SSEProtocolError(f"event longer than {MAX_EVENT_BYTES} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # any other field is ignored, as the spec says

    def _dispatch(self) -> ServerSentEvent:
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        event = _make_event((data, self._event or "message", self._last_id, self._retry))
        self._data = []
        self._data_size = 0
        self._event = ""
        return event

    def pending(self) -> bool:
        """Say whether a partial line or an undispatched event is buffered (a truncated stream)."""
        return bool(self._partial) or bool(self._data)
