"""Proxies: the environment's (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, .netrc), proxy=, trust_env=False,
CONNECT tunnels to a TLS server, and a proxy's own errors, which are not blamed on the API."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nebula_async import APIConnectionError, AsyncNebulaClient
from nebula_async.testing import FakeNebulaServer
from tests._proxy import ForwardProxy
from tests.helpers import FAST_RETRY, NO_RETRY, SECRET_KEY
from tests.integration._support import CALLS, HELLO, Call, free_port, make_client

# A distinctive password: finding it anywhere but on the wire to the proxy is a leak.
PROXY_PASSWORD = "pr0xy-SECRET-93e1"


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    """A forward proxy in the test's loop, passing everything on."""
    async with ForwardProxy() as started:
        yield started


@pytest.fixture
async def tls_fake(server_tls: ssl.SSLContext) -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer speaking HTTPS with a certificate of the private CA."""
    async with FakeNebulaServer(models=["m"], replies={"p": HELLO}, ssl=server_tls) as server:
        yield server


def _api(fake: FakeNebulaServer) -> str:
    return f"POST http://127.0.0.1:{fake.port}/v1/text/generate"


# --- the environment -------------------------------------------------------------------------------


@CALLS
@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
async def test_proxy_from_the_environment_carries_the_call(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, name: str, call: Call
) -> None:
    """HTTP_PROXY or ALL_PROXY, in either case, sends a plain-http call through the proxy."""
    monkeypatch.setenv(name, proxy.url)
    async with make_client(fake.base_url) as client:
        await call(client)
    assert proxy.seen == [_api(fake)]
    assert len(fake.requests) == 1


async def test_https_proxy_is_not_used_for_a_plain_http_api(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY is for https URLs only: a plain-http API is reached directly."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    assert proxy.seen == []


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*", ".0.0.1"])
async def test_no_proxy_bypasses_the_proxy(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    """A host matched by NO_PROXY is reached directly, as requests would."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    async with make_client(fake.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == HELLO
    assert proxy.seen == []


async def test_no_proxy_with_the_port_bypasses_only_that_port(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY=host:port bypasses the proxy for that port only."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("no_proxy", f"127.0.0.1:{fake.port}")
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    monkeypatch.setenv("no_proxy", f"127.0.0.1:{free_port()}")
    async with make_client(fake.base_url) as client:
        await client.generate_text(model="m", prompt="p")
    assert proxy.seen == [_api(fake)]


async def test_proxy_argument_overrides_the_environment(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """proxy= wins over HTTP_PROXY and NO_PROXY."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_client(fake.base_url, proxy=proxy.url) as client:
        await client.generate_text(model="m", prompt="p")
    assert proxy.seen == [_api(fake)]


async def test_trust_env_false_ignores_proxy_variables(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trust_env=False connects directly whatever HTTP_PROXY and ALL_PROXY say."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    async with make_client(fake.base_url, trust_env=False) as client:
        await client.generate_text(model="m", prompt="p")
    assert proxy.seen == []


async def test_environment_is_read_when_the_client_is_made(
    fake: FakeNebulaServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy variable set after the client was made does not change that client's route."""
    async with make_client(fake.base_url) as client:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        await client.generate_text(model="m", prompt="p")
    assert proxy.seen == []


# --- credentials ----------------------------------------------------------------------------------


async def test_credentials_in_the_proxy_url_reach_the_proxy_and_nowhere_else(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """user:password in proxy= authenticate to the proxy; they never show in a repr or a log."""
    caplog.set_level(logging.DEBUG)
    async with ForwardProxy(credentials=("alice", PROXY_PASSWORD)) as proxy:
        client = make_client(fake.base_url, proxy=proxy.url_with("alice", PROXY_PASSWORD))
        async with client:
            result = await client.generate_text(model="m", prompt="p")
            shown = repr(client)
    assert result.text == HELLO
    assert proxy.authorizations[0] is not None
    assert proxy.authorizations[0].startswith("Basic ")
    assert "proxy-authorization" not in {name.lower() for name in fake.requests[0].headers}
    assert PROXY_PASSWORD not in shown + caplog.text


async def test_netrc_supplies_credentials_for_a_proxy_from_the_environment(
    fake: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A proxy from HTTP_PROXY without credentials takes them from .netrc, as aiohttp's trust_env would."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {PROXY_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with ForwardProxy(credentials=("bob", PROXY_PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with make_client(fake.base_url) as client:
            result = await client.generate_text(model="m", prompt="p")
    assert result.text == HELLO
    assert fake.requests[0].api_key == SECRET_KEY  # .netrc is for the proxy, not the API


async def test_wrong_proxy_credentials_raise_a_407_error_without_them(
    fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 407 to a plain-http call is the proxy's: not retried, named, and the password never echoed."""
    caplog.set_level(logging.DEBUG)
    async with ForwardProxy(credentials=("alice", "right")) as proxy:
        client = make_client(fake.base_url, proxy=proxy.url_with("alice", PROXY_PASSWORD))
        async with client:
            with pytest.raises(APIConnectionError) as info:
                await client.generate_text(model="m", prompt="p")
    message = str(info.value)
    assert f"the proxy {proxy.url} (from proxy=) answered 407" in message
    assert "credentials" in message
    assert info.value.retryable is False
    assert len(proxy.seen) == 1  # not retried
    assert fake.requests == []
    assert PROXY_PASSWORD not in message + caplog.text


# --- a proxy's own errors -----------------------------------------------------------------------------


async def test_proxy_that_refuses_connections_is_named(
    fake: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy nobody listens on gives an APIConnectionError naming it and the variable it came from."""
    port = free_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PROXY_PASSWORD}@127.0.0.1:{port}")
    async with make_client(fake.base_url, retry=NO_RETRY) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate_text(model="m", prompt="p")
    message = str(info.value)
    assert f"could not connect to the proxy http://127.0.0.1:{port} (from HTTP_PROXY)" in message
    assert "NO_PROXY" in message
    assert "trust_env=False" in message
    assert "ConnectionRefusedError" in message
    assert PROXY_PASSWORD not in message + repr(info.value.__cause__)
    assert isinstance(info.value.__cause__, aiohttp.ClientProxyConnectionError)


@pytest.mark.parametrize(("status", "retryable"), [(407, False), (403, False), (502, True), (503, True)])
async def test_proxy_error_answer_to_connect_is_the_proxys(
    tls_fake: FakeNebulaServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch, status: int, retryable: bool
) -> None:
    """A proxy answering CONNECT with 407/403 (not retried) or 502/503 (retried) raises an error naming it."""
    async with ForwardProxy(answer=status) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with make_client(tls_fake.base_url, verify=ca_file, retry=FAST_RETRY) as client:
            with pytest.raises(APIConnectionError) as info:
                await client.generate_text(model="m", prompt="p")
    assert f"the proxy {proxy.url} (from HTTPS_PROXY) answered {status}" in str(info.value)
    assert info.value.retryable is retryable
    assert len(proxy.seen) == (FAST_RETRY.max_retries + 1 if retryable else 1)
    assert all(line == f"CONNECT 127.0.0.1:{tls_fake.port}" for line in proxy.seen)
    assert tls_fake.requests == []


async def test_proxy_407_to_connect_hides_the_proxy_credentials(
    tls_fake: FakeNebulaServer, ca_file: Path
) -> None:
    """Neither our error nor aiohttp's chained one shows the proxy's password or Proxy-Authorization."""
    async with ForwardProxy(credentials=("alice", "other")) as proxy:
        url = proxy.url_with("alice", PROXY_PASSWORD)
        async with make_client(tls_fake.base_url, verify=ca_file, proxy=url) as client:
            with pytest.raises(APIConnectionError) as info:
                await client.generate_text(model="m", prompt="p")
    cause = info.value.__cause__
    assert isinstance(cause, aiohttp.ClientHttpProxyError)
    shown = f"{info.value} {cause} {cause!r} {cause.request_info!r} {cause.args!r}"
    assert PROXY_PASSWORD not in shown
    sent = proxy.authorizations[0]
    assert sent is not None
    assert sent not in shown


@pytest.mark.parametrize("login", [False, True], ids=["no-proxy-login", "proxy-login"])
async def test_the_api_key_never_reaches_the_proxy_of_an_https_api(
    tls_fake: FakeNebulaServer, ca_file: Path, login: bool
) -> None:
    """The CONNECT carries the proxy's own login or none: never the API key (aiohttp would send it as one)."""
    async with ForwardProxy(credentials=("alice", PROXY_PASSWORD) if login else None) as proxy:
        url = proxy.url_with("alice", PROXY_PASSWORD) if login else proxy.url
        client = make_client(tls_fake.base_url, verify=ca_file, proxy=url)  # with SECRET_KEY
        async with client:
            await client.generate_text(model="m", prompt="p")
    sent = proxy.authorizations[0]
    assert (sent is not None and sent.startswith("Basic ")) if login else sent is None
    assert tls_fake.requests[0].api_key == SECRET_KEY  # the key went to the API, inside the tunnel


async def test_a_certificate_error_through_a_proxy_hides_the_proxy_credentials(
    tls_fake: FakeNebulaServer, proxy: ForwardProxy
) -> None:
    """aiohttp's connection errors hold the proxy URL in their args: it has no credentials in it."""
    url = proxy.url_with("alice", PROXY_PASSWORD)
    async with make_client(tls_fake.base_url, proxy=url) as client:  # the private CA is not trusted
        with pytest.raises(APIConnectionError, match="certificate did not verify") as info:
            await client.generate_text(model="m", prompt="p")
    cause = info.value.__cause__
    assert PROXY_PASSWORD not in f"{info.value!r} {cause!r} {cause}"


@pytest.mark.parametrize(
    ("status", "advice"), [(401, "credentials"), (403, "does not let"), (503, "could not")]
)
async def test_a_proxy_refusal_gives_advice_for_its_status(
    tls_fake: FakeNebulaServer, ca_file: Path, status: int, advice: str
) -> None:
    """401 (tinyproxy's answer to a bad login) is about credentials; other 4xx a refusal; 5xx the upstream."""
    async with ForwardProxy(answer=status) as proxy:
        client = make_client(tls_fake.base_url, verify=ca_file, proxy=proxy.url, retry=NO_RETRY)
        async with client:
            with pytest.raises(APIConnectionError, match=advice) as info:
                await client.generate_text(model="m", prompt="p")
    assert info.value.retryable is (status >= 500)


# --- CONNECT and streams ------------------------------------------------------------------------------


@CALLS
async def test_https_api_is_reached_through_a_connect_tunnel(
    tls_fake: FakeNebulaServer,
    ca_file: Path,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    call: Call,
) -> None:
    """HTTPS_PROXY tunnels an https call with CONNECT; the private CA verifies the API inside it."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with make_client(tls_fake.base_url, verify=str(ca_file)) as client:
        await call(client)
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls_fake.port}"]
    assert len(tls_fake.requests) == 1


@pytest.mark.parametrize("tls", [False, True], ids=["http", "connect"])
async def test_stream_through_the_proxy_arrives_incrementally(
    fake: FakeNebulaServer, tls_fake: FakeNebulaServer, ca_file: Path, proxy: ForwardProxy, tls: bool
) -> None:
    """Through the proxy, each chunk arrives as it is sent: the first long before the last is written."""
    server = tls_fake if tls else fake
    server.token_delay = 0.15
    async with make_client(server.base_url, proxy=proxy.url, verify=ca_file) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        arrivals = []
        async with client.stream_text(model="m", prompt="p") as stream:
            async for _ in stream:
                arrivals.append(loop.time() - started)
    assert len(arrivals) == 4  # HELLO is four chunks, 0.15 s apart
    assert arrivals[-1] - arrivals[0] >= 0.3  # the first came at least two token delays before the last
    assert len(proxy.seen) == 1


# --- bad settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("127.0.0.1:3128", "proxy= must be a URL with a scheme"),
        (f"socks5://u:{PROXY_PASSWORD}@127.0.0.1:1080", r"proxy= is a socks5:// proxy.*http:// and https://"),
        ("http://:3128", "proxy= has no host"),
        (f"http://u:{PROXY_PASSWORD}@127.0.0.1:99999", "proxy= has a port that is not a number"),
    ],
)
def test_bad_proxy_url_raises_value_error_naming_the_setting(value: str, match: str) -> None:
    """A proxy aiohttp can't use fails when the client is made, without echoing credentials."""
    with pytest.raises(ValueError, match=match) as info:
        AsyncNebulaClient(SECRET_KEY, proxy=value)
    assert PROXY_PASSWORD not in str(info.value)


def test_bad_proxy_variable_raises_value_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad HTTPS_PROXY fails when the client is made, naming HTTPS_PROXY."""
    monkeypatch.setenv("HTTPS_PROXY", f"socks5h://u:{PROXY_PASSWORD}@127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY is a socks5h:// proxy") as info:
        AsyncNebulaClient(SECRET_KEY)
    assert PROXY_PASSWORD not in str(info.value)


def test_proxy_of_the_wrong_type_raises_type_error() -> None:
    """proxy= takes a URL string."""
    with pytest.raises(TypeError, match="proxy must be a URL string or None, got int"):
        AsyncNebulaClient(SECRET_KEY, proxy=3128)  # type: ignore[arg-type]  # what is tested


@pytest.mark.parametrize(
    "kwargs",
    [{"proxy": "http://127.0.0.1:3128"}, {"verify": False}, {"trust_env": False}],
    ids=["proxy", "verify", "trust_env"],
)
async def test_network_settings_with_a_session_raise_type_error(kwargs: dict[str, object]) -> None:
    """proxy=, verify= and trust_env=False with session= are refused: the caller's session is theirs."""
    async with aiohttp.ClientSession() as session:
        name = next(iter(kwargs))
        with pytest.raises(TypeError, match=rf"^{name}= can't be combined with session=.*configure it"):
            AsyncNebulaClient(SECRET_KEY, session=session, **kwargs)  # type: ignore[arg-type]


def test_trust_env_must_be_a_bool() -> None:
    """trust_env takes True or False only."""
    with pytest.raises(TypeError, match="trust_env must be True or False, got str"):
        AsyncNebulaClient(SECRET_KEY, trust_env="no")  # type: ignore[arg-type]  # what is tested
