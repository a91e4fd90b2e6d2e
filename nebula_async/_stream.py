"""TextStream: a streamed generation, as an async iterator and async context manager."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import warnings
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._config import RetryPolicy, Timeout
from ._deadline import Deadline
from ._errors import APIConnectionError, APIError, APITimeoutError, NebulaError, RateLimitError, ServerError
from ._models import TextChunk, Usage
from ._parse import DONE, chunk_or_error, generation_or_error
from ._sse import SSEDecoder, SSEProtocolError

if TYPE_CHECKING:
    import aiohttp

    from ._calls import CallPath
    from ._http import Transport

__all__ = ["TextStream"]

_CLOSED_WHILE_READ = "this stream was closed while it was being read"


class _State(enum.Enum):
    NEW = "new"  # nothing sent yet
    OPEN = "open"  # sending, or reading the response
    ENDED = "ended"  # the final event (or [DONE]) was read; chunks may still wait for delivery
    CLOSED = "closed"  # closed before its end, by aclose() or the client's aclose()
    FAILED = "failed"  # an error or a cancellation ended it: it can't resume


class TextStream:
    """A streamed generation: iterate it for TextChunk objects.

    Nothing is sent until ``async with`` or the first iteration. Use ``async with`` (or call
    ``aclose()``) when you may stop early: the connection is released at once. A stream that is
    iterated to its end releases it by itself. The stream is retried only before its first chunk
    reaches you, so no text is delivered twice; a stream that failed, was cancelled or was closed
    early raises RuntimeError if used again: start a new one.
    """

    def __init__(
        self, calls: CallPath, body: bytes, policy: RetryPolicy, timeout: Timeout, *, tokens: int = 0
    ) -> None:
        self._calls = calls
        self._body = body
        self._tokens = tokens  # reserved under a tokens-per-minute limit; corrected from the final usage
        self._policy = policy
        self._timeout = timeout
        self._state = _State.NEW
        self._response: aiohttp.ClientResponse | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = SSEDecoder()
        self._buffered: deque[TextChunk] = deque()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._request_id: str | None = None
        self._attempts = 0
        self._error: NebulaError | None = None  # raised once the chunks read before it are delivered
        self._failure: BaseException | None = None  # what ended the stream early
        self._idle_deadline: float | None = None
        # Done when the stream is closed while its request waits for its turn: the wait ends at once.
        self._abort: asyncio.Future[str] | None = None

    @property
    def text(self) -> str:
        """The text of the chunks delivered so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]  # joined once, so reading .text per chunk stays linear
        return self._parts[0] if self._parts else ""

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped (``"stop"``, ``"length"``...), once the last chunk was delivered.

        None when the server ended the stream with ``[DONE]`` without giving a reason.
        """
        return self._finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token counts, once a delivered chunk carried them (in practice the last one); else None.

        Also None when the server sent counts that are not three integers: the text matters more.
        """
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
        return f"<TextStream {self._state.value} request_id={self._request_id!r} chars={len(self.text)}>"

    async def __aenter__(self) -> TextStream:
        self._check_usable()
        if self._state is _State.NEW:
            await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> TextChunk:
        buffered = self._buffered
        if not buffered:
            await self._fill()
            if not buffered:
                raise StopAsyncIteration
        # _deliver, inlined: this runs once per event, and a call is a tenth of its cost.
        chunk = buffered.popleft()
        self._parts.append(chunk.text)
        if chunk.finish_reason is not None or chunk.usage is not None:
            self._deliver_last(chunk)
        return chunk

    async def next_chunks(self) -> list[TextChunk]:
        """Deliver every chunk already read, reading the network only if there is none.

        Returns an empty list once the stream is over. The sync TextStream takes one thread hop
        per call of this, that is per network read, not one per chunk.
        """
        if not self._buffered:
            await self._fill()
        chunks = [self._deliver(chunk) for chunk in self._buffered]
        self._buffered.clear()
        return chunks

    async def aclose(self) -> None:
        """Release the connection; idempotent. A stream closed before its end cannot be iterated again."""
        self._close()

    def _close(self) -> None:
        # What was read but not delivered is dropped: then the stream did not reach its end for the caller.
        undelivered = bool(self._buffered) or self._error is not None
        self._buffered.clear()
        self._error = None
        if self._state in (_State.NEW, _State.OPEN) or (self._state is _State.ENDED and undelivered):
            self._state = _State.CLOSED
            self._discard()
            abort = self._abort
            if abort is not None and not abort.done():  # its request may be waiting for its turn
                abort.set_result(_CLOSED_WHILE_READ)

    def _deliver(self, chunk: TextChunk) -> TextChunk:
        self._parts.append(chunk.text)
        if chunk.finish_reason is not None or chunk.usage is not None:
            self._deliver_last(chunk)
        return chunk

    def _deliver_last(self, chunk: TextChunk) -> None:
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage

    async def _fill(self) -> None:
        """Read until a chunk is buffered or the stream is over."""
        if self._state is _State.NEW:
            await self._start()
        while not self._buffered:
            if self._error is not None:
                error, self._error = self._error, None
                if isinstance(error, RateLimitError):  # not retried, but every other call must wait too
                    self._calls.rate_limited(error, self._policy)
                self._fail(error)
                raise error
            if self._state is _State.ENDED:
                return
            self._check_usable()
            try:
                await self._read()
            except NebulaError as err:
                if self._was_closed():  # aclose() from another task cut the read short
                    raise RuntimeError(_CLOSED_WHILE_READ) from err
                if isinstance(err, RateLimitError):  # not retried, but every other call must wait too
                    self._calls.rate_limited(err, self._policy)
                self._fail(err)  # text reached the caller: a retry would deliver it twice
                raise
            except BaseException as exc:  # cancelled, or a bug: never leave the connection checked out
                self._fail(exc)
                raise

    async def _start(self) -> None:
        """Send the request and read up to the first chunk, retrying as the policy allows."""
        self._state = _State.OPEN
        self._abort = asyncio.get_running_loop().create_future()
        try:
            await self._calls.run(
                self._policy,
                self._body,
                self._timeout,
                self._open,
                stream=True,
                starting=self._starting,
                interrupted=self._interrupted,
                tokens=self._tokens,
                abort=self._abort,
            )
        except BaseException as exc:
            if not self._was_closed():
                self._fail(exc)
            raise

    def _starting(self, number: int) -> None:
        """Before attempt ``number`` is sent."""
        self._check_usable()  # closed while we slept before this retry
        self._attempts = number

    def _interrupted(self, error: NebulaError) -> None:
        """The request failed before its answer came."""
        if self._was_closed():  # aclose() from another task while we waited: not a failure to retry
            raise RuntimeError(_CLOSED_WHILE_READ) from error

    async def _open(self, transport: Transport, response: aiohttp.ClientResponse, number: int) -> None:
        """With the answer's headers: read until a chunk is buffered or the stream ended."""
        if self._was_closed():  # aclose() from another task while we waited for the headers
            response.close()
            raise RuntimeError(_CLOSED_WHILE_READ)
        self._request_id = response.headers.get("x-request-id")
        try:
            if response.status != 200 or response.content_type != "text/event-stream":
                raw = await self._read_whole(transport, response)
                answer = generation_or_error(response.status, raw, response.headers)
                del raw  # before raising: this frame stays in the error's traceback (see _client._finish)
                if isinstance(answer, APIError):
                    raise answer
                raise ServerError(
                    f"expected an event stream, got {response.content_type!r}",
                    status_code=response.status,
                    request_id=self._request_id,
                )
            self._response = response
            self._loop = loop = asyncio.get_running_loop()
            self._calls.track(self, self._close)
            idle = self._timeout.stream_idle
            self._idle_deadline = None if idle is None else loop.time() + idle
            while not self._buffered and self._state is _State.OPEN and self._error is None:
                await self._read()
        except NebulaError as err:
            self._discard()
            if self._was_closed():
                raise RuntimeError(_CLOSED_WHILE_READ) from err
            raise

    async def _read_whole(self, transport: Transport, response: aiohttp.ClientResponse) -> bytes:
        """Read an answer that is no event stream (an error, say), within ``stream_idle``.

        Its reads are no data events: without this bound, a body trickled a byte per silence
        shorter than ``stream_idle`` would keep the stream open for hours (64 KiB of them).
        """
        idle = self._timeout.stream_idle
        deadline = None if idle is None else Deadline(idle)
        try:
            return await transport.read_body(response)  # which closes the response if cut short
        except asyncio.CancelledError:
            # Never swallowed: only our own deadline's cancel, alone, becomes a timeout.
            if deadline is None or not deadline.expired():
                raise
        finally:
            if deadline is not None:
                deadline.cancel()
        raise APITimeoutError(
            f"no data event for {idle:g} s: the stream's HTTP {response.status} answer "
            "(not an event stream) was still being read",
            request_id=self._request_id,
        )

    async def _read(self) -> None:
        """Consume one network read: buffer its chunks, end the stream, or raise what went wrong."""
        response = self._response
        assert response is not None
        data = await self._calls.transport().read_chunk(response, self._request_id)
        if not data:
            where = "in the middle of an event" if self._decoder.pending() else "before its final event"
            raise APIConnectionError(f"the stream ended {where}", request_id=self._request_id)
        got_data = self._take(data, response.headers)
        # Dropped before an error is raised: this frame stays in its traceback, which must not keep
        # the read (nor its events, which _take held: its frame is gone once it returned).
        del data
        if self._error is not None and not self._buffered:
            error, self._error = self._error, None
            raise error
        idle = self._timeout.stream_idle
        if self._idle_deadline is not None and idle is not None:
            now = asyncio.get_running_loop().time()
            if got_data:
                self._idle_deadline = now + idle
            elif now > self._idle_deadline:
                raise APITimeoutError(
                    f"no data event in the stream for {idle:g} s", request_id=self._request_id
                )

    def _take(self, data: bytes, headers: Mapping[str, str]) -> bool:
        """Decode one read: buffer its chunks, end the stream, or set ``_error``; True if it held data.

        An error is set, not raised, here: see _read.
        """
        try:
            events = self._decoder.feed(data)
        except SSEProtocolError as exc:
            why = str(exc)
            events = None
        if events is None:  # out of the except block: the decoder's error would be the context
            self._error = ServerError(
                f"malformed event stream: {why}", status_code=200, request_id=self._request_id
            )
            return False
        got_data = False
        for event in events:
            # Event types of a newer API are not ours to interpret; an empty data field is a
            # keep-alive, like a comment, and so does not count as data for stream_idle.
            if event.event not in ("message", "error") or not event.data:
                continue
            got_data = True
            if event.data == DONE:  # the end, even when no event gave a finish_reason
                self._end()
                return True
            chunk = chunk_or_error(event.data, headers)
            if isinstance(chunk, APIError):
                self._error = chunk  # raised by _read, or after the text that came before it
                return True
            self._buffered.append(chunk)
            if chunk.finish_reason is not None:
                self._end()
                return True
        return got_data

    def _end(self) -> None:
        """The final event was read: hand the connection back; the buffered chunks stay to deliver."""
        self._state = _State.ENDED
        if self._tokens:
            last = self._buffered[-1].usage if self._buffered else None
            usage = last if last is not None else self._usage
            self._calls.settle(self._tokens, None if usage is None else usage.total_tokens)
        self._calls.untrack(self)
        response, self._response = self._response, None
        if response is not None:
            self._calls.release(response)

    def _was_closed(self) -> bool:
        # A method, not an inline check: another task's aclose() can change the state at any await.
        return self._state is _State.CLOSED

    def _check_usable(self) -> None:
        if self._state is _State.FAILED:
            raise RuntimeError(
                f"this stream failed earlier ({type(self._failure).__name__}); "
                "start a new one with stream_text()"
            ) from self._failure
        if self._state is _State.CLOSED:
            raise RuntimeError("this stream was closed before its end; start a new one with stream_text()")

    def _fail(self, exc: BaseException) -> None:
        self._state = _State.FAILED
        self._failure = exc
        self._buffered.clear()
        self._discard()

    def _discard(self) -> None:
        """Close the response now: an unread body means the connection cannot be reused."""
        self._calls.untrack(self)
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
