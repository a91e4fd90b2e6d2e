"""A server that costs next to nothing per request: fixed, pre-encoded answers, chosen by model name.

Run as ``python -m benchmarks._server``; it prints ``listening on PORT`` and serves until killed.
It parses just enough HTTP/1.1 (request line, Content-Length, keep-alive) to answer every client
the suite drives, and never decodes a body: the model name is found with one ``bytes.find``.
uvloop is used when installed, so the server stays far from its core's limit.

Models, the same on both paths (``/v1/text/generate``: Nebula's shapes; ``/v1/completions``:
OpenAI's completion shapes):

- ``bench``: a whole answer (JSON envelope, 100 tokens);
- ``bench-sse-100`` / ``bench-sse-10000``: an event stream of 100 or 10,000 events;
- ``bench-slow``: the whole answer, sent ``SLOW_SECONDS`` after the request (holds requests in flight).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
from typing import cast

__all__ = ["SLOW_SECONDS", "expected_text", "nebula_body", "openai_body", "tokens"]

SLOW_SECONDS = 1.0
WORDS = ("Hello", ",", " World", "!", " The", " quick", " brown", " fox", " jumps", " over")


def tokens(count: int) -> list[str]:
    """The ``count`` tokens every answer of that length carries (the same for every client)."""
    return [WORDS[i % len(WORDS)] for i in range(count)]


def expected_text(count: int) -> str:
    """The whole text of an answer of ``count`` tokens: what every client must get back."""
    return "".join(tokens(count))


def nebula_body(events: int | None) -> bytes:
    """Nebula's envelope (``events`` None) or event stream, as json.dumps writes them."""
    if events is None:
        text = expected_text(100)
        usage = {"prompt_tokens": 8, "completion_tokens": 100, "total_tokens": 108}
        return json.dumps({"status": "success", "data": {"text": text, "usage": usage}}).encode()
    parts = [
        "data: " + json.dumps({"text": t, "finish_reason": "stop" if i == events - 1 else None}) + "\n\n"
        for i, t in enumerate(tokens(events))
    ]
    return "".join(parts).encode()


def openai_body(events: int | None) -> bytes:
    """The same text in OpenAI's completion shapes (an object, or chunks then ``[DONE]``)."""
    base = {"id": "cmpl-bench", "object": "text_completion", "created": 1764000000, "model": "bench"}
    if events is None:
        choice = {"text": expected_text(100), "index": 0, "logprobs": None, "finish_reason": "length"}
        usage = {"prompt_tokens": 8, "completion_tokens": 100, "total_tokens": 108}
        return json.dumps({**base, "choices": [choice], "usage": usage}).encode()
    parts = []
    for i, token in enumerate(tokens(events)):
        finish = "length" if i == events - 1 else None
        choice = {"text": token, "index": 0, "logprobs": None, "finish_reason": finish}
        parts.append("data: " + json.dumps({**base, "choices": [choice]}) + "\n\n")
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def _response(body: bytes, content_type: str) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-request-id: req_bench\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _responses() -> dict[tuple[bytes, bytes], bytes]:
    table = {}
    for path, shape in ((b"/v1/text/generate", nebula_body), (b"/v1/completions", openai_body)):
        table[path, b"bench"] = _response(shape(None), "application/json")
        table[path, b"bench-slow"] = table[path, b"bench"]
        for events in (100, 10_000):
            table[path, b"bench-sse-%d" % events] = _response(shape(events), "text/event-stream")
    return table


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')


class _Protocol(asyncio.Protocol):
    """One connection: answers each whole request with its fixed bytes, in order."""

    def __init__(self, table: dict[tuple[bytes, bytes], bytes]) -> None:
        self._table = table
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            match = _CONTENT_LENGTH.search(buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            stop = end + 4 + length
            if len(buffer) < stop:
                break
            self._answer(buffer[: buffer.find(b"\r\n")], buffer[end + 4 : stop])
            buffer = buffer[stop:]
        self._buffer = buffer

    def _answer(self, request_line: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        path = request_line.split(b" ", 2)[1] if request_line.count(b" ") >= 2 else b""
        model = _MODEL.search(body)
        answer = self._table.get((path, model.group(1) if model else b""))
        if answer is None:
            transport.write(_NOT_FOUND)
            transport.close()
        elif model is not None and model.group(1) == b"bench-slow":
            asyncio.get_running_loop().call_later(SLOW_SECONDS, self._write_late, answer)
        else:
            transport.write(answer)

    def _write_late(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def _serve() -> None:
    table = _responses()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(table), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    await server.serve_forever()


def main() -> None:
    """Serve until killed."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 requests in flight need the sockets
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit("usage: python -m benchmarks._server")
    os.environ.pop("PYTHONASYNCIODEBUG", None)
    main()
