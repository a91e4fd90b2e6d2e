"""The blocking client and TLS with a private CA: verify=, SSL_CERT_FILE per client, the certificate error."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import APIConnectionError, NebulaClient
from tests.sync._support import KEY, echo_reply, loop_threads


@pytest.fixture
def tls_fake_thread(server_tls: ssl.SSLContext) -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer speaking HTTPS with a certificate of the private CA, in its own thread."""
    with FakeNebulaServer(models=["m"], reply=echo_reply, ssl=server_tls).run_in_thread() as server:
        yield server


@pytest.mark.parametrize("kind", ["path", "context"])
def test_verify_trusts_the_private_ca_for_calls_and_streams(
    tls_fake_thread: FakeNebulaServer, ca_file: Path, kind: str
) -> None:
    """verify= the CA's bundle or an SSLContext trusting it reaches the server, for a call and a stream."""
    verify = ca_file if kind == "path" else ssl.create_default_context(cafile=str(ca_file))
    with NebulaClient(KEY, base_url=tls_fake_thread.base_url, verify=verify) as client:
        assert client.generate_text(model="m", prompt="hi").text == "echo: hi"
        with client.stream_text(model="m", prompt="yo") as stream:
            assert "".join(chunk.text for chunk in stream) == "echo: yo"


def test_certificate_error_says_what_to_pass(tls_fake_thread: FakeNebulaServer) -> None:
    """Without the private CA, the call fails once with an error saying to pass verify= or SSL_CERT_FILE."""
    with (
        NebulaClient(KEY, base_url=tls_fake_thread.base_url) as client,
        pytest.raises(
            APIConnectionError, match=r"pass verify='/path/to/ca\.pem' \(or set SSL_CERT_FILE\)"
        ) as info,
    ):
        client.generate_text(model="m", prompt="hi")
    assert info.value.retryable is False
    assert tls_fake_thread.requests == []


def test_ssl_cert_file_set_after_another_client_was_made(
    tls_fake_thread: FakeNebulaServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE is read when each client is made: a later client trusts it, an earlier one does not."""
    with NebulaClient(KEY, base_url=tls_fake_thread.base_url) as before:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        with NebulaClient(KEY, base_url=tls_fake_thread.base_url) as after:
            assert after.generate_text(model="m", prompt="hi").text == "echo: hi"
        with pytest.raises(APIConnectionError, match="certificate did not verify"):
            before.generate_text(model="m", prompt="hi")
        with (
            NebulaClient(KEY, base_url=tls_fake_thread.base_url, trust_env=False) as ignoring,
            pytest.raises(APIConnectionError, match="certificate did not verify"),
        ):
            ignoring.generate_text(model="m", prompt="hi")


def test_verify_false_works_and_warns(
    tls_fake_thread: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """verify=False reaches the server and logs one WARNING for the client."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    with NebulaClient(KEY, base_url=tls_fake_thread.base_url, verify=False) as client:
        assert client.generate_text(model="m", prompt="hi").text == "echo: hi"
    assert len([r for r in caplog.records if "verification is off" in r.getMessage()]) == 1


def test_missing_ca_bundle_fails_before_a_thread_starts(tmp_path: Path) -> None:
    """verify= a missing file raises ValueError, and no loop thread is left behind."""
    before = len(loop_threads())
    with pytest.raises(ValueError, match="no such file or directory"):
        NebulaClient(KEY, verify=tmp_path / "missing.pem")
    assert len(loop_threads()) == before
