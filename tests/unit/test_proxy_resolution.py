"""Which proxy a client resolves (nebula_async._proxy): precedence, names, ports, credentials, .netrc."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from nebula_async._proxy import Proxy, resolve_proxy

API = "https://api.example.com/v1/text/generate"
PASSWORD = "pr0xy-SECRET-a41f"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """monkeypatch with no proxy variables and an empty .netrc, whatever the machine has."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-netrc"
    empty.write_text("")
    monkeypatch.setenv("NETRC", str(empty))
    return monkeypatch


def test_no_variable_means_no_proxy(env: pytest.MonkeyPatch) -> None:
    """Without proxy variables the client connects directly."""
    assert resolve_proxy(API, None, trust_env=True) is None


def test_https_proxy_is_used_for_an_https_api_with_its_name(env: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY applies to an https API; the port defaults by scheme; the source names the variable."""
    env.setenv("HTTPS_PROXY", "http://proxy.corp")
    env.setenv("HTTP_PROXY", "http://other.corp:1")
    assert resolve_proxy(API, None, trust_env=True) == Proxy(
        url="http://proxy.corp:80", shown="http://proxy.corp:80", source="HTTPS_PROXY", from_env=True
    )


def test_lower_case_variable_wins_over_upper_case(env: pytest.MonkeyPatch) -> None:
    """https_proxy beats HTTPS_PROXY, as in urllib and requests."""
    env.setenv("HTTPS_PROXY", "http://upper.corp:3128")
    env.setenv("https_proxy", "https://lower.corp")
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert (proxy.shown, proxy.source) == ("https://lower.corp:443", "https_proxy")


def test_all_proxy_is_the_fallback(env: pytest.MonkeyPatch) -> None:
    """ALL_PROXY applies when no scheme-specific variable is set."""
    env.setenv("ALL_PROXY", "http://[::1]:8080")
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert (proxy.shown, proxy.source) == ("http://[::1]:8080", "ALL_PROXY")


def test_system_settings_are_named_as_such(env: pytest.MonkeyPatch) -> None:
    """A proxy from the OS settings (macOS, Windows), not from a variable, says so."""
    env.setattr(urllib.request, "getproxies", lambda: {"https": "http://sys.corp:8080"})
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert proxy.source == "the system's proxy settings"


def test_credentials_stay_in_the_url_and_out_of_shown_and_repr(env: pytest.MonkeyPatch) -> None:
    """user:password reach aiohttp's URL but neither ``shown`` nor the repr."""
    proxy = resolve_proxy(API, f"http://al%40ice:{PASSWORD}@proxy.corp:3128/", trust_env=True)
    assert proxy is not None
    assert proxy.url == f"http://al%40ice:{PASSWORD}@proxy.corp:3128"
    assert proxy.shown == "http://proxy.corp:3128"
    assert PASSWORD not in repr(proxy)


def test_netrc_gives_credentials_to_an_environment_proxy(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A .netrc entry for the proxy's host fills in its credentials, quoted; proxy= never reads .netrc."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine proxy.corp login bob@corp password {PASSWORD}:x\n")
    env.setenv("NETRC", str(netrc))
    env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert proxy.url == f"http://bob%40corp:{PASSWORD}%3Ax@proxy.corp:3128"
    explicit = resolve_proxy(API, "http://proxy.corp:3128", trust_env=True)
    assert explicit is not None
    assert explicit.url == "http://proxy.corp:3128"


@pytest.mark.parametrize(
    "content", ["machine elsewhere login a password b\n", "machine proxy.corp login\n"], ids=["other", "bad"]
)
def test_netrc_without_a_usable_entry_gives_no_credentials(
    env: pytest.MonkeyPatch, tmp_path: Path, content: str
) -> None:
    """A .netrc with no entry for the proxy, or one that doesn't parse, adds nothing."""
    netrc = tmp_path / "netrc"
    netrc.write_text(content)
    env.setenv("NETRC", str(netrc))
    env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert proxy.url == "http://proxy.corp:3128"


def test_a_variable_without_a_scheme_means_http(env: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY=proxy.corp:3128, common in corporate set-ups, is read as requests and httpx read it."""
    env.setenv("HTTPS_PROXY", "proxy.corp:3128")
    proxy = resolve_proxy(API, None, trust_env=True)
    assert proxy is not None
    assert proxy.url == "http://proxy.corp:3128"
    with pytest.raises(ValueError, match="proxy= must be a URL with a scheme"):
        resolve_proxy(API, "proxy.corp:3128", trust_env=True)  # an argument is not guessed at


def test_an_unclosed_ipv6_bracket_names_the_setting_not_the_value(env: pytest.MonkeyPatch) -> None:
    """urlsplit's "Invalid IPv6 URL" becomes an error naming the setting, without the password."""
    env.setenv("HTTPS_PROXY", f"http://u:{PASSWORD}@[::1:3128")
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY is not a valid URL") as info:
        resolve_proxy(API, None, trust_env=True)
    assert PASSWORD not in str(info.value)
