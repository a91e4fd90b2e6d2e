"""A pure server-sent events decoder: bytes in, events out (WHATWG HTML "event stream" rules)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_LINE_BYTES", "SSEDecoder", "SSEProtocolError", "ServerSentEvent"]

# One event's line never comes near this; a server that never sends a line end must not make us
# buffer without bound.
MAX_LINE_BYTES = 4 * 1024 * 1024


class SSEProtocolError(ValueError):
    """The bytes are not a valid event stream (a line too long, or not UTF-8)."""


class ServerSentEvent(NamedTuple):
    """One dispatched event. ``data`` has its lines joined by ``\\n``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn the bytes of an event stream, split anyhow into chunks, into events.

    Lines may end in LF, CRLF or CR, and a CRLF may be split across two chunks. Each line is
    decoded as UTF-8 once whole, so a character split across chunks is fine. Comments and unknown
    fields are ignored; an event with no ``data`` is not dispatched.
    """

    __slots__ = ("_buffer", "_data", "_event", "_last_id", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""  # the start of a line whose end has not arrived yet
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next one belongs to it
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume ``chunk`` and return the events it completes, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._buffer:
            chunk = self._buffer + chunk
            self._buffer = b""
        if not chunk:
            return []
        # bytes.splitlines splits on exactly LF, CRLF and CR: the three SSE line ends.
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            if len(last) > MAX_LINE_BYTES:
                raise SSEProtocolError(f"event stream line longer than {MAX_LINE_BYTES} bytes")
            self._buffer = last
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

    def _process(self, line: bytes) -> None:
        if line[:1] == b":":  # a comment, often a keep-alive
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEProtocolError(f"event stream line is not valid UTF-8: {exc.reason}") from exc
        name, colon, value = text.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
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
        data = "\n".join(self._data)
        event = ServerSentEvent(data, self._event or "message", self._last_id, self._retry)
        self._data = []
        self._event = ""
        return event

    def pending(self) -> bool:
        """Say whether a partial line or an undispatched event is buffered (a truncated stream)."""
        return bool(self._buffer) or bool(self._data)
