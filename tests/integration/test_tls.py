"""TLS with a private CA: verify= (a bundle, a directory, an SSLContext, False), SSL_CERT_FILE read per
client, trust_env=False, and an error that says what to pass when the API's certificate does not verify."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from nebula_async import APIConnectionError, AsyncNebulaClient
from nebula_async.testing import FakeNebulaServer
from tests.helpers import SECRET_KEY
from tests.integration._support import CALLS, HELLO, Call, make_client


@pytest.fixture
async def tls_fake(server_tls: ssl.SSLContext) -> AsyncIterator[FakeNebulaServer]:
    """A FakeNebulaServer speaking HTTPS with a certificate of the private CA."""
    async with FakeNebulaServer(models=["m"], replies={"p": HELLO}, ssl=server_tls) as server:
        yield server


def test_fake_server_with_ssl_has_an_https_base_url(server_tls: ssl.SSLContext) -> None:
    """FakeNebulaServer(ssl=...) serves HTTPS, and its base_url says so."""
    with FakeNebulaServer(ssl=server_tls).run_in_thread() as server:
        assert server.base_url == f"https://127.0.0.1:{server.port}/v1"


def test_fake_server_ssl_must_be_a_context() -> None:
    """FakeNebulaServer(ssl=) takes an ssl.SSLContext."""
    with pytest.raises(TypeError, match=r"ssl must be an ssl\.SSLContext or None, got bool"):
        FakeNebulaServer(ssl=True)  # type: ignore[arg-type]  # what is tested


@CALLS
@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "path"])
async def test_verify_with_a_ca_bundle_trusts_the_private_ca(
    tls_fake: FakeNebulaServer, ca_file: Path, call: Call, as_type: Callable[[Path], str | Path]
) -> None:
    """verify= the private CA's PEM file (a str or a Path) reaches the server it signed."""
    async with make_client(tls_fake.base_url, verify=as_type(ca_file)) as client:
        await call(client)
    assert len(tls_fake.requests) == 1


@pytest.fixture
def ca_directory(ca_file: Path, tmp_path: Path) -> Path:
    """A c_rehash'd directory holding the private CA: what ``verify=`` and SSL_CERT_DIR take."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no subject hash for the CA directory")
    digest = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(ca_file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(ca_file, directory / f"{digest}.0")
    return directory


async def test_verify_with_a_hashed_directory_trusts_the_private_ca(
    tls_fake: FakeNebulaServer, ca_directory: Path
) -> None:
    """verify= a c_rehash'd directory holding the private CA reaches the server it signed."""
    async with make_client(tls_fake.base_url, verify=ca_directory) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == HELLO


async def test_verify_with_an_ssl_context_uses_it_as_given(tls_fake: FakeNebulaServer, ca_file: Path) -> None:
    """verify= an SSLContext that trusts the private CA reaches the server it signed."""
    context = ssl.create_default_context(cafile=str(ca_file))
    async with make_client(tls_fake.base_url, verify=context) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == HELLO


async def test_verify_with_a_bundle_trusts_only_that_bundle(
    tls_fake: FakeNebulaServer, tmp_path: Path
) -> None:
    """A bundle of another CA does not verify the server: verify= replaces the system's CAs (as requests)."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with make_client(tls_fake.base_url, verify=other) as client:
        with pytest.raises(APIConnectionError, match="certificate did not verify"):
            await client.generate_text(model="m", prompt="p")


@CALLS
async def test_untrusted_certificate_error_says_what_to_pass(tls_fake: FakeNebulaServer, call: Call) -> None:
    """The default trust refuses the private CA's certificate, once, with an error saying to pass verify=."""
    async with make_client(tls_fake.base_url) as client:
        with pytest.raises(APIConnectionError) as info:
            await call(client)
    message = str(info.value)
    assert message.startswith("the API's certificate did not verify (")
    assert "pass verify='/path/to/ca.pem' (or set SSL_CERT_FILE)" in message
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert len(tls_fake.requests) == 0


async def test_ssl_cert_file_is_read_when_each_client_is_made(
    tls_fake: FakeNebulaServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE set after a client was made is used by the next client, not by the first."""
    async with make_client(tls_fake.base_url) as before:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        async with make_client(tls_fake.base_url) as after:
            result = await after.generate_text(model="m", prompt="p")
        with pytest.raises(APIConnectionError, match="certificate did not verify"):
            await before.generate_text(model="m", prompt="p")
    assert result.text == HELLO


async def test_ssl_cert_dir_is_read_when_the_client_is_made(
    tls_fake: FakeNebulaServer, ca_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_DIR alone, naming a hashed directory with the private CA, verifies the server it signed."""
    monkeypatch.setenv("SSL_CERT_DIR", str(ca_directory))
    async with make_client(tls_fake.base_url) as client:
        assert (await client.generate_text(model="m", prompt="p")).text == HELLO


async def test_trust_env_false_ignores_ssl_cert_file(
    tls_fake: FakeNebulaServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With trust_env=False, SSL_CERT_FILE naming the private CA is not trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with make_client(tls_fake.base_url, trust_env=False) as client:
        with pytest.raises(APIConnectionError, match="certificate did not verify"):
            await client.generate_text(model="m", prompt="p")


async def test_verify_false_skips_verification_and_warns_once(
    tls_fake: FakeNebulaServer, caplog: pytest.LogCaptureFixture
) -> None:
    """verify=False reaches a server no CA vouches for, and logs one WARNING for the client."""
    caplog.set_level(logging.WARNING, logger="nebula_async")
    async with make_client(tls_fake.base_url, verify=False) as client:
        for _ in range(2):
            assert (await client.generate_text(model="m", prompt="p")).text == HELLO
    warnings = [r.getMessage() for r in caplog.records if r.name == "nebula_async"]
    assert len(warnings) == 1
    assert "verification is off" in warnings[0]
    assert SECRET_KEY not in warnings[0]


def test_missing_ca_bundle_raises_value_error(tmp_path: Path) -> None:
    """verify= a path where nothing is raises ValueError when the client is made."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match="no such file or directory"):
        AsyncNebulaClient(SECRET_KEY, verify=missing)


@pytest.mark.parametrize(
    "content", [b"", b"not a certificate\n", b"\x30\x82\x01\x0a"], ids=["empty", "text", "der"]
)
def test_file_that_is_not_a_ca_bundle_raises_value_error(tmp_path: Path, content: bytes) -> None:
    """verify= a file without a PEM certificate raises ValueError when the client is made."""
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a PEM CA bundle"):
        AsyncNebulaClient(SECRET_KEY, verify=path)


def test_verify_of_the_wrong_type_raises_type_error() -> None:
    """verify= takes True, False, a path or an SSLContext."""
    with pytest.raises(TypeError, match="verify must be True, False, the path of a CA bundle"):
        AsyncNebulaClient(SECRET_KEY, verify=1)  # type: ignore[arg-type]  # what is tested
    with pytest.raises(TypeError, match="verify must be a str path, not bytes"):
        AsyncNebulaClient(SECRET_KEY, verify=_BytesPath())  # type: ignore[arg-type]  # what is tested


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/ca.pem"
