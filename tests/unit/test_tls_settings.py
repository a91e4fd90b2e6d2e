"""What verify= resolves to (nebula_async._tls): aiohttp's default unless a context is needed, shared."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from nebula_async._tls import resolve_verify


@pytest.mark.parametrize("trust_env", [True, False])
def test_default_keeps_aiohttps_context_without_ca_variables(trust_env: bool) -> None:
    """verify=True with no SSL_CERT_FILE/SSL_CERT_DIR builds nothing: aiohttp's shared context is used."""
    assert resolve_verify(True, trust_env=trust_env) is True


def test_verify_false_and_a_context_pass_through() -> None:
    """verify=False turns verification off; an SSLContext is used as given."""
    context = ssl.create_default_context()
    assert resolve_verify(False, trust_env=True) is False
    assert resolve_verify(context, trust_env=True) is context


def test_same_bundle_shares_one_context_until_it_changes(ca_file: Path) -> None:
    """Clients given the same unchanged bundle share a context; a rewritten bundle gets a new one."""
    first = resolve_verify(ca_file, trust_env=True)
    assert isinstance(first, ssl.SSLContext)
    assert resolve_verify(str(ca_file), trust_env=True) is first
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    stat = ca_file.stat()
    os.utime(ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert resolve_verify(ca_file, trust_env=True) is not first


def test_ssl_cert_file_builds_a_context_that_loads_it(ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SSL_CERT_FILE set, the client's context holds that bundle's CA; trust_env=False's does not."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    trusting = resolve_verify(True, trust_env=True)
    ignoring = resolve_verify(True, trust_env=False)
    assert isinstance(trusting, ssl.SSLContext)
    assert isinstance(ignoring, ssl.SSLContext)
    assert ignoring.verify_mode == ssl.CERT_REQUIRED
    assert ignoring.check_hostname
    subjects = [cert["subject"] for cert in trusting.get_ca_certs()]
    assert any("Testing CA" in str(subject) for subject in subjects)
    assert not any("Testing CA" in str(cert["subject"]) for cert in ignoring.get_ca_certs())
