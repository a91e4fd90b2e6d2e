"""aiohttp.web on a listening socket of our own, in the running event loop: start, and stop at once."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._logs import server_logger
from ._wire import MAX_BODY

__all__ = ["Site"]

_SHUTDOWN_TIMEOUT = 0.1  # stop() cancels the answers in flight; this bounds what is left


class Site:
    """One listening server, made by ``start``; ``stop`` must run in the loop that started it."""

    def __init__(
        self, runner: web.ServerRunner, listener: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._runner = runner
        self._listener = listener
        self.loop = loop

    @classmethod
    async def start(
        cls,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        host: str,
        port: int,
        access_log: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Site:
        """Listen on ``host``:``port`` in the running loop and serve every request with ``handler``.

        With ``ssl_context``, connections are TLS, presenting its certificate.
        """
        loop = asyncio.get_running_loop()

        def make_request(*args: Any) -> web.BaseRequest:
            # aiohttp's own factory, but with room for long prompts (its default cap is 1 MiB).
            message, payload, protocol, writer, task = args
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

        server = web.Server(
            handler,
            request_factory=make_request,
            handler_cancellation=True,  # a client that hangs up stops its stream's pacing at once
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
            logger=server_logger,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Our own listening socket, so that stop() can stop accepting before it closes anything.
        listener = socket.create_server((host, port), family=family)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, listener, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            listener.close()
            raise
        return cls(runner, listener, loop)

    @property
    def port(self) -> int:
        """The port listened on."""
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        """How many client connections are open."""
        web_server = self._runner.server
        return 0 if web_server is None else len(web_server.connections)

    async def stop(self, on_stop: Callable[[], None]) -> None:
        """Stop accepting, call ``on_stop`` (cancel the answers in flight), close every connection."""
        loop = asyncio.get_running_loop()
        web_server = self._runner.server
        assert web_server is not None  # set up in start()
        # A connection accepted just before the listener closes is set up on a later loop turn and
        # leaks if the listener is gone by then (CPython gh-109564): stop accepting, let those in.
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            loop.remove_reader(self._listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        on_stop()
        transports = [c.transport for c in web_server.connections if c.transport is not None]
        await self._runner.cleanup()
        for transport in transports:
            transport.abort()  # a client that stopped reading keeps a graceful close waiting forever
        await asyncio.sleep(0)  # an aborted transport lets go of its socket on the next turn
