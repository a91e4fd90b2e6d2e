"""TextStream: a streamed generation, as an async iterator and async context manager."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._config import RetryPolicy, Timeout
from ._errors import APIConnectionError, APITimeoutError, NebulaError, ServerError
from ._models import TextChunk, Usage
from ._parse import DONE, parse_event, parse_generation
from ._sse import SSEDecoder, SSEProtocolError

if TYPE_CHECKING:
    import aiohttp

    from ._client import AsyncNebulaClient
    from ._http import Transport

__all__ = ["TextStream"]


class TextStream:
    """A streamed generation: iterate it for TextChunk objects.

    Nothing is sent until ``async with`` or the first iteration. Use ``async with`` (or call
    ``aclose()``) when you may stop early: the connection is released at once. A stream that is
    iterated to its end releases it by itself. The stream is retried only before its first chunk
    reaches you, so no text is delivered twice; a stream that failed, was cancelled or was closed
    early raises RuntimeError if used again: start a new one.
    """

    def __init__(self, client: AsyncNebulaClient, body: bytes, policy: RetryPolicy, timeout: Timeout) -> None:
        self._client = client
        self._body = body
        self._policy = policy
        self._timeout = timeout
        self._transport: Transport | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = SSEDecoder()
        self._buffered: deque[TextChunk] = deque()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._request_id: str | None = None
        self._attempts = 0
        self._ended = False  # the final event (or [DONE]) has been read
        self._closed = False
        self._error: NebulaError | None = None  # raised once the chunks read before it are delivered
        self._failure: BaseException | None = None  # what ended the stream early: it can't resume
        self._idle_deadline: float | None = None
        self._usage: Usage | None = None

    @property
    def text(self) -> str:
        """The text of the chunks delivered so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]  # joined once, so reading .text per chunk stays linear
        return self._parts[0] if self._parts else ""

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped (``"stop"``, ``"length"``...), once the last chunk was delivered."""
        return self._finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token counts, once an event carried them (in practice the final one); else None."""
        return self._usage

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` of the response being read, once it arrived."""
        return self._request_id

    @property
    def retries(self) -> int:
        """How many failed attempts came before the one being read."""
        return max(0, self._attempts - 1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ended" if self._ended else "open" if self._response else "new"
        return f"<TextStream {state} request_id={self._request_id!r} chars={len(self.text)}>"

    async def __aenter__(self) -> TextStream:
        await self._advance(read=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> TextChunk:
        chunk = self._next_buffered()
        if chunk is not None:
            return chunk
        if not await self._fill():
            raise StopAsyncIteration
        chunk = self._next_buffered()
        assert chunk is not None  # _fill returned True: something is buffered
        return chunk

    async def next_chunks(self) -> list[TextChunk]:
        """Return the chunks that are read and not yet delivered, reading the network only if there
        are none; an empty list once the stream is over. The sync TextStream's one hop per read."""
        if not self._buffered and not await self._fill():
            return []
        chunks = []
        while (chunk := self._next_buffered()) is not None:
            chunks.append(chunk)
        return chunks

    async def aclose(self) -> None:
        """Release the connection; idempotent. A stream closed before its end cannot be iterated again."""
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ended and not self._buffered and self._error is None:
            self._finish()
        else:
            # Closed before its end: what was read but not delivered is dropped.
            self._buffered.clear()
            self._error = None
            self._discard()

    # The sync TextStream drives these two: one thread hop per network read, not one per chunk.
    def _next_buffered(self) -> TextChunk | None:
        """Deliver the next chunk already read, without waiting, or None."""
        try:
            chunk = self._buffered.popleft()
        except IndexError:  # empty; or emptied by a client.close() from another thread just now
            return None
        self._parts.append(chunk.text)
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        return chunk

    async def _fill(self) -> bool:
        """Read until a chunk is buffered (True) or the stream is over (False)."""
        while not self._buffered:
            if self._error is not None:
                error, self._error = self._error, None
                self._fail(error)
                raise error
            if self._ended:
                self._finish()
                return False
            await self._advance(read=True)
        return True

    async def _advance(self, *, read: bool) -> None:
        """Open the response if needed and, if ``read``, consume one network read; retry while allowed."""
        self._check_usable()
        while True:
            try:
                if self._response is None and not self._ended:
                    await self._open()
                if read and not self._ended:
                    await self._read()
                return
            except NebulaError as err:
                error = err
            except BaseException as exc:  # cancelled, or a bug: never leave the connection checked out
                self._fail(exc)
                raise
            # Outside the except clause, so that a cancellation while we wait marks the stream failed.
            await self._before_retry(error)

    async def _before_retry(self, error: NebulaError) -> None:
        """Wait before the next attempt, or raise ``error`` (or what stops it being retried)."""
        self._discard()
        if self._closed:  # aclose() from another task cut the read short: not a failure to retry
            raise RuntimeError("this stream was closed while it was being read") from error
        try:
            # Once text reached the caller a retry would deliver it twice.
            retry = not self._parts and await self._client._wait_before_retry(
                self._policy, self._attempts, error
            )
        except BaseException as exc:
            self._fail(exc)
            raise
        if not retry:
            self._fail(error)
            raise error
        self._check_usable()  # closed while we slept
        self._buffered.clear()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise RuntimeError(
                f"this stream failed earlier ({type(self._failure).__name__}); "
                "start a new one with stream_text()"
            ) from self._failure
        if self._closed:
            raise RuntimeError("this stream was closed before its end; start a new one with stream_text()")

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._buffered.clear()
        self._discard()

    async def _open(self) -> None:
        transport = self._transport = self._client._get_transport()
        self._attempts += 1
        client_timeout = transport.client_timeout(self._timeout, stream=True)
        response = await transport.post(
            self._body, stream=True, timeout=client_timeout, attempt=self._attempts
        )
        if self._closed:  # aclose() from another task while we waited for the headers
            response.close()
            raise RuntimeError("this stream was closed while it was being read")
        self._response = response
        self._client._streams.add(self)
        self._loop = asyncio.get_running_loop()
        self._request_id = response.headers.get("x-request-id")
        if response.status != 200 or response.content_type != "text/event-stream":
            self._response = None
            raw = await transport.read_body(response)
            parse_generation(response.status, raw, response.headers)  # raises the error it stands for
            raise ServerError(
                f"expected an event stream, got {response.content_type!r}",
                status_code=response.status,
                request_id=self._request_id,
            )
        idle = self._timeout.stream_idle
        self._idle_deadline = None if idle is None else self._loop.time() + idle

    async def _read(self) -> None:
        response = self._response
        assert response is not None
        assert self._transport is not None
        assert self._loop is not None
        data = await self._transport.read_chunk(response, self._request_id)
        if not data:
            where = "in the middle of an event" if self._decoder.pending() else "before its final event"
            raise APIConnectionError(f"the stream ended {where}", request_id=self._request_id)
        try:
            events = self._decoder.feed(data)
        except SSEProtocolError as exc:
            raise ServerError(
                f"malformed event stream: {exc}", status_code=200, request_id=self._request_id
            ) from None
        got_data = False
        for event in events:
            if event.event not in ("message", "error"):
                continue  # event types of a newer API: not ours to interpret
            got_data = True
            try:
                if event.data == DONE:  # we stop at the final event, so this one came before it
                    raise APIConnectionError(
                        "the stream sent [DONE] before its final event", request_id=self._request_id
                    )
                chunk = parse_event(event.data, response.headers)
            except NebulaError as err:
                if not self._buffered:
                    raise
                self._error = err  # deliver the text that came before it first
                break
            self._buffered.append(chunk)
            if chunk.finish_reason is not None:
                self._ended = True
                break
        idle = self._timeout.stream_idle
        if self._idle_deadline is not None and idle is not None:
            now = self._loop.time()
            if got_data:
                self._idle_deadline = now + idle
            elif now > self._idle_deadline:
                raise APITimeoutError(
                    f"no data event in the stream for {idle:g} s", request_id=self._request_id
                )

    def _finish(self) -> None:
        """After the final event: hand the connection back to the pool, draining the body's tail if any."""
        response, self._response = self._response, None
        if response is None:
            return
        if response.content.at_eof():
            response.release()
        else:
            # Not on the caller's time: the loop ends as soon as the final chunk is delivered.
            self._client._drain_later(response)

    def _discard(self) -> None:
        """Close the response now: an unread body means the connection cannot be reused."""
        response, self._response = self._response, None
        self._decoder = SSEDecoder()  # a half-read event of this response must not prefix the next
        if response is not None:
            response.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        response = getattr(self, "_response", None)
        if response is None:
            return
        self._response = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                response.close()
            else:
                # Collected in another thread (a forgotten sync stream): close in the loop's own thread.
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: its sockets are gone
                    loop.call_soon_threadsafe(response.close)
        finally:  # warn after closing: under -W error the warning raises, and must not leak the connection
            _warn(
                "TextStream was not closed: use 'async with client.stream_text(...)' or call aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
