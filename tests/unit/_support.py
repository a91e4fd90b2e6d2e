"""Constants and small builders shared by the unit tests (the mocked API of the ``mock_api`` fixture)."""

from __future__ import annotations

from typing import Any

from nebula_async import AsyncNebulaClient
from tests.helpers import SECRET_KEY

BASE_URL = "https://api.test/v1"
ENDPOINT = BASE_URL + "/text/generate"


def mock_client(api_key: str = SECRET_KEY, **kwargs: Any) -> AsyncNebulaClient:
    """Return a client for the mocked API; no retries unless the test asks for them.

    An unmatched URL looks like a connection error the client would retry: retries stay off by default.
    """
    kwargs.setdefault("base_url", BASE_URL)
    if "retry" not in kwargs:
        kwargs.setdefault("max_retries", 0)
    return AsyncNebulaClient(api_key, **kwargs)


async def consume(client: AsyncNebulaClient, received: list[str] | None = None, **kwargs: Any) -> str:
    """Read a stream in ``async with``, adding each chunk's text to ``received``; return the whole text."""
    async with client.stream_text(**kwargs) as stream:
        async for chunk in stream:
            if received is not None:
                received.append(chunk.text)
    return stream.text


def header(sent: dict[str, Any], name: str) -> list[str]:
    """Return every value of header ``name`` (case-insensitive) in one request ``MockAPI.sent()`` returned."""
    return [value for key, value in sent["headers"].items() if key.lower() == name.lower()]
