"""The fake server's stream writer: events paced as a model writes tokens, and scripted stream faults."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from ._state import Fault, RecordedRequest
from ._wire import error_event

__all__ = ["write_stream"]


async def write_stream(
    request: web.BaseRequest,
    record: RecordedRequest,
    events: list[str],
    fault: Fault | None,
    *,
    time_to_first_token: float,
    token_delay: float,
) -> web.StreamResponse:
    """Send ``events`` as ``text/event-stream``, paced, unless ``fault`` cuts or ends the stream early.

    A fault ("drop_stream" or "error_event") always comes before the final event: after it, the
    stream is complete. ``record.status`` becomes 200 once the headers are out.
    """
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-request-id": record.request_id,
        }
    )
    sent = events if fault is None else events[: min(fault.events, len(events) - 1)]
    with contextlib.suppress(ConnectionError):  # the client hung up: nothing left to do
        await response.prepare(request)
        record.status = 200  # the headers are out: a cut or a cancel later doesn't change it
        if time_to_first_token:
            await asyncio.sleep(time_to_first_token)
        if token_delay:
            for i, event in enumerate(sent):
                if i:
                    await asyncio.sleep(token_delay)
                await response.write(event.encode())
        elif sent:
            await response.write("".join(sent).encode())
        if fault is not None and fault.kind == "drop_stream":
            if request.transport is not None:
                request.transport.abort()
            return response
        if fault is not None:
            assert fault.code is not None  # error_event faults always carry one
            await response.write(error_event(fault.code, fault.message, fault.details))
        await response.write_eof()
    return response
