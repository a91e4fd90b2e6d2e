"""Shared fixtures: a clean environment, aioresponses for aiohttp 3.14, a real local server, a private CA."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aioresponses import aioresponses

from tests.helpers import sse, success_body

# What the clients read from the environment besides NEBULA_*: proxies, CA locations, .netrc.
_CLIENT_ENVIRON = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ssl_cert_file",
    "ssl_cert_dir",
    "netrc",
}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove NEBULA_*, proxy and CA variables so a developer's shell cannot change a test's outcome."""
    for name in list(os.environ):
        if name.startswith("NEBULA_") or name.lower() in _CLIENT_ENVIRON:
            monkeypatch.delenv(name)


class _NoStreamWriter:
    """Stands in for the request's stream writer: a mocked request wrote nothing."""

    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 does not pass aiohttp 3.14's ``stream_writer`` (aioresponses #289)."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoStreamWriter())
        super().__init__(method, url, **kwargs)


class MockAPI(aioresponses):
    """aioresponses whose responses construct on aiohttp 3.14; use for request shape and mapping only."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(*args, **kwargs)

    def sent(self) -> list[dict[str, Any]]:
        """Return every request that reached the mocked wire: method, url, headers and decoded JSON body."""
        out = []
        for (method, url), calls in self.requests.items():
            for call in calls:
                data = call.kwargs.get("data")
                out.append(
                    {
                        "method": method,
                        "url": str(url),
                        "headers": dict(call.kwargs.get("headers") or {}),
                        "body": json.loads(data) if data else None,
                        "raw": data,
                    }
                )
        return out


@pytest.fixture
def mock_api() -> Iterator[MockAPI]:
    """Patch aiohttp so no socket is opened; unmatched URLs raise a connection error."""
    mocked = MockAPI()
    mocked.start()
    try:
        yield mocked
    finally:
        mocked.stop()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalServer:
    """A real aiohttp.web server on 127.0.0.1 whose POST /v1/text/generate runs ``handler``."""

    def __init__(self) -> None:
        self.handler: Handler = _default_handler
        self.requests: list[dict[str, Any]] = []  # headers and JSON body of each request received
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def route(self, request: web.Request) -> web.StreamResponse:
        """Record the request, then answer it with ``handler``."""
        raw = await request.read()
        self.requests.append(
            {"headers": dict(request.headers), "body": json.loads(raw) if raw else None, "raw": raw}
        )
        return await self.handler(request)


async def _default_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_stream"}
        )
        await response.prepare(request)
        words = ["Hello", ",", " World", "!"]
        for i, word in enumerate(words):
            await response.write(
                sse({"text": word, "finish_reason": "stop" if i == len(words) - 1 else None})
            )
        await response.write_eof()
        return response
    return web.json_response(success_body(), headers={"x-request-id": "req_1"})


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    """Start a LocalServer on an ephemeral port for the test, in the test's own event loop."""
    srv = LocalServer()
    app = web.Application()
    app.router.add_post("/v1/text/generate", srv.route)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    try:
        yield srv
    finally:
        await runner.cleanup()


@pytest.fixture
def private_ca() -> trustme.CA:
    """A private certificate authority, made for this test only (no system trusts it)."""
    return trustme.CA()


@pytest.fixture
def ca_file(private_ca: trustme.CA, tmp_path: Path) -> Path:
    """The private CA's certificate as a PEM bundle file: what ``verify=`` and SSL_CERT_FILE take."""
    path = tmp_path / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_tls(private_ca: trustme.CA) -> ssl.SSLContext:
    """A server-side TLS context presenting a certificate for 127.0.0.1 signed by the private CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    private_ca.issue_cert("127.0.0.1").configure_cert(context)
    return context
