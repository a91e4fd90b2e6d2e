"""Fuzz the headers an answer comes with, over a real socket: content type, encoding, status.

Each example serves one answer from an aiohttp.web server on 127.0.0.1 to a new client, which must
end in a result or one of the SDK's errors. Few examples in CI (each costs a server and a client);
NEBULA_FUZZ_EXAMPLES=20000 runs a tenth of that here (see tests/property/_support.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from nebula_async import AsyncNebulaClient, NebulaError
from tests.helpers import NO_RETRY, success_body
from tests.property._support import fuzz_slow

_SUCCESS = json.dumps(success_body("fuzzed")).encode()
_EVENTS = b'data: {"text": "fuzzed", "finish_reason": "stop"}\n\n'
_BODIES = st.sampled_from([_SUCCESS, _EVENTS, b"", b"<html>502</html>", b"\x1f\x8b\x08garbage", b"[" * 3000])
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
_CONTENT_TYPES = (
    st.sampled_from(
        [
            "application/json", "application/json; charset=utf-8", "application/problem+json",
            "text/event-stream", "text/event-stream; charset=latin-1", "text/html", "text/plain",
            "application/octet-stream", "", "application/json; charset=utf-16", ";;;", "*/*",
        ]
    )
    | _HEADER_TEXT
)  # fmt: skip
_ENCODINGS = st.sampled_from(["", "gzip", "deflate", "br", "zstd", "identity", "x-bogus", "gzip, deflate"])


def _encode(body: bytes, encoding: str, honest: bool) -> bytes:
    """Compress ``body`` as ``encoding`` says, or (not ``honest``) leave it plain under that name."""
    if not honest:
        return body
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


async def _exchange(status: int, headers: dict[str, str], body: bytes, stream: bool) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/text/generate", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with AsyncNebulaClient(
            "sk-fuzz", base_url=f"http://127.0.0.1:{port}/v1", retry=NO_RETRY, timeout=10.0
        ) as client:
            try:
                if stream:
                    async for chunk in client.stream_text(model="m", prompt="p"):
                        chunk.text.encode("utf-8")
                else:
                    (await client.generate_text(model="m", prompt="p")).text.encode("utf-8")
            except NebulaError as err:
                str(err)  # and its message can be built
    finally:
        await runner.cleanup()


@fuzz_slow(25)
@given(
    st.sampled_from([200, 200, 400, 429, 500, 502]),
    _CONTENT_TYPES,
    _ENCODINGS,
    _BODIES,
    st.booleans(),
    st.booleans(),
)
def test_fuzz_any_content_type_and_encoding_ends_in_a_result_or_our_error(
    status: int, content_type: str, encoding: str, body: bytes, honest: bool, stream: bool
) -> None:
    """Whatever the content type and encoding say (true or not), a call gives text or a NebulaError."""
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    asyncio.run(_exchange(status, headers, _encode(body, encoding, honest), stream))
