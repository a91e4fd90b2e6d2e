"""repr() of both clients: built, half-built (its __init__ raised), and in a traceback printed with locals."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from nebula_async import AsyncNebulaClient
from nebula_sync import NebulaClient
from tests.helpers import SECRET_KEY
from tests.unit._support import BASE_URL

CLIENTS = pytest.mark.parametrize("client_class", [AsyncNebulaClient, NebulaClient])

# Each raises in __init__ at a different point: before and after the attributes repr() shows are set.
BAD = pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"base_url": "ftp://x"}, ValueError),  # before _base_url
        ({"timeout": -1}, ValueError),  # after _base_url, before _retry
        ({"max_connections": 0}, ValueError),  # after _retry
        ({"verify": 3}, TypeError),  # after every check of the arguments' types
    ],
    ids=["base_url", "timeout", "max_connections", "verify"],
)


@CLIENTS
@BAD
def test_constructor_error_formats_with_locals(
    client_class: type[Any], arguments: dict[str, Any], error: type[Exception]
) -> None:
    """A constructor error printed with its frames' locals formats, and names the error, not the key."""
    # Regression: repr() of the half-built client raised AttributeError (_base_url, _retry, _async),
    # so traceback.TracebackException(..., capture_locals=True) failed, as error trackers do.
    with pytest.raises(error) as info:
        client_class(SECRET_KEY, **arguments)
    text = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    assert f"{error.__name__}: " in text
    assert f"self = <{client_class.__name__} (not built" in text or "self = AsyncNebulaClient(" in text
    assert SECRET_KEY not in text


@CLIENTS
def test_half_built_client_repr_says_so(client_class: type[Any]) -> None:
    """repr() of a client whose __init__ never ran (or raised early) says so instead of raising."""
    client = object.__new__(client_class)
    assert repr(client) == f"<{client_class.__name__} (not built: its construction failed)>"


@CLIENTS
def test_built_client_repr_shows_base_url_and_retries(client_class: type[Any]) -> None:
    """repr() of a built client shows its base URL and max_retries, never the key."""
    client = client_class(SECRET_KEY, base_url=BASE_URL, max_retries=3)
    try:
        assert repr(client) == f"{client_class.__name__}(base_url={BASE_URL!r}, max_retries=3)"
    finally:
        if isinstance(client, NebulaClient):
            client.close()
