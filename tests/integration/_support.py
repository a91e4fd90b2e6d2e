"""Helpers of the integration tests: handlers for the hand-rolled aiohttp server, a raw TCP server, TLS.

Most tests run against the ``fake`` fixture (tests/integration/conftest.py): a FakeNebulaServer,
which speaks the API's protocol and scripts its documented faults. The hand-rolled ``server``
fixture (tests/conftest.py) serves answers the fake won't give: malformed or unusual SSE, a 200 that
isn't the envelope, a stall with the body left open. The ``RawServer`` here writes bytes by hand,
for what aiohttp.web will not do: a response cut at an exact byte, a body delimited by closing the
connection, a malformed status line, a TLS handshake with a throwaway certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

from nebula_async import AsyncNebulaClient, GenerateRequest, TextStream
from tests.conftest import Handler, LocalServer
from tests.helpers import FAST_RETRY, SECRET_KEY, sse

# What the ``fake`` fixture answers the prompt "p" (four chunks when streamed), as ``server`` does by default.
HELLO = "Hello, World!"

STALL = 5.0  # a handler stalls this long; it is cancelled as soon as its client disconnects


def make_client(base_url: str, **kwargs: Any) -> AsyncNebulaClient:
    """Return a client for a local server at ``base_url``: the secret key, FAST_RETRY unless overridden."""
    kwargs.setdefault("retry", FAST_RETRY)
    return AsyncNebulaClient(SECRET_KEY, base_url=base_url, **kwargs)


def echo(request: GenerateRequest) -> str:
    """Reply with the prompt: a ``fake.reply`` that tells each request's answer apart."""
    return f"echo:{request.prompt}"


def chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    """Return one documented stream event payload."""
    return {"text": text, "finish_reason": finish_reason}


def events(*texts: str, finish_reason: str = "stop") -> bytes:
    """Encode ``texts`` as SSE events, the last one carrying ``finish_reason``."""
    last = len(texts) - 1
    return sse(*(chunk(t, finish_reason if i == last else None) for i, t in enumerate(texts)))


async def open_stream(request: web.Request, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Send the headers of a 200 event stream and return the response to write events to."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
    await response.prepare(request)
    return response


def stream_handler(*payloads: bytes, headers: Mapping[str, str] | None = None, delay: float = 0.0) -> Handler:
    """Return a handler that writes each of ``payloads`` as one write (``delay`` s apart), then ends."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request, headers)
        for i, payload in enumerate(payloads):
            if i and delay:
                await asyncio.sleep(delay)
            await response.write(payload)
        await response.write_eof()
        return response

    return handler


def json_handler(body: object, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    """Return a handler that answers every request with ``body`` as JSON."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handler


def sequence_handler(*handlers: Handler) -> Handler:
    """Return a handler that runs ``handlers`` in turn, one per request, repeating the last."""
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        current = handlers[min(calls, len(handlers) - 1)]
        calls += 1
        return await current(request)

    return handler


def track_peers(server: LocalServer, inner: Handler) -> list[object]:
    """Make ``server`` run ``inner``, recording each request's client (host, port): one per TCP connection."""
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await inner(request)

    server.handler = handler
    return peers


@contextlib.asynccontextmanager
async def catch_all(handler: Handler) -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """Serve ``handler`` for every method and path on 127.0.0.1; yield the base URL and a log of requests."""
    seen: list[tuple[str, str]] = []

    async def route(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    finally:
        await runner.cleanup()


def free_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``predicate`` every few milliseconds; fail the test if it stays false for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


# --- a raw HTTP/1.1 server -------------------------------------------------------------------------


def http_head(status: int = 200, headers: Mapping[str, str] | None = None, reason: str = "OK") -> bytes:
    """Return a response's status line and headers, ending with the blank line."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# An event stream whose body runs until the server closes the connection (no framing at all).
SSE_HEAD_UNTIL_CLOSE = http_head(
    200, {"Content-Type": "text/event-stream", "Connection": "close", "x-request-id": "req_raw"}
)
# An event stream in chunked transfer encoding: closing before the last chunk is a broken body.
SSE_HEAD_CHUNKED = http_head(
    200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", "x-request-id": "req_raw"}
)


def http_chunk(data: bytes) -> bytes:
    """Frame ``data`` as one chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class RawConnection:
    """One accepted TCP connection of a RawServer."""

    def __init__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = index  # 0 for the first connection the server accepted

    async def read_request(self) -> bytes | None:
        """Read one request's head and body; return the body, or None if the client closed first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length)
        self.server.requests.append(json.loads(body) if body else None)
        return body

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Write ``parts`` one by one, flushing each, ``pause`` seconds apart."""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    def abort(self) -> None:
        """Drop the connection at once (a reset, not an orderly close)."""
        self.writer.transport.abort()


RawHandler = Callable[[RawConnection], Awaitable[None]]


class RawServer:
    """An asyncio TCP server on 127.0.0.1 that runs ``handler`` for each connection it accepts."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[Any] = []  # decoded JSON body of every request read
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        connection = RawConnection(self, reader, writer, self.connections)
        self.connections += 1
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(connection)
        finally:
            writer.close()
            self._tasks.discard(task)


async def collect(
    stream: TextStream,
    into: list[str] | None = None,
    *,
    enter: bool = False,
    on_chunk: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Read ``stream`` to its end (in ``async with`` if ``enter``), appending each chunk's text to ``into``.

    ``into`` keeps what was delivered when reading raises; ``on_chunk`` sees the list after each chunk.
    """
    out: list[str] = [] if into is None else into
    if enter:
        async with stream:
            await collect(stream, out, on_chunk=on_chunk)
        return out
    async for piece in stream:
        out.append(piece.text)
        if on_chunk is not None:
            on_chunk(out)
    return out


async def break_after(stream: TextStream, count: int) -> list[str]:
    """Iterate in a plain ``async for``, break after ``count`` chunks; the stream is dropped on return."""
    received: list[str] = []
    async for piece in stream:
        received.append(piece.text)
        if len(received) == count:
            break
    return received


async def generate_once(client: AsyncNebulaClient) -> object:
    """Make one non-streaming call; a CALLS case."""
    return await client.generate_text(model="m", prompt="p")


async def stream_once(client: AsyncNebulaClient) -> object:
    """Read one stream to its end; a CALLS case."""
    return await collect(client.stream_text(model="m", prompt="p"))


Call = Callable[[AsyncNebulaClient], Awaitable[object]]  # one of the CALLS cases

# Runs a test once per path that sends a request: a plain call and a stream.
CALLS = pytest.mark.parametrize("call", [generate_once, stream_once], ids=["generate", "stream"])


# --- TLS: a throwaway self-signed certificate for 127.0.0.1, made at test time (no key file is committed)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key into ``directory``; skip without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl, "req", "-x509", "-nodes", "-days", "1",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",  # an EC key: made in milliseconds
        "-keyout", str(key), "-out", str(cert),
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"openssl could not make a test certificate: {exc}")
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return a server-side TLS context presenting ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def trusting_context(cert: Path) -> ssl.SSLContext:
    """Return a client-side TLS context that trusts ``cert`` (and nothing else)."""
    return ssl.create_default_context(cafile=str(cert))
