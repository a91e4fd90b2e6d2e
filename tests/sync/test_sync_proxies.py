"""The blocking client through a proxy: environment, proxy=, trust_env=False, credentials, CONNECT."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import APIConnectionError, NebulaClient
from tests._proxy import ForwardProxy
from tests.helpers import FAST_RETRY
from tests.sync._support import KEY, echo_reply, loop_threads

PROXY_PASSWORD = "pr0xy-SECRET-5c2d"  # distinctive: found anywhere but on the wire, it is a leak


@pytest.fixture
def proxy_thread() -> Iterator[ForwardProxy]:
    """A forward proxy running in a thread of its own."""
    with ForwardProxy().in_thread() as proxy:
        yield proxy


@pytest.fixture
def tls_fake_thread(server_tls: ssl.SSLContext) -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer speaking HTTPS with a certificate of the private CA, in its own thread."""
    with FakeNebulaServer(models=["m"], reply=echo_reply, ssl=server_tls).run_in_thread() as server:
        yield server


def _api(fake: FakeNebulaServer) -> str:
    return f"POST http://127.0.0.1:{fake.port}/v1/text/generate"


@pytest.mark.parametrize("name", ["HTTP_PROXY", "all_proxy"])
def test_proxy_from_the_environment_carries_calls_and_streams(
    fake_thread: FakeNebulaServer, proxy_thread: ForwardProxy, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """HTTP_PROXY or ALL_PROXY sends the sync client's calls and streams through the proxy."""
    monkeypatch.setenv(name, proxy_thread.url)
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client.generate_text(model="m", prompt="hi").text == "echo: hi"
        with client.stream_text(model="m", prompt="yo") as stream:
            assert "".join(chunk.text for chunk in stream) == "echo: yo"
    assert proxy_thread.seen[0] == _api(fake_thread)  # one connection, kept for both calls
    assert len(fake_thread.requests) == 2


def test_no_proxy_bypasses_the_proxy(
    fake_thread: FakeNebulaServer, proxy_thread: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host in NO_PROXY is reached directly."""
    monkeypatch.setenv("HTTP_PROXY", proxy_thread.url)
    monkeypatch.setenv("NO_PROXY", "localhost, 127.0.0.1")
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        client.generate_text(model="m", prompt="hi")
    assert proxy_thread.seen == []


def test_proxy_argument_overrides_and_trust_env_false_ignores_the_environment(
    fake_thread: FakeNebulaServer, proxy_thread: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """proxy= wins over NO_PROXY; trust_env=False ignores HTTP_PROXY."""
    monkeypatch.setenv("HTTP_PROXY", proxy_thread.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with NebulaClient(KEY, base_url=fake_thread.base_url, proxy=proxy_thread.url) as client:
        client.generate_text(model="m", prompt="hi")
    assert proxy_thread.seen == [_api(fake_thread)]
    monkeypatch.delenv("NO_PROXY")
    with NebulaClient(KEY, base_url=fake_thread.base_url, trust_env=False) as client:
        client.generate_text(model="m", prompt="hi")
    assert len(proxy_thread.seen) == 1


def test_proxy_credentials_work_and_a_407_names_the_proxy_without_them(
    fake_thread: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Right credentials pass; wrong ones raise a non-retryable error naming the proxy, never the password."""
    caplog.set_level(logging.DEBUG)
    with ForwardProxy(credentials=("alice", PROXY_PASSWORD)).in_thread() as proxy:
        good = proxy.url_with("alice", PROXY_PASSWORD)
        with NebulaClient(KEY, base_url=fake_thread.base_url, proxy=good) as client:
            assert client.generate_text(model="m", prompt="hi").text == "echo: hi"
            shown = repr(client)
        bad = proxy.url_with("alice", "wrong-" + PROXY_PASSWORD)
        with (
            NebulaClient(KEY, base_url=fake_thread.base_url, proxy=bad, retry=FAST_RETRY) as client,
            pytest.raises(APIConnectionError) as info,
        ):
            client.generate_text(model="m", prompt="hi")
    assert f"the proxy {proxy.url} (from proxy=) answered 407" in str(info.value)
    assert info.value.retryable is False
    assert len(proxy.seen) == 2  # one each: the 407 was not retried
    assert PROXY_PASSWORD not in str(info.value) + shown + caplog.text


def test_proxy_502_to_connect_is_retried_and_named(
    tls_fake_thread: FakeNebulaServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy answering CONNECT with 502 is retried, then raises an error naming it and HTTPS_PROXY."""
    with ForwardProxy(answer=502).in_thread() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with (
            NebulaClient(KEY, base_url=tls_fake_thread.base_url, verify=ca_file, retry=FAST_RETRY) as client,
            pytest.raises(APIConnectionError) as info,
        ):
            client.generate_text(model="m", prompt="hi")
    assert f"the proxy {proxy.url} (from HTTPS_PROXY) answered 502" in str(info.value)
    assert info.value.retryable is True
    assert len(proxy.seen) == 3


def test_https_stream_through_a_connect_tunnel_arrives_incrementally(
    tls_fake_thread: FakeNebulaServer, ca_file: Path, proxy_thread: ForwardProxy
) -> None:
    """Through CONNECT to a private-CA server, a sync stream yields each chunk as it is sent."""
    tls_fake_thread.token_delay = 0.15
    arrivals = []
    with NebulaClient(
        KEY, base_url=tls_fake_thread.base_url, proxy=proxy_thread.url, verify=ca_file
    ) as client:
        started = time.monotonic()
        with client.stream_text(model="m", prompt="a b c d") as stream:
            for _ in stream:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] >= 0.3  # the first came at least two token delays before the last
    assert proxy_thread.seen == [f"CONNECT 127.0.0.1:{tls_fake_thread.port}"]


def test_bad_proxy_fails_before_a_thread_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad proxy URL raises ValueError naming the setting, and no loop thread is left behind."""
    before = len(loop_threads())
    with pytest.raises(ValueError, match="proxy= must be a URL with a scheme"):
        NebulaClient(KEY, proxy="127.0.0.1:3128")
    monkeypatch.setenv("HTTP_PROXY", f"socks5://u:{PROXY_PASSWORD}@127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"^HTTP_PROXY is a socks5:// proxy") as info:
        NebulaClient(KEY, base_url="http://127.0.0.1:1/v1")
    assert PROXY_PASSWORD not in str(info.value)
    assert len(loop_threads()) == before
