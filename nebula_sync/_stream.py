"""The blocking TextStream: the async one, read through the client's loop thread."""

from __future__ import annotations

from collections import deque
from types import TracebackType

from nebula_async import TextChunk, Usage
from nebula_async import TextStream as AsyncTextStream

from ._runtime import LoopThread

__all__ = ["TextStream"]


class TextStream:
    """A streamed generation: iterate it for TextChunk objects; use ``with`` to release it early.

    Each trip to the client's event loop takes every chunk already read from the network (the
    async stream's ``next_chunks()``), not one chunk per trip; they wait here, in this thread.
    """

    def __init__(self, stream: AsyncTextStream, runtime: LoopThread) -> None:
        self._stream = stream
        self._runtime = runtime
        self._chunks: deque[TextChunk] = deque()  # read by the loop, not yet delivered
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._dropped = False  # closed with chunks not yet delivered

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
        """Token counts, once a delivered chunk carried them (in practice the last one); else None."""
        return self._usage

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` of the response being read, once it arrived."""
        return self._stream.request_id

    @property
    def retries(self) -> int:
        """How many failed attempts came before the one being read."""
        return self._stream.retries

    def __repr__(self) -> str:
        return repr(self._stream)

    def __enter__(self) -> TextStream:
        self._runtime.run(self._stream.__aenter__)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> TextChunk:
        try:
            chunk = self._chunks.popleft()
        except IndexError:
            if self._dropped:
                raise RuntimeError(
                    "this stream was closed before its end; start a new one with stream_text()"
                ) from None
            chunks = self._runtime.run(self._stream.next_chunks)
            if not chunks:
                raise StopIteration from None
            chunk = chunks[0]
            self._chunks.extend(chunks[1:])
        self._parts.append(chunk.text)
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return chunk

    def close(self) -> None:
        """Release the connection; idempotent. A stream closed before its end can't be iterated again."""
        if self._chunks:
            self._dropped = True
            self._chunks.clear()
        runtime = self._runtime
        if not runtime.closed and not runtime.in_loop_thread():
            try:
                runtime.run(self._stream.aclose)
            except RuntimeError:
                if not runtime.closed:
                    raise
            else:
                return
        # Closing the client closes its streams, but another thread may be closing it right now: hand
        # this one to the loop too, rather than leave its connection to the garbage collector. Not
        # waited for: this thread may be the one closing the client, or the loop's own.
        runtime.run_soon(self._stream.aclose)
