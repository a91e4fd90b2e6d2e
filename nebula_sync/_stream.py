"""The blocking TextStream: the async one, driven through the client's portal."""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from nebula_async import TextChunk
from nebula_async import TextStream as AsyncTextStream

if TYPE_CHECKING:
    from ._client import NebulaClient

__all__ = ["TextStream"]


class TextStream:
    """A streamed generation: iterate it for TextChunk objects; use ``with`` to release it early.

    Each trip to the client's event loop takes every chunk already read from the network, not
    one chunk per trip.
    """

    def __init__(self, stream: AsyncTextStream, client: NebulaClient) -> None:
        self._stream = stream
        self._client = client
        self._run = client._run
        self._local: deque[TextChunk] = deque()

    @property
    def text(self) -> str:
        """The text of the chunks delivered so far."""
        return self._stream.text

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped, once the last chunk was delivered."""
        return self._stream.finish_reason

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
        self._run(self._stream.__aenter__)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> TextChunk:
        if not self._local:
            self._local.extend(self._run(self._stream.next_chunks))
            if not self._local:
                raise StopIteration
        return self._local.popleft()

    def close(self) -> None:
        """Release the connection; idempotent."""
        if not self._client.closed:
            try:
                self._run(self._stream.aclose)
            except RuntimeError:
                if not self._client.closed:
                    raise
            else:
                return
        # Closing the client closes its streams, but another thread may be closing it right now: hand
        # this one to the loop too, rather than leave its connection to the garbage collector. Not
        # waited for: this thread may be the one closing the client, or the loop's own.
        if not self._client._forked:
            self._client._dispatcher.run_soon(self._stream._close)
