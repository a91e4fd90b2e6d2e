"""The API key, over every flow: never in a log line, an error, a repr, a traceback's locals or CLI output.

Every test here runs with all logging at DEBUG (root, aiohttp, asyncio, nebula_async) and fails if
a record holds the key, its Bearer form, or its first or last 12 characters. Errors are searched
as a user or an error tracker would see them: str, repr, the formatted chain, and the locals of
every nebula_async/nebula_sync frame of every traceback in the chain, walked recursively into
containers and into our own objects' attributes. aiohttp's own frames are not searched: its session
holds the Authorization header it sends (see README, "Security").

Also: redirects are never followed (the key never reaches another server), TLS verification is on
by default, and a plain http:// base URL to another machine logs one warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import secrets
import ssl
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import pytest
from aiohttp import web

import nebula_async
import nebula_sync
from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNebulaClient,
    AuthenticationError,
    ModelNotFoundError,
    NebulaError,
    ServerError,
)
from nebula_async._secret import Secret
from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient
from tests._proxy import ForwardProxy
from tests.cli._support import cli_env, nebula
from tests.helpers import FAST_RETRY, KNOWN_CODES, NO_RETRY, exception_chain
from tests.integration._support import HELLO, catch_all, collect, free_port

KEY = "sk-SECRET-" + secrets.token_hex(16)  # distinctive and new per run: any sighting is a leak
NEEDLES = (KEY, f"Bearer {KEY}", KEY[:12], KEY[-12:])
OURS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (nebula_async, nebula_sync))
LOGGERS = ("", "aiohttp", "asyncio", "nebula_async")
MAX_DEPTH = 8  # how deep the walk goes into containers and our objects from a frame's local


def _assert_hidden(text: str, where: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, f"the API key ({needle[:4]}...) shows in {where}"


# --- searching an error as an error tracker would ---------------------------------------------------


def _our_frames(exc: BaseException) -> Iterator[FrameType]:
    """Yield every nebula_async/nebula_sync frame of the tracebacks of ``exc`` and its chain."""
    for error in exception_chain(exc):
        tb: TracebackType | None = error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(OURS):
                yield tb.tb_frame
            tb = tb.tb_next


def _walk(value: object, path: str, depth: int, seen: set[int], found: list[str], met: set[type]) -> None:
    """Append to ``found`` the path of every str or bytes under ``value`` that holds the key."""
    if id(value) in seen or depth > MAX_DEPTH:
        return
    seen.add(id(value))
    met.add(type(value))
    if isinstance(value, str):
        if any(needle in value for needle in NEEDLES):
            found.append(path)
        return
    if isinstance(value, (bytes, bytearray)):
        if any(needle.encode() in value for needle in NEEDLES):
            found.append(path)
        return
    if isinstance(value, dict):
        for k, v in list(value.items()):
            _walk(k, f"{path} key", depth + 1, seen, found, met)
            _walk(v, f"{path}[{k!r}]", depth + 1, seen, found, met)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(list(value)):
            _walk(item, f"{path}[{i}]", depth + 1, seen, found, met)
    if not type(value).__module__.startswith(("nebula_async", "nebula_sync")):
        return  # aiohttp's objects, the event loop, modules...: not ours to search
    attributes = dict(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(value, name):
                attributes[name] = getattr(value, name)
    for name, attribute in attributes.items():
        _walk(attribute, f"{path}.{name}", depth + 1, seen, found, met)


def _assert_error_hides_key(exc: BaseException, *, key_was_given: bool = True) -> None:
    """Search ``exc`` as a user, a log and an error tracker would see it; fail on any sighting."""
    for error in exception_chain(exc):
        _assert_hidden(str(error), f"str() of {type(error).__name__}")
        _assert_hidden(repr(error), f"repr() of {type(error).__name__}")
        in_error: list[str] = []
        _walk(error.__dict__, f"{type(error).__name__}.__dict__", 0, set(), in_error, set())
        assert not in_error, in_error
    _assert_hidden("".join(traceback.format_exception(exc)), "the formatted traceback")
    summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
    for summary_frame in _summary_frames(summary):
        if summary_frame.filename.startswith(OURS):
            where = f"locals of {summary_frame.name} ({summary_frame.filename}:{summary_frame.lineno})"
            _assert_hidden(repr(summary_frame.locals), where)
    frames = list(_our_frames(exc))
    assert frames, "no frame of ours in the traceback: the search below would prove nothing"
    found: list[str] = []
    met: set[type] = set()
    for frame in frames:
        # dict(): from 3.13 on, f_locals is a FrameLocalsProxy (PEP 667), not a dict the walk enters.
        _walk(dict(frame.f_locals), f"{frame.f_code.co_name}()", 0, set(), found, met)
    assert not found, f"the key is held as a str at {found}"
    if key_was_given:
        assert Secret in met  # the walk did reach where the key is kept


def _summary_frames(summary: traceback.TracebackException) -> Iterator[traceback.FrameSummary]:
    for each in exception_chain(summary):
        yield from each.stack


# --- every log record, at DEBUG ---------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record) + repr(record.args))


@pytest.fixture(autouse=True)
def logs() -> Iterator[_Records]:
    """Every log record of the test, at DEBUG for every logger; none may hold the key."""
    handler = _Records()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    for line in handler.lines:
        _assert_hidden(line, f"a log line: {line[:80]!r}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer that accepts only KEY, with asyncio's debug mode on in the test's loop."""
    asyncio.get_running_loop().set_debug(True)
    async with FakeNebulaServer(models=["m"], replies={"p": HELLO}, api_keys=[KEY]) as server:
        yield server


def _client(base_url: str, key: str | None = KEY, **kwargs: Any) -> AsyncNebulaClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return AsyncNebulaClient(key, base_url=base_url, **kwargs)


# --- constructor errors -----------------------------------------------------------------------------

BAD_ARGUMENTS: dict[str, dict[str, Any]] = {
    "base_url": {"base_url": "ftp://nowhere"},
    "base_url with credentials": {"base_url": "https://user:pw@api.example/v1"},
    "timeout": {"timeout": -1},
    "max_retries": {"max_retries": -1},
    "retry": {"retry": "often"},
    "max_connections": {"max_connections": 0},
    "default_headers": {"default_headers": {"X-Bad": "a\nb"}},
    "Authorization header": {"default_headers": {"Authorization": "Bearer other"}},
    "proxy": {"proxy": "socks5://127.0.0.1:1"},
    "verify": {"verify": 3},
    "trust_env": {"trust_env": "yes"},
    "rate_limit": {"rate_limit": 600},
}


@pytest.mark.parametrize("client_class", [AsyncNebulaClient, NebulaClient])
@pytest.mark.parametrize("from_env", [False, True], ids=["argument", "NEBULA_API_KEY"])
@pytest.mark.parametrize("arguments", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_constructor_error_holds_no_key(
    monkeypatch: pytest.MonkeyPatch, client_class: type[Any], from_env: bool, arguments: dict[str, Any]
) -> None:
    """A bad argument's error, its traceback and our frames' locals hide the key, wherever it came from."""
    # Regression: api_key/key sat as a str in the locals of both __init__s, check_api_key and build_headers.
    if from_env:
        monkeypatch.setenv("NEBULA_API_KEY", KEY)
    with pytest.raises((TypeError, ValueError)) as info:
        client_class(None if from_env else KEY, **arguments)
    _assert_error_hides_key(info.value)


@pytest.mark.parametrize("client_class", [AsyncNebulaClient, NebulaClient])
@pytest.mark.parametrize(
    "bad_key", [KEY + " ", KEY + "\n", f"{KEY}é", ""], ids=["space", "newline", "non-ascii", "empty"]
)
def test_bad_key_error_holds_no_key(client_class: type[Any], bad_key: str) -> None:
    """A key that can't be sent is refused without the error, its chain or our frames holding it."""
    with pytest.raises((NebulaError, ValueError)) as info:
        client_class(bad_key, base_url="https://api.example/v1")
    _assert_error_hides_key(info.value, key_was_given=bool(bad_key))


# --- call errors, and the flows around them ---------------------------------------------------------


@pytest.mark.parametrize(("code", "status", "cls"), KNOWN_CODES, ids=[c for c, _, _ in KNOWN_CODES])
async def test_api_error_holds_no_key(
    fake: FakeNebulaServer, status: int, code: str, cls: type[APIError]
) -> None:
    """Each error class, raised by a call and by a stream, hides the key everywhere."""
    fake.fail_next(2 * (FAST_RETRY.max_retries + 1), status=status, code=code, retry_after=0)
    async with _client(fake.base_url) as client:
        with pytest.raises(cls) as info:
            await client.generate_text(model="m", prompt="p")
        _assert_error_hides_key(info.value)
        with pytest.raises(cls) as stream_info:
            await collect(client.stream_text(model="m", prompt="p"), enter=True)
        _assert_error_hides_key(stream_info.value)
        _assert_hidden(repr(client), "the client's repr")


async def test_wrong_key_is_an_authentication_error_holding_neither_key(fake: FakeNebulaServer) -> None:
    """A key the API refuses gives AuthenticationError; neither that key nor ours shows anywhere."""
    async with _client(fake.base_url, key=KEY[::-1]) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate_text(model="m", prompt="p")
    assert KEY[::-1] not in "".join(traceback.format_exception(info.value))
    _assert_error_hides_key(info.value)


async def test_success_retries_and_html_error(fake: FakeNebulaServer, logs: _Records) -> None:
    """A call retried after a 429 and a 500, a streamed call and an HTML error page log nothing of the key."""
    fake.fail_next(status=429, retry_after=0)
    fake.fail_next(status=500)
    async with _client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
        assert (result.text, result.retries) == (HELLO, 2)
        stream = client.stream_text(model="m", prompt="p")
        _assert_hidden(repr(stream), "a stream's repr")
        assert "".join(await collect(stream, enter=True)) == HELLO
        _assert_hidden(repr(stream), "a finished stream's repr")
        fake.html_error_next(3, status=502)
        with pytest.raises(ServerError) as info:
            await client.generate_text(model="m", prompt="p")
        _assert_error_hides_key(info.value)
    assert any(r.levelno == logging.WARNING and "retrying" in r.getMessage() for r in logs.records)
    assert any(r.levelno == logging.DEBUG for r in logs.records)  # the search saw DEBUG lines too


async def test_stream_errors_hold_no_key(fake: FakeNebulaServer) -> None:
    """A stream cut mid-way and an error event after text both hide the key."""
    fake.token_delay = 0.005
    async with _client(fake.base_url, retry=NO_RETRY) as client:
        fake.drop_stream_after(events=2)
        with pytest.raises(APIConnectionError) as dropped:
            await collect(client.stream_text(model="m", prompt="p"), enter=True)
        _assert_error_hides_key(dropped.value)
        fake.error_event_after(events=2, code="server_error")
        with pytest.raises(ServerError) as event:
            await collect(client.stream_text(model="m", prompt="p"), enter=True)
        _assert_error_hides_key(event.value)


async def test_connection_refused_holds_no_key() -> None:
    """A refused connection, retried then raised, hides the key, for a call and a stream."""
    async with _client(f"http://127.0.0.1:{free_port()}/v1") as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
        _assert_error_hides_key(info.value)
        with pytest.raises(APIConnectionError) as stream_info:
            await collect(client.stream_text(model="m", prompt="p"))
        _assert_error_hides_key(stream_info.value)


async def test_timeout_holds_no_key(fake: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout of a client whose key came from NEBULA_API_KEY hides the key."""
    monkeypatch.setenv("NEBULA_API_KEY", KEY)
    fake.delay_next(seconds=2.0)
    async with _client(fake.base_url, key=None, timeout=0.2, retry=NO_RETRY) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.generate_text(model="m", prompt="p")
    _assert_error_hides_key(info.value)


async def test_generate_many_and_as_completed(fake: FakeNebulaServer) -> None:
    """generate_many's collected errors and as_completed's outcomes hide the key."""
    requests = [{"model": "m", "prompt": "p"}, {"model": "nope", "prompt": "p"}]
    async with _client(fake.base_url) as client:
        results = await client.generate_many(requests, return_exceptions=True)
        assert isinstance(results[1], ModelNotFoundError)
        _assert_error_hides_key(results[1])
        errors = 0
        async with client.as_completed(requests) as outcomes:
            async for outcome in outcomes:
                _assert_hidden(repr(outcome), "an outcome's repr")
                if outcome.error is not None:
                    errors += 1
                    _assert_error_hides_key(outcome.error)
        assert errors == 1  # the "nope" request's outcome was searched: the loop was not vacuous


async def test_run_batch_records_hold_no_key(fake: FakeNebulaServer, tmp_path: Path) -> None:
    """run_batch's output file, its summary and its progress reports hide the key."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "p"}\n{"id": 2, "prompt": "p", "model": "nope"}\n')
    output = tmp_path / "out.jsonl"
    reports: list[str] = []
    async with _client(fake.base_url) as client:
        summary = await client.run_batch(
            source, output, model="m", progress=lambda p: reports.append(repr(p))
        )
    _assert_hidden(repr(summary), "the batch summary")
    _assert_hidden("".join(reports), "the batch progress")
    text = output.read_text()
    assert '"model_not_found"' in text
    _assert_hidden(text, "the batch output file")


async def test_through_a_proxy(fake: FakeNebulaServer) -> None:
    """Through a forward proxy, errors hide the key and the proxy never receives it as its own login."""
    async with ForwardProxy() as proxy, _client(fake.base_url, proxy=proxy.url) as client:
        assert (await client.generate_text(model="m", prompt="p")).text == HELLO
        fake.fail_next(3, status=500)
        with pytest.raises(ServerError) as info:
            await client.generate_text(model="m", prompt="p")
    _assert_error_hides_key(info.value)
    assert proxy.authorizations  # the proxy saw the connections
    assert not any(proxy.authorizations)  # and no Proxy-Authorization among them


def test_sync_client_success_and_errors() -> None:
    """The sync client's results, errors (raised through its loop thread) and repr hide the key."""
    with (
        FakeNebulaServer(models=["m"], replies={"p": HELLO}, api_keys=[KEY]).run_in_thread() as server,
        NebulaClient(KEY, base_url=server.base_url, retry=FAST_RETRY) as client,
    ):
        assert client.generate_text(model="m", prompt="p").text == HELLO
        _assert_hidden(repr(client), "the sync client's repr")
        with pytest.raises(ModelNotFoundError) as info:
            client.generate_text(model="nope", prompt="p")
        _assert_error_hides_key(info.value)
        server.error_event_after(events=1, code="server_error")
        with pytest.raises(ServerError) as stream_info, client.stream_text(model="m", prompt="p") as stream:
            for _ in stream:
                pass
        _assert_error_hides_key(stream_info.value)


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_server() -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer in a thread, for `nebula` processes."""
    with FakeNebulaServer(models=["m"], replies={"p": HELLO}, api_keys=[KEY]).run_in_thread() as server:
        yield server


def _run_cli(*args: str, env: dict[str, str]) -> str:
    proc = nebula(*args, env=env)
    out = proc.stdout + proc.stderr
    _assert_hidden(out, f"the output of `nebula {' '.join(args[:3])}`")
    return out


@pytest.mark.parametrize("key_from", ["env", "option"])
def test_cli_output_hides_the_key(cli_server: FakeNebulaServer, tmp_path: Path, key_from: str) -> None:
    """`nebula generate` and `nebula batch` at -vv, succeeding and failing, never print the key."""
    env = cli_env(NEBULA_BASE_URL=cli_server.base_url)
    given: tuple[str, ...] = ("--api-key", KEY) if key_from == "option" else ()
    if key_from == "env":
        env["NEBULA_API_KEY"] = KEY
    assert HELLO in _run_cli(*given, "-vv", "generate", "-m", "m", "p", env=env)
    cli_server.fail_next(3, status=500)
    assert "server_error" in _run_cli(*given, "-vv", "generate", "-m", "m", "--stream", "p", env=env)
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"id": 1, "prompt": "p"}\n{"id": 2, "prompt": "p", "model": "nope"}\n')
    out = _run_cli(*given, "-vv", "batch", str(source), "-o", str(output), "-m", "m", env=env)
    assert "--api-key" not in out or key_from == "option"
    _assert_hidden(output.read_text(), "the CLI batch's output file")
    _run_cli(*given, "-v", "--base-url", "ftp://x", "generate", "p", env=env)  # a usage error


def test_cli_wrong_key_error_hides_it(cli_server: FakeNebulaServer) -> None:
    """A refused key's error output shows neither that key nor the real one."""
    env = cli_env(NEBULA_BASE_URL=cli_server.base_url, NEBULA_API_KEY=KEY[::-1])
    out = nebula("-vv", "generate", "-m", "m", "p", env=env)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "invalid_api_key" in text
    assert KEY[::-1] not in text


# --- redirects, TLS, cleartext ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_redirect_never_carries_the_key_elsewhere(status: int, stream: bool) -> None:
    """A redirect to another server is not followed: that server never gets a request, nor the key."""

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "success", "data": {"text": "stolen"}})

    async with catch_all(elsewhere) as (other_url, other_seen):

        async def moved(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": f"{other_url}/v1/text/generate"})

        async with catch_all(moved) as (base_url, seen), _client(base_url) as client:
            call = (
                collect(client.stream_text(model="m", prompt="p"))
                if stream
                else client.generate_text(model="m", prompt="p")
            )
            with pytest.raises(APIError) as info:
                await call
    assert seen == [("POST", "/v1/text/generate")]
    assert other_seen == []
    assert "redirected" in str(info.value)
    assert info.value.status_code == status
    _assert_error_hides_key(info.value)


async def test_tls_verification_is_on_by_default(server_tls: ssl.SSLContext) -> None:
    """A client with the default verify= refuses a certificate no system CA signed, before sending."""
    async with (
        FakeNebulaServer(models=["m"], replies={"p": HELLO}, ssl=server_tls) as server,
        _client(server.base_url, retry=NO_RETRY) as client,
    ):
        assert server.base_url.startswith("https://127.0.0.1:")
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
        assert "certificate did not verify" in str(info.value)
        assert info.value.retryable is False
        assert server.requests == []
    _assert_error_hides_key(info.value)


def _cleartext_warnings(logs: _Records) -> list[logging.LogRecord]:
    return [r for r in logs.records if r.name == "nebula_async" and "unencrypted" in r.getMessage()]


@pytest.mark.parametrize("client_class", [AsyncNebulaClient, NebulaClient])
@pytest.mark.parametrize(
    ("base_url", "host"),
    [
        ("http://api.example.com/v1", "api.example.com"),
        ("http://10.0.0.7:8080/v1", "10.0.0.7"),
        ("http://[fe80::1]/v1", "fe80::1"),
        ("http://[::ffff:10.0.0.7]/v1", "::ffff:10.0.0.7"),
        ("http://localhost.example/v1", "localhost.example"),
    ],
)
def test_cleartext_base_url_logs_one_warning(
    logs: _Records, client_class: Callable[..., Any], base_url: str, host: str
) -> None:
    """An http:// base URL to another machine logs one WARNING per client naming the host, not the key."""
    client = client_class(KEY, base_url=base_url)  # nothing is sent when a client is made
    try:
        (record,) = _cleartext_warnings(logs)
        assert record.levelno == logging.WARNING
        assert host in record.getMessage()
    finally:
        if isinstance(client, NebulaClient):
            client.close()


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.example.com/v1",
        "http://127.0.0.1:8080/v1",
        "http://127.8.9.10/v1",
        "http://[::1]:8080/v1",
        "http://[::ffff:127.0.0.1]:8080/v1",  # IPv4-mapped: loopback on 3.13 only, for ipaddress
        "http://localhost:8080/v1",
        "http://LOCALHOST./v1",
    ],
)
def test_https_or_loopback_base_url_logs_nothing(logs: _Records, base_url: str) -> None:
    """https://, or http:// to this machine's loopback, logs no cleartext warning."""
    AsyncNebulaClient(KEY, base_url=base_url)
    assert _cleartext_warnings(logs) == []


def test_cleartext_warning_from_the_environment(logs: _Records, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEBULA_BASE_URL to another machine over http:// warns as the argument does."""
    monkeypatch.setenv("NEBULA_BASE_URL", "http://api.example.com/v1")
    AsyncNebulaClient(KEY)
    assert len(_cleartext_warnings(logs)) == 1


# --- the Secret itself ------------------------------------------------------------------------------


def test_secret_holds_no_copy_of_the_key() -> None:
    """A Secret's repr is redacted, no attribute holds the key, and it refuses to be pickled."""
    secret = Secret(KEY)
    assert secret.reveal() == KEY
    _assert_hidden(repr(secret), "a Secret's repr")
    found: list[str] = []
    _walk(secret, "secret", 0, set(), found, set())
    assert found == []
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(secret)


@pytest.mark.parametrize("value", ["", "a", "\x00sk-0", "é\ud800", "Bearer " + "z" * 300])
def test_secret_gives_back_any_str(value: str) -> None:
    """reveal() returns exactly what was wrapped: leading NULs, non-ASCII, lone surrogates, long values."""
    assert Secret(value).reveal() == value
    assert bool(Secret(value)) == bool(value)
