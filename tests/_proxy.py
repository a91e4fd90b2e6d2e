"""A forward proxy on 127.0.0.1 for both clients' proxy tests: CONNECT tunnels and absolute-form requests.

It pipes bytes both ways as they come, so a stream through it stays incremental, and records the
first request line and ``Proxy-Authorization`` of each connection. It can require credentials, or
answer every connection with an error status instead of passing it on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_REASONS = {403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway", 503: "Unavailable"}


class ForwardProxy:
    """An HTTP proxy: ``async with ForwardProxy() as proxy`` in a test's loop, or ``with proxy.in_thread()``.

    ``credentials=(user, password)`` answers 407 to a connection without them; ``answer=502`` (or any
    status) answers every connection with it. ``seen`` holds each connection's request line, e.g.
    ``"CONNECT 127.0.0.1:4430"`` or ``"POST http://127.0.0.1:8080/v1/text/generate"``;
    ``authorizations`` its ``Proxy-Authorization`` header (None without one).
    """

    def __init__(self, *, credentials: tuple[str, str] | None = None, answer: int | None = None) -> None:
        self.credentials = credentials
        self.answer = answer
        self.seen: list[str] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """The proxy's URL, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with ``user:password@`` in it."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Cut every connection, so that each handler's pipes see the end and it returns; cancelling the
        # handlers instead makes 3.11's asyncio log a CancelledError from start_server's done callback.
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[ForwardProxy]:
        """Run the proxy on an event loop in a thread of its own, for the sync tests."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="test-proxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result(10)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.__aexit__(None, None, None), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def _expected_authorization(self) -> str | None:
        if self.credentials is None:
            return None
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        return f"Basic {token}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self._handle(reader, writer)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        fields = (line.partition(":") for line in lines if line)
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        authorization = headers.get("proxy-authorization")
        self.seen.append(f"{method} {target}")
        self.authorizations.append(authorization)
        status = self.answer
        if self.credentials is not None and authorization != self._expected_authorization():
            status = status or 407
        if status is not None:
            extra = 'Proxy-Authenticate: Basic realm="test"\r\n' if status == 407 else ""
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n{extra}"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # absolute form: pass the request on in origin form, without the proxy's own headers
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [h for h in lines if h and h.partition(":")[0].strip().lower() not in _HOP_HEADERS]
            up_writer.write("\r\n".join([f"{method} {path} {version}", *kept, "", ""]).encode())
        self._writers.append(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


_HOP_HEADERS = {"proxy-authorization", "proxy-connection"}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes as they arrive until ``reader`` ends, then close ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
