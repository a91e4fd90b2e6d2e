"""Argument validation of the models and configuration, and client construction."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import nebula_sync
from nebula_async import (
    AsyncNebulaClient,
    GenerateRequest,
    NebulaError,
    RetryPolicy,
    TextChunk,
    TextGeneration,
    Timeout,
    Usage,
)
from tests.conftest import MockAPI
from tests.helpers import SECRET_KEY, success_body
from tests.unit._support import BASE_URL, ENDPOINT, mock_client

DEFAULT_BASE_URL = "https://api.inference.nebulablock.com/v1"
VALID: dict[str, Any] = {"model": "m", "prompt": "p"}


# --- GenerateRequest -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("model", "", ValueError),
        ("model", None, TypeError),
        ("model", 123, TypeError),
        ("model", b"m", TypeError),
        ("prompt", "", ValueError),
        ("prompt", None, TypeError),
        ("prompt", ["p"], TypeError),
        ("max_tokens", 0, ValueError),
        ("max_tokens", -1, ValueError),
        ("max_tokens", True, TypeError),
        ("max_tokens", 1.5, TypeError),
        ("max_tokens", "10", TypeError),
        ("temperature", -0.1, ValueError),
        ("temperature", 2.1, ValueError),
        ("temperature", math.nan, ValueError),
        ("temperature", math.inf, ValueError),
        ("temperature", "0.5", TypeError),
        ("temperature", True, TypeError),
        ("top_p", -0.1, ValueError),
        ("top_p", 1.1, ValueError),
        ("top_p", math.nan, ValueError),
        ("top_p", "1", TypeError),
        ("top_p", False, TypeError),
        ("stop", "END", TypeError),
        ("stop", ["ok", 3], TypeError),
        ("stop", [None], TypeError),
        ("stop", 5, TypeError),
        ("stop", {"END": 1}, TypeError),
    ],
)
def test_invalid_argument_is_rejected_naming_it(field: str, value: object, error: type[Exception]) -> None:
    """A bad argument raises ValueError or TypeError whose one-line message names the argument."""
    with pytest.raises(error) as info:
        GenerateRequest(**{**VALID, field: value})
    message = str(info.value)
    assert field in message
    assert "\n" not in message
    # attrs.validators.instance_of would put a tuple of its arguments in str(exc).
    assert not message.startswith("(")


def test_stop_as_a_str_suggests_a_list() -> None:
    """stop="END" is refused with a message that shows how to pass it as a list."""
    with pytest.raises(TypeError, match="list") as info:
        GenerateRequest(model="m", prompt="p", stop="END")
    assert "['END']" in str(info.value)


def test_stop_with_non_str_item_names_the_item() -> None:
    """A stop list holding a non-str names the offending position."""
    with pytest.raises(TypeError, match=r"stop\[1\]"):
        GenerateRequest(model="m", prompt="p", stop=["a", 2])


@pytest.mark.parametrize("stop", [("a", "b"), ["a", "b"]])
def test_stop_list_or_tuple_is_accepted(stop: Any) -> None:
    """stop may be a list or a tuple of strings; the model keeps them in order."""
    request = GenerateRequest(model="m", prompt="p", stop=stop)
    assert list(request.stop or ()) == ["a", "b"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 0.0),
        ("temperature", 2),
        ("temperature", 2.0),
        ("top_p", 0),
        ("top_p", 0.0),
        ("top_p", 1),
        ("top_p", 1.0),
        ("max_tokens", 1),
        ("max_tokens", 100_000),
    ],
)
def test_boundary_values_are_accepted(field: str, value: object) -> None:
    """Values on the edge of each documented range are valid and kept as given."""
    request = GenerateRequest(**{**VALID, field: value})
    assert getattr(request, field) == value


def test_optional_fields_default_to_none() -> None:
    """A request with only model and prompt leaves every optional field unset."""
    request = GenerateRequest(model="m", prompt="p")
    assert (request.max_tokens, request.temperature, request.top_p, request.stop) == (None, None, None, None)


@pytest.mark.parametrize(
    "model",
    [
        GenerateRequest(model="m", prompt="p"),
        TextGeneration(text="t", usage=Usage(1, 2, 3)),
        Usage(1, 2, 3),
        TextChunk(text="t"),
        Timeout(),
        RetryPolicy(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_models_are_frozen(model: Any) -> None:
    """Assigning to a field of a model or config object raises instead of mutating it."""
    field = attrs.fields(type(model))[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(model, field, None)


def test_models_compare_and_hash_by_value() -> None:
    """Two equal models compare equal and hash alike, so they can be dict keys."""
    assert GenerateRequest(model="m", prompt="p", stop=["x"]) == GenerateRequest(
        model="m", prompt="p", stop=("x",)
    )
    assert hash(Usage(1, 2, 3)) == hash(Usage(1, 2, 3))


# --- Timeout and RetryPolicy ---------------------------------------------------------------------


def test_timeout_defaults_are_finite() -> None:
    """The default Timeout bounds connect and total with the documented values; read is unbounded.

    A non-streaming answer sends nothing until the whole text is generated: a read limit shorter than
    total would fail long generations that total allows.
    """
    timeout = Timeout()
    assert (timeout.connect, timeout.read, timeout.total) == (10.0, None, 600.0)
    assert timeout.stream_idle is not None
    assert timeout.stream_idle > 0


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("connect", 0, ValueError),
        ("read", -1, ValueError),
        ("total", math.inf, ValueError),
        ("stream_idle", math.nan, ValueError),
        ("connect", True, TypeError),
        ("read", "5", TypeError),
    ],
)
def test_timeout_rejects_bad_values(field: str, value: object, error: type[Exception]) -> None:
    """A Timeout field that is not a finite positive number of seconds raises, naming the field."""
    with pytest.raises(error, match=field):
        Timeout(**{field: value})  # type: ignore[arg-type]  # wrong types on purpose


def test_timeout_accepts_none_to_disable_one() -> None:
    """None disables a single timeout and keeps the others."""
    timeout = Timeout(total=None)
    assert timeout.total is None
    assert timeout.connect == 10.0


def test_timeout_coerce_none_gives_defaults() -> None:
    """Timeout.coerce(None) gives the default timeouts."""
    assert Timeout.coerce(None) == Timeout()


@pytest.mark.parametrize("seconds", [5, 2.5])
def test_timeout_coerce_number_sets_every_bound(seconds: float) -> None:
    """Timeout.coerce(n) bounds connect, read and total by n seconds."""
    timeout = Timeout.coerce(seconds)
    assert (timeout.connect, timeout.read, timeout.total) == (seconds, seconds, seconds)


def test_timeout_coerce_keeps_a_timeout() -> None:
    """Timeout.coerce returns a Timeout it is given unchanged."""
    timeout = Timeout(connect=1.0, read=2.0, total=3.0)
    assert Timeout.coerce(timeout) is timeout


@pytest.mark.parametrize(
    ("value", "error"),
    [("5", TypeError), (True, TypeError), ([5], TypeError)],
)
def test_timeout_coerce_rejects_bad_values(value: Any, error: type[Exception]) -> None:
    """Timeout.coerce refuses what is neither a number of seconds, None nor a Timeout."""
    with pytest.raises(error):
        Timeout.coerce(value)


@pytest.mark.parametrize("value", [0, 0.0, -1, math.inf, math.nan])
def test_timeout_number_that_is_not_positive_names_timeout(value: float) -> None:
    """Timeout.coerce and timeout= reject 0, negatives and non-finite numbers, naming 'timeout'."""
    with pytest.raises(ValueError, match=r"^timeout must be"):
        Timeout.coerce(value)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        AsyncNebulaClient(SECRET_KEY, timeout=value)


def test_retry_policy_defaults() -> None:
    """RetryPolicy's defaults are the documented ones."""
    policy = RetryPolicy()
    assert (
        policy.max_retries,
        policy.initial_delay,
        policy.max_delay,
        policy.jitter,
        policy.max_retry_after,
    ) == (
        2,
        0.5,
        8.0,
        True,
        60.0,
    )


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_retries", -1, ValueError),
        ("max_retries", 1.5, TypeError),
        ("max_retries", True, TypeError),
        ("initial_delay", -0.5, ValueError),
        ("initial_delay", math.nan, ValueError),
        ("initial_delay", "1", TypeError),
        ("max_delay", math.inf, ValueError),
        ("jitter", 1, TypeError),
        ("max_retry_after", -1, ValueError),
    ],
)
def test_retry_policy_rejects_bad_values(field: str, value: object, error: type[Exception]) -> None:
    """A RetryPolicy field with a bad value raises, naming the field."""
    with pytest.raises(error, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]  # wrong types on purpose


def test_retry_policy_initial_delay_above_max_delay_is_rejected() -> None:
    """RetryPolicy(initial_delay=5, max_delay=1) is a ValueError naming both; equal delays are fine."""
    with pytest.raises(ValueError, match=r"initial_delay.*max_delay"):
        RetryPolicy(initial_delay=5, max_delay=1)
    assert RetryPolicy(initial_delay=1, max_delay=1).initial_delay == 1


def test_retry_policy_accepts_zeros() -> None:
    """No retries and no delay are valid settings."""
    policy = RetryPolicy(max_retries=0, initial_delay=0, max_delay=0, max_retry_after=0)
    assert policy.max_retries == 0


# --- client construction -------------------------------------------------------------------------


def test_missing_api_key_names_the_env_var() -> None:
    """No api_key and no NEBULA_API_KEY raises NebulaError at construction, naming NEBULA_API_KEY."""
    with pytest.raises(NebulaError, match="NEBULA_API_KEY"):
        AsyncNebulaClient(base_url=BASE_URL)


def test_empty_env_api_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty NEBULA_API_KEY is treated as no key at all."""
    monkeypatch.setenv("NEBULA_API_KEY", "")
    with pytest.raises(NebulaError, match="NEBULA_API_KEY"):
        AsyncNebulaClient(base_url=BASE_URL)


def test_sync_client_missing_api_key_names_the_env_var() -> None:
    """nebula_sync.NebulaClient also refuses to start without a key, naming NEBULA_API_KEY."""
    with pytest.raises(NebulaError, match="NEBULA_API_KEY"):
        nebula_sync.NebulaClient(base_url=BASE_URL)


async def test_api_key_from_env_is_sent(monkeypatch: pytest.MonkeyPatch, mock_api: MockAPI) -> None:
    """With no api_key argument, NEBULA_API_KEY is the bearer token on the wire."""
    monkeypatch.setenv("NEBULA_API_KEY", "sk-from-env")
    mock_api.post(ENDPOINT, payload=success_body())
    async with AsyncNebulaClient(base_url=BASE_URL, max_retries=0) as client:
        await client.generate_text(model="m", prompt="p")
    [sent] = mock_api.sent()
    assert sent["headers"]["Authorization"] == "Bearer sk-from-env"


async def test_explicit_api_key_beats_env(monkeypatch: pytest.MonkeyPatch, mock_api: MockAPI) -> None:
    """An api_key argument is used even when NEBULA_API_KEY is set."""
    monkeypatch.setenv("NEBULA_API_KEY", "sk-from-env")
    mock_api.post(ENDPOINT, payload=success_body())
    async with AsyncNebulaClient("sk-explicit", base_url=BASE_URL, max_retries=0) as client:
        await client.generate_text(model="m", prompt="p")
    [sent] = mock_api.sent()
    assert sent["headers"]["Authorization"] == "Bearer sk-explicit"


@pytest.mark.parametrize(
    "key",
    [
        SECRET_KEY + "\n",
        " " + SECRET_KEY,
        SECRET_KEY + "\x00",
        "sk-ключ-1234",
        "sk-caf\u00e9-1234",
        "sk-\u00a0nbsp-1234",
        "sk-tab\t1234",
    ],
)
def test_key_that_http_cannot_carry_is_rejected_without_echoing_it(key: str) -> None:
    """A key with whitespace, a control or a non-ASCII character raises ValueError that never shows it."""
    with pytest.raises(ValueError, match="api_key") as info:
        AsyncNebulaClient(key, base_url=BASE_URL)
    error = info.value
    for shown in (str(error), repr(error)):
        assert key not in shown
        assert key.strip() not in shown
    assert error.__cause__ is None  # a chained UnicodeEncodeError would quote the key
    assert error.__context__ is None or key not in repr(error.__context__)


# --- default_headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nX-Evil: 1", "a\rb", "a\x00b"])
def test_default_header_value_with_a_line_break_is_rejected(value: str) -> None:
    """A default_headers value holding CR, LF or NUL is rejected at construction, naming the header."""
    with pytest.raises(ValueError, match="X-Team"):
        mock_client(default_headers={"X-Team": value})


@pytest.mark.parametrize("name", ["X Team", "X-Team:", "", "X-Tëam"])
def test_default_header_with_an_invalid_name_is_rejected(name: str) -> None:
    """A default_headers name that is not an HTTP token (a space, a colon, empty, non-ASCII) is rejected."""
    with pytest.raises(ValueError, match="not a valid header name"):
        mock_client(default_headers={name: "a"})


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"])
def test_default_headers_may_not_set_authorization(name: str) -> None:
    """Authorization in default_headers, in any case, is rejected with a message pointing to api_key=."""
    with pytest.raises(ValueError, match="api_key=") as info:
        mock_client(default_headers={name: "Bearer OTHER"})
    assert "OTHER" not in str(info.value)


# --- base_url -------------------------------------------------------------------------------------


def test_base_url_defaults_to_public_endpoint() -> None:
    """With no base_url and no NEBULA_BASE_URL the client targets the documented endpoint."""
    assert AsyncNebulaClient("k").base_url == DEFAULT_BASE_URL


def test_base_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """NEBULA_BASE_URL is used when no base_url is passed."""
    monkeypatch.setenv("NEBULA_BASE_URL", "http://env.test/v9")
    assert AsyncNebulaClient("k").base_url == "http://env.test/v9"


def test_explicit_base_url_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base_url argument wins over NEBULA_BASE_URL."""
    monkeypatch.setenv("NEBULA_BASE_URL", "http://env.test/v9")
    assert AsyncNebulaClient("k", base_url="http://arg.test/v1").base_url == "http://arg.test/v1"


async def test_base_url_trailing_slash_is_dropped(mock_api: MockAPI) -> None:
    """A base_url ending in '/' still posts to base_url + '/text/generate', not '//text/generate'."""
    mock_api.post(ENDPOINT, payload=success_body())
    async with mock_client(base_url=BASE_URL + "/") as client:
        await client.generate_text(model="m", prompt="p")
    assert [s["url"] for s in mock_api.sent()] == [ENDPOINT]


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        ("api.test/v1", ValueError),
        ("ftp://api.test/v1", ValueError),
        ("http://", ValueError),
        ("http://api.test/v1?x=1", ValueError),
        ("http://api.test/v1#frag", ValueError),
        (123, TypeError),
    ],
)
def test_bad_base_url_is_rejected(base_url: Any, error: type[Exception]) -> None:
    """A base_url that is not an http(s) URL without query or fragment raises at construction."""
    with pytest.raises(error, match="base_url"):
        AsyncNebulaClient("k", base_url=base_url)


# Regression (second review): a bare "?" or "#" passed, as yarl drops it and the URL looks clean.
BARE_MARKERS = [
    "http://127.0.0.1:8080/v1?",
    "http://127.0.0.1:8080/v1#",
    "http://127.0.0.1:8080/v1/?",
    "http://127.0.0.1:8080/v1?#",
    "http://127.0.0.1:8080?",
]


@pytest.mark.parametrize("base_url", BARE_MARKERS)
def test_base_url_ending_in_a_bare_query_or_fragment_marker_is_rejected(base_url: str) -> None:
    """A base_url ending in a bare "?" or "#" raises ValueError when the client is constructed."""
    with pytest.raises(ValueError, match="must not have a query or fragment"):
        AsyncNebulaClient(SECRET_KEY, base_url=base_url)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a url", "NEBULA_BASE_URL"),
        ("ftp://api.example/v1", "NEBULA_BASE_URL"),
        (BARE_MARKERS[0], "NEBULA_BASE_URL must not have a query or fragment"),
        (BARE_MARKERS[1], "NEBULA_BASE_URL must not have a query or fragment"),
    ],
)
def test_bad_env_base_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    """An unusable NEBULA_BASE_URL raises at construction, naming the variable, not the base_url= argument."""
    monkeypatch.setenv("NEBULA_BASE_URL", value)
    with pytest.raises(ValueError, match=message):
        AsyncNebulaClient("k")


def test_bad_base_url_argument_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unusable base_url= names base_url, even with a valid NEBULA_BASE_URL set."""
    monkeypatch.setenv("NEBULA_BASE_URL", "https://api.example/v1")
    with pytest.raises(ValueError, match=r"^base_url"):
        AsyncNebulaClient(SECRET_KEY, base_url="ftp://api.example/v1")


@pytest.mark.parametrize("source", ["argument", "environment"])
@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2-pw@api.example/v1",
        "https://:hunter2-pw@api.example/v1",
        "ftp://user:hunter2-pw@api.example/v1",
        "https://user:hunter2-pw@api.example:99999/v1",
        "http://user:hunter2-pw@127.0.0.1/v1",
    ],
)
def test_base_url_with_credentials_is_rejected_without_echoing_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, source: str
) -> None:
    """A base_url holding user:password@ is rejected, pointing to api_key=, never showing the password."""
    if source == "environment":
        monkeypatch.setenv("NEBULA_BASE_URL", url)
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {"base_url": url}
    with pytest.raises(ValueError, match=r"(?i)base_url") as info:
        AsyncNebulaClient(SECRET_KEY, **kwargs)
    if ":99999" not in url:  # a bad port is reported first, as itself
        assert "pass the key as api_key=" in str(info.value)
    assert "hunter2-pw" not in str(info.value)
    assert "hunter2-pw" not in repr(info.value.__cause__)
    assert "hunter2-pw" not in repr(info.value.__context__)


def test_base_url_with_only_a_user_name_is_rejected() -> None:
    """A base_url with ``user@`` is rejected like one with a password, suggesting api_key=."""
    with pytest.raises(ValueError, match=r"credentials.*api_key="):
        AsyncNebulaClient(SECRET_KEY, base_url="https://user@api.example/v1")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1:-1/v1",
        "http://127.0.0.1:abc/v1",
        "http://[::1/v1",
        "http://::1:8080/v1",
        "http://[::1]:99999/v1",
        "http:///v1",
        "http://:8080/v1",
        "http://api example/v1",
    ],
)
def test_base_url_with_a_bad_port_or_host_is_rejected_at_construction(url: str) -> None:
    """A port out of range or not a number, a missing or malformed host, is a ValueError naming base_url."""
    with pytest.raises(ValueError, match=r"^base_url"):
        AsyncNebulaClient(SECRET_KEY, base_url=url)


@pytest.mark.parametrize("url", ["http://[::1]:8080/v1", "http://[::1]/v1", "https://api.example:443/v1/"])
def test_base_url_with_ipv6_or_explicit_port_is_accepted(url: str) -> None:
    """A bracketed IPv6 host and an explicit in-range port are accepted; the trailing slash is dropped."""
    assert AsyncNebulaClient(SECRET_KEY, base_url=url).base_url == url.rstrip("/")


# --- the other constructor arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_connections": 0}, ValueError),
        ({"max_connections": True}, TypeError),
        ({"max_connections": "10"}, TypeError),
        ({"max_retries": "3", "retry": RetryPolicy()}, TypeError),
        ({"retry": 3}, TypeError),
        ({"timeout": "10"}, TypeError),
        ({"max_retries": -1}, ValueError),
        ({"default_headers": {"X-Num": 1}}, TypeError),
        ({"session": object()}, TypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """A bad constructor argument raises at construction, not at the first call."""
    with pytest.raises(error):
        AsyncNebulaClient(**{"api_key": "k", "base_url": BASE_URL, **kwargs})


def test_retry_policy_wins_over_max_retries() -> None:
    """A retry policy given with max_retries is the one used."""
    client = AsyncNebulaClient("k", max_retries=5, retry=RetryPolicy(max_retries=1))
    assert client.retry == RetryPolicy(max_retries=1)


def test_max_retries_shortcut_builds_the_policy() -> None:
    """max_retries alone sets the default policy's retry count and keeps its other defaults."""
    client = AsyncNebulaClient("k", max_retries=5)
    assert client.retry == RetryPolicy(max_retries=5)


def test_timeout_number_is_coerced() -> None:
    """timeout=3 becomes a Timeout of 3 seconds for every bound."""
    assert AsyncNebulaClient("k", timeout=3).timeout == Timeout.coerce(3)


def test_async_client_repr_hides_the_key() -> None:
    """repr() and str() of the async client never contain the API key."""
    client = AsyncNebulaClient(SECRET_KEY, base_url=BASE_URL)
    assert SECRET_KEY not in repr(client)
    assert SECRET_KEY not in str(client)
    assert BASE_URL in repr(client)


def test_sync_client_repr_hides_the_key() -> None:
    """repr() and str() of nebula_sync.NebulaClient never contain the API key."""
    client = nebula_sync.NebulaClient(SECRET_KEY, base_url=BASE_URL)
    try:
        assert SECRET_KEY not in repr(client)
        assert SECRET_KEY not in str(client)
    finally:
        client.close()


def test_sync_client_rejects_session() -> None:
    """nebula_sync.NebulaClient refuses an aiohttp session with a TypeError that says why."""
    with pytest.raises(TypeError, match="session"):
        nebula_sync.NebulaClient("k", base_url=BASE_URL, session=object())  # type: ignore[arg-type]  # on purpose
