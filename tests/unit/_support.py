"""Constants and small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

from nebula_async import AsyncNebulaClient

BASE_URL = "http://api.test/v1"
ENDPOINT = BASE_URL + "/text/generate"
# Distinctive enough that finding it anywhere (a log, an error, a repr) can only mean a leak.
SECRET_KEY = "sk-live-SECRET-7f3a9c2e5d1b4088"


def make_client(api_key: str = SECRET_KEY, **kwargs: Any) -> AsyncNebulaClient:
    """Return a client for the mocked API; no retries unless the test asks for them."""
    kwargs.setdefault("base_url", BASE_URL)
    if "retry" not in kwargs:
        kwargs.setdefault("max_retries", 0)
    return AsyncNebulaClient(api_key, **kwargs)


async def consume(client: AsyncNebulaClient, received: list[str], **kwargs: Any) -> None:
    """Stream a generation inside ``async with``, appending each chunk's text to ``received``."""
    async with client.stream_text(**kwargs) as stream:
        async for chunk in stream:
            received.append(chunk.text)
