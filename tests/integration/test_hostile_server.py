"""What the SDK reads from a hostile or broken server is bounded, and comes out as a typed error.

Each test serves its answer over a real socket on 127.0.0.1 (the ``server`` fixture, or a RawServer
for what aiohttp.web will not send). Memory is measured with tracemalloc around the call: it counts
every Python allocation, the SDK's and aiohttp's buffers alike.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    NebulaError,
    RateLimitError,
    ServerError,
    Timeout,
    _http,
    _sse,
)
from nebula_async._http import MAX_BODY_BYTES, MAX_ERROR_BODY_BYTES
from nebula_async._sse import MAX_EVENT_BYTES
from tests.conftest import Handler, LocalServer
from tests.helpers import NO_RETRY, exception_chain, success_body
from tests.integration._support import (
    CALLS,
    Call,
    RawConnection,
    RawServer,
    collect,
    generate_once,
    http_head,
    json_handler,
    make_client,
    open_stream,
    stream_once,
    track_peers,
)

MB = 1024 * 1024
NESTED = b"[" * 100_000 + b"]" * 100_000  # deeper than any recursion limit; orjson refuses it too
SHALLOW_NESTED = b"[" * 1000 + b"]" * 1000  # orjson reads it; str() of the value recurses too deep


def _answer(raw: bytes) -> Handler:
    """A handler answering ``raw`` as a 200 JSON body to a plain call, as one event's data to a stream."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            response = await open_stream(request)
            await response.write(b"data: " + raw + b"\n\n")
            await response.write_eof()
            return response
        return web.Response(body=raw, content_type="application/json")

    return handler


def _held_bytes(obj: object, seen: set[int] | None = None, depth: int = 0) -> int:
    """Return about how many bytes ``obj`` keeps alive: its size, its attributes', its items'."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 20 or obj is None or isinstance(obj, type):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    children: list[object] = []
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    if isinstance(obj, BaseException):
        children += [obj.__context__, obj.__cause__, *obj.args]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        children.append(vars(obj))
    return size + sum(_held_bytes(child, seen, depth + 1) for child in children)


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """Trace allocations during the test; the fixture's value returns the peak growth in bytes so far."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


async def _raises(call: Call, base_url: str, **kwargs: Any) -> NebulaError:
    async with make_client(base_url, retry=NO_RETRY, **kwargs) as client:
        with pytest.raises(NebulaError) as info:
            await call(client)
    return info.value


# --- JSON the stdlib cannot, or should not, give us --------------------------------------------------


@CALLS
@pytest.mark.parametrize("raw", [NESTED, SHALLOW_NESTED], ids=["deep", "1000"])
async def test_deeply_nested_json_is_a_malformed_response(
    server: LocalServer, call: Call, raw: bytes
) -> None:
    """JSON nested 100000 (or 1000) deep is a ServerError, "malformed response", not RecursionError."""
    # Regression: json.loads raised RecursionError, and str() of a 1000-deep list did too.
    server.handler = _answer(raw)
    error = await _raises(call, server.base_url)
    assert type(error) is ServerError
    assert str(error).startswith("malformed response:")
    assert error.__context__ is None


SURROGATES = {
    "utf-8-bytes": b'"a\xed\xa0\x80"',  # U+D800 encoded as UTF-8 (which UTF-8 forbids)
    "escape": b'"a\\ud800"',  # the same, written as a JSON escape
    "low-escape": b'"\\udc00b"',
}


@CALLS
@pytest.mark.parametrize("text", list(SURROGATES.values()), ids=list(SURROGATES))
async def test_a_lone_surrogate_in_the_text_is_a_malformed_response(
    server: LocalServer, call: Call, text: bytes
) -> None:
    """A text holding a lone surrogate, encoded or escaped, is a ServerError on both paths, never a str."""
    # Regression: the plain call returned 'a\ud800' (json decodes bytes with surrogatepass), which
    # failed later in the caller's .encode(); a stream took the escaped form too.
    usage = b'{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}'
    answer = b'{"status": "success", "data": {"text": %s, "usage": %s}}' % (text, usage)
    event = b'{"text": %s, "finish_reason": "stop"}' % text

    async def handler(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            response = await open_stream(request)
            await response.write(b"data: " + event + b"\n\n")
            await response.write_eof()
            return response
        return web.Response(body=answer, content_type="application/json")

    server.handler = handler
    error = await _raises(call, server.base_url)
    assert type(error) is ServerError
    assert "malformed" in str(error)


async def test_a_surrogate_pair_escape_is_text(server: LocalServer) -> None:
    """A pair of escapes that makes one character (an emoji) is accepted, on both paths."""
    usage = b'{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}'
    server.handler = _answer(
        b'{"status": "success", "data": {"text": "\\ud83d\\ude00", "usage": %s}}' % usage
    )
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        assert (await client.generate_text(model="m", prompt="p")).text == "\U0001f600"


@CALLS
async def test_an_error_code_is_shown_on_one_short_line(server: LocalServer, call: Call) -> None:
    """A 50 KB error code holding a line break is cut and put on one line: it can't flood or forge a log."""
    # Regression: str(err) showed the code as sent, 50 KB and a forged "ERROR ..." line.
    code = "bad_code\nERROR nebula_async: forged " + "x" * 50_000
    server.handler = _answer(
        b'{"status": "error", "error": {"code": %s, "message": "m"}}' % json.dumps(code).encode()
    )
    error = await _raises(call, server.base_url)
    assert type(error) is APIError
    assert error.code is not None
    assert error.code.startswith("bad_code ERROR nebula_async: forged xxx")
    assert "\n" not in str(error)
    assert len(str(error)) < 200
    assert len(repr(error)) < 300


@CALLS
async def test_an_error_envelope_of_megabytes_keeps_no_details(server: LocalServer, call: Call) -> None:
    """A 2 MB error envelope (a 200, or an event) is its class, without its details: the error stays small."""
    # Regression: error.details kept the 2 MB dict (a JSON 200 may be 64 MiB, an event 16 MiB),
    # alive as long as the error is kept. An error envelope is a few hundred bytes.
    details = {"junk": "j" * (2 * MB)}
    envelope = {
        "status": "error",
        "error": {"code": "rate_limit_exceeded", "message": "m", "details": details},
    }
    server.handler = _answer(json.dumps(envelope).encode())
    error = await _raises(call, server.base_url)
    assert type(error) is RateLimitError
    assert error.details == {}
    assert _held_bytes(error) < 16 * 1024


async def test_a_small_error_envelope_keeps_its_details(server: LocalServer) -> None:
    """Details of a usual size are kept, on both paths."""
    envelope = {"status": "error", "error": {"code": "server_error", "message": "m", "details": {"k": "v"}}}
    server.handler = _answer(json.dumps(envelope).encode())
    for call in (generate_once, stream_once):
        error = await _raises(call, server.base_url)
        assert type(error) is ServerError
        assert error.details == {"k": "v"}


ESCAPES = "\x1b[2J\x1b[31mwiped\x00\x07"  # clear the screen, red, a NUL, a bell


@CALLS
@pytest.mark.parametrize("where", ["message", "code", "page"])
async def test_an_error_shows_no_control_characters(server: LocalServer, call: Call, where: str) -> None:
    """Terminal escapes and NULs from the server are shown as U+FFFD in str(err), whatever field held them."""
    # Regression: a log viewed in a terminal ran the server's escape sequences (and a page's NULs).
    if where == "page":
        server.handler = json_handler_raw(502, ("<p>" + ESCAPES + "</p>").encode(), "text/html")
    else:
        fields = {"code": "server_error", "message": "m", where: "bad " + ESCAPES}
        server.handler = _answer(json.dumps({"status": "error", "error": fields}).encode())
    error = await _raises(call, server.base_url)
    assert "wiped" in str(error)
    assert str(error).isprintable(), repr(str(error))


def json_handler_raw(status: int, body: bytes, content_type: str) -> Handler:
    """A handler answering ``body`` with ``status`` and ``content_type``, to a call or a stream alike."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


# --- bodies past their cap -----------------------------------------------------------------------------


def _garbage(status: int, size: int, headers: dict[str, str] | None = None) -> Handler:
    """A handler streaming ``size`` bytes of an HTML page with ``status``, chunked (no Content-Length)."""
    page = b"<p>Bad gateway</p>\n" * 3276  # about 64 KB per write

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/html", **(headers or {})})
        await response.prepare(request)
        sent = 0
        try:
            while sent < size:
                await response.write(page)
                sent += len(page)
            await response.write_eof()
        except ConnectionError:  # the client hung up once it had read enough: what we expect
            pass
        return response

    return handler


@CALLS
async def test_a_50_mb_error_page_is_not_read_past_the_cap(
    server: LocalServer, call: Call, traced: Callable[[], int]
) -> None:
    """A 50 MB 502 page costs under 4 MB of memory, and is a ServerError quoting its head."""
    # Regression: the whole page was read, decoded and split (peak RSS +700 MB), then kept alive by
    # the raised error's __context__ (a JSONDecodeError holds the whole text).
    server.handler = _garbage(502, 50 * MB)
    error = await _raises(call, server.base_url)
    assert traced() < 4 * MB
    assert type(error) is ServerError
    assert error.status_code == 502
    assert f"exceeded {MAX_ERROR_BODY_BYTES} bytes" in str(error)
    assert "Bad gateway" in str(error)
    assert _held_bytes(error) < 16 * 1024


async def test_a_huge_429_is_still_a_rate_limit_error_with_its_retry_after(server: LocalServer) -> None:
    """A 429 whose page runs past the cap keeps its class and Retry-After: it is still waited for."""
    server.handler = _garbage(429, 10 * MB, {"Retry-After": "7"})
    error = await _raises(generate_once, server.base_url)
    assert type(error) is RateLimitError
    assert error.retry_after == 7.0
    assert error.status_code == 429


async def test_a_huge_500_is_retried(server: LocalServer) -> None:
    """A 500 past the cap is a ServerError, retried like any 500: the next answer is read."""
    big = _garbage(500, 10 * MB)
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return await big(request)
        return web.json_response(success_body("ok"))

    server.handler = handler
    async with make_client(server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert (result.text, result.retries, calls) == ("ok", 1, 2)


async def test_a_small_error_body_keeps_no_decoding_error_as_context(server: LocalServer) -> None:
    """A 503 HTML page under the cap is a ServerError with no JSONDecodeError (holding the page) behind."""
    server.handler = _garbage(503, 60 * 1024)
    error = await _raises(generate_once, server.base_url)
    assert type(error) is ServerError
    assert error.__context__ is None
    assert "unexpected response from the API: <p>Bad gateway</p>" in str(error)


def _gzip_bomb(inflated: int) -> bytes:
    """Return a gzip body of ``inflated`` zero bytes: about a thousandth of that, compressed."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MB)
    return b"".join([*(packer.compress(block) for _ in range(inflated // MB)), packer.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 100 KB gzip body that inflates to 100 MB."""
    return _gzip_bomb(100 * MB)


@CALLS
@pytest.mark.parametrize("status", [200, 500])
async def test_a_gzip_bomb_is_not_inflated_past_the_cap(
    server: LocalServer, call: Call, status: int, bomb: bytes, traced: Callable[[], int]
) -> None:
    """A 100 KB gzip body of 100 MB is inflated only to the cap, a chunk at a time, then refused."""
    # aiohttp 3.14 inflates as the body is read (at most about 64 KB per read): it is the reader
    # that must stop. Regression: response.read() inflated all 100 MB.
    assert len(bomb) < 200 * 1024

    async def handler(request: web.Request) -> web.StreamResponse:
        # text/plain: the small cap, for a 200 and a 500 alike (a JSON 200 is the next test's).
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        return web.Response(body=bomb, status=status, headers=headers)

    server.handler = handler
    error = await _raises(call, server.base_url)
    assert traced() < 4 * MB
    assert type(error) is ServerError
    assert f"exceeded {MAX_ERROR_BODY_BYTES} bytes" in str(error)


async def test_a_json_200_past_the_success_cap_is_refused(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, bomb: bytes, traced: Callable[[], int]
) -> None:
    """A 200 JSON answer is read up to MAX_BODY_BYTES (lowered here to 1 MiB), gzip or not, then refused."""
    monkeypatch.setattr(_http, "MAX_BODY_BYTES", MB)  # the real 64 MiB would cost the test 64 MiB

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=bomb, headers=headers)

    server.handler = handler
    error = await _raises(generate_once, server.base_url)
    assert traced() < 8 * MB
    assert type(error) is ServerError
    assert error.status_code == 200
    assert f"exceeded {MB} bytes" in str(error)


async def test_a_json_200_past_the_success_cap_costs_the_cap_once(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, bomb: bytes, traced: Callable[[], int]
) -> None:
    """Refusing a JSON 200 past its cap (lowered to 8 MiB) holds the cap once, not twice over."""
    # Regression: its head was cut from all the parts joined: a second copy, 64 MiB more at the real cap.
    monkeypatch.setattr(_http, "MAX_BODY_BYTES", 8 * MB)

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=bomb, headers=headers)

    server.handler = handler
    error = await _raises(generate_once, server.base_url)
    assert f"exceeded {8 * MB} bytes" in str(error)
    assert traced() < 12 * MB


async def test_a_json_200_under_the_success_cap_is_read(server: LocalServer) -> None:
    """An answer of 2 MiB of text (above the error cap, far under the success cap) is read whole."""
    text = "x" * (2 * MB)
    server.handler = json_handler(success_body(text))
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        assert (await client.generate_text(model="m", prompt="p")).text == text
    assert MAX_BODY_BYTES >= 64 * MB


@CALLS
async def test_a_content_length_past_the_cap_is_believed(call: Call, traced: Callable[[], int]) -> None:
    """A body declaring 1 GB is refused after its head is read, without waiting for the rest."""

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        head = http_head(500, {"Content-Type": "text/html", "Content-Length": str(1024 * MB)})
        await conn.send(head, b"<h1>Internal error</h1>" + b" " * 8192)
        await conn.reader.read()  # until the client hangs up: it must not wait for the gigabyte

    async with RawServer(handle) as raw:
        error = await _raises(call, raw.base_url)
    assert type(error) is ServerError
    assert f"exceeded {MAX_ERROR_BODY_BYTES} bytes" in str(error)
    assert "Internal error" in str(error)
    assert traced() < 4 * MB


async def test_a_content_length_longer_than_the_body_is_a_broken_connection() -> None:
    """A body that ends before the length it declared is a cut connection, retried as such."""

    async def handle(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(http_head(502, {"Content-Type": "text/html", "Content-Length": "5000"}), b"<p>short")

    async with RawServer(handle) as raw:
        error = await _raises(generate_once, raw.base_url)
    assert type(error) is APIConnectionError


# --- an answer that trickles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type"), [(503, "text/html"), (200, "application/json")], ids=["503-html", "200-json"]
)
async def test_a_trickled_answer_to_a_stream_ends_at_stream_idle(
    server: LocalServer, status: int, content_type: str
) -> None:
    """A stream's answer that is no event stream, sent a byte per 0.1 s, times out after stream_idle."""
    # Regression: read_body was bounded per read only (sock_read), never as a whole, and a stream
    # has no total: a 64 KiB page trickled under stream_idle per byte kept the stream open for hours.

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            for _ in range(600):  # a minute at most: the test fails by its timeout before
                await response.write(b" ")
                await asyncio.sleep(0.1)
        except ConnectionError:  # the client gave up: what we expect
            pass
        return response

    server.handler = handler
    timeout = Timeout(stream_idle=0.5)
    started = asyncio.get_running_loop().time()
    error = await _raises(stream_once, server.base_url, timeout=timeout)
    assert type(error) is APITimeoutError
    assert f"no data event for 0.5 s: the stream's HTTP {status} answer" in str(error)
    assert asyncio.get_running_loop().time() - started < 15  # 0.5 s, and the machine is busy


# --- an event that never ends ------------------------------------------------------------------------


async def test_an_event_that_never_ends_is_refused_at_the_event_cap(
    server: LocalServer, traced: Callable[[], int]
) -> None:
    """Data lines without the blank line ending their event are refused past MAX_EVENT_BYTES, typed."""
    # Regression: 100 MB of 1 KB data lines were all buffered (each line was under MAX_LINE_BYTES).
    line = b"data: " + b"x" * 1018 + b"\n"
    writes = (MAX_EVENT_BYTES + 4 * MB) // (64 * len(line))

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        try:
            await response.write(b'data: {"text": "first", "finish_reason": null}\n\n')
            for _ in range(writes):
                await response.write(line * 64)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    server.handler = handler
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        received: list[str] = []
        with pytest.raises(ServerError, match=r"malformed event stream: .* longer than") as info:
            await collect(client.stream_text(model="m", prompt="p"), received)
    assert received == ["first"]
    assert str(MAX_EVENT_BYTES) in str(info.value)
    # The event's lines, as str, and one read: the cap bounds what the decoder holds.
    assert traced() < MAX_EVENT_BYTES * 1.5 + 4 * MB


async def test_the_event_cap_holds_on_the_line_by_line_path(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRLF line ends (the general path) meet the same cap, here lowered to 64 KiB."""
    monkeypatch.setattr(_sse, "MAX_EVENT_BYTES", 64 * 1024)
    line = b"data: " + b"y" * 1000 + b"\r\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        try:
            for _ in range(200):
                await response.write(line)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    server.handler = handler
    error = await _raises(stream_once, server.base_url)
    assert type(error) is ServerError
    assert "longer than 65536 bytes" in str(error)


async def test_a_large_event_under_the_cap_is_delivered(server: LocalServer) -> None:
    """An event of 8 MiB in 8 KB lines (under the cap) is joined and delivered."""
    pad = b'"' + b"z" * 8000 + b'",'
    lines = [
        b'data: {"pad": [',
        *[b"data: " + pad] * 1024,
        b'data: ""], "text": "ok", "finish_reason": "stop"}',
    ]
    body = b"\n".join(lines) + b"\n\n"
    server.handler = _stream_bytes(body)
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        assert await collect(client.stream_text(model="m", prompt="p")) == ["ok"]


def _stream_bytes(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    return handler


async def test_a_client_reads_normally_after_a_refused_body(server: LocalServer) -> None:
    """A body cut at its cap has its connection closed, not pooled: the next call opens another, and works."""
    big = _garbage(502, 10 * MB)
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await big(request) if calls == 1 else web.json_response(success_body("next"))

    peers = track_peers(server, handler)
    async with make_client(server.base_url, retry=NO_RETRY) as client:
        with pytest.raises(ServerError):
            await client.generate_text(model="m", prompt="p")
        assert (await client.generate_text(model="m", prompt="p")).text == "next"
        assert (await client.generate_text(model="m", prompt="p")).text == "next"
    assert peers[0] != peers[1]  # a new connection after the refused body
    assert peers[1] == peers[2]  # and a read one goes back to the pool


# --- what a raised error keeps alive through its traceback ---------------------------------------------


def _large_locals(error: BaseException, limit: int = 16 * 1024) -> list[str]:
    """Name the locals of ``error``'s traceback frames (its context's too) holding over ``limit`` bytes.

    A frame in a traceback keeps all its locals: an error kept by the caller (a batch's failures, a
    log record's exc_info, an error tracker) keeps them too. Counted: str and bytes, in lists, tuples
    and dicts, and in the SSE decoder's buffers.
    """
    seen: set[int] = set()

    def size(value: object, depth: int = 0) -> int:
        if id(value) in seen or depth > 4:
            return 0
        seen.add(id(value))
        if isinstance(value, (str, bytes, bytearray)):
            return len(value)
        if isinstance(value, (list, tuple)):
            return sum(size(item, depth + 1) for item in value)
        if isinstance(value, dict):
            return sum(size(item, depth + 1) for item in [*value.keys(), *value.values()])
        if isinstance(value, _sse.SSEDecoder):
            return sum(size(getattr(value, name, None), depth + 1) for name in value.__slots__)
        return 0

    found = []
    frames = 0
    for exc in exception_chain(error):
        tb = exc.__traceback__
        while tb is not None:
            frames += 1
            frame = tb.tb_frame
            found += [
                f"{frame.f_code.co_name}: {name} ({held} bytes)"
                for name, value in frame.f_locals.items()
                if (held := size(value)) > limit
            ]
            tb = tb.tb_next
    assert frames, "the error has no traceback frame: the search would prove nothing"
    return found


_BIG_TEXT = b"a" * MB  # twice in one event's line: under MAX_LINE_BYTES
KEPT_BODIES = {
    "not-json": b'{"text": "' + _BIG_TEXT * 2,
    # JSON with a field the converter refuses: its error came with the decoded value behind it
    "bad-field": b'{"status": "success", "data": {"text": "%s", "usage": 3}, "text": "%s", '
    b'"finish_reason": 5}' % (_BIG_TEXT, _BIG_TEXT),
}


@CALLS
@pytest.mark.parametrize("raw", list(KEPT_BODIES.values()), ids=list(KEPT_BODIES))
async def test_a_malformed_answer_s_error_keeps_no_body_in_its_traceback(
    server: LocalServer, call: Call, raw: bytes
) -> None:
    """A malformed 2 MB answer (or event) is a ServerError whose traceback frames hold no body."""
    # Regression: _finish's `raw`, parse_generation's `body`, a stream's `events` and parse_event's
    # `payload` stayed alive as long as the error did (a malformed 200 may be 64 MiB).
    server.handler = _answer(raw)
    error = await _raises(call, server.base_url)
    assert type(error) is ServerError
    assert str(error).startswith("malformed response:")
    assert len(str(error)) < 1000
    assert _large_locals(error) == []


async def test_an_error_page_s_error_keeps_no_body_in_its_traceback(server: LocalServer) -> None:
    """A 60 KB 503 page (under its cap, read whole) is not kept by the error's traceback either."""
    server.handler = _garbage(503, 60 * 1024)
    for call in (generate_once, stream_once):
        error = await _raises(call, server.base_url)
        assert type(error) is ServerError
        assert _large_locals(error) == []


async def test_a_json_answer_to_a_stream_keeps_no_body_in_its_traceback(server: LocalServer) -> None:
    """A stream answered by a malformed 2 MB JSON 200 (not an event stream): no body in the traceback."""
    server.handler = json_handler_raw(200, KEPT_BODIES["not-json"], "application/json")
    error = await _raises(stream_once, server.base_url)
    assert type(error) is ServerError
    assert "not JSON" in str(error)
    assert _large_locals(error) == []


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
async def test_an_event_past_its_cap_keeps_no_event_in_its_traceback(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, line_end: bytes
) -> None:
    """An event past its cap (lowered to 1 MiB) is refused; the decoder's buffers are not in the traceback."""
    # Regression: the ServerError's context was the decoder's SSEProtocolError, whose frames held the
    # decoder, and so the whole event read so far.
    monkeypatch.setattr(_sse, "MAX_EVENT_BYTES", MB)
    line = b"data: " + b"y" * 1000 + line_end

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        try:
            for _ in range(40):
                await response.write(line * 64)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    server.handler = handler
    error = await _raises(stream_once, server.base_url)
    assert type(error) is ServerError
    assert "longer than" in str(error)
    assert error.__context__ is None
    assert _large_locals(error) == []
