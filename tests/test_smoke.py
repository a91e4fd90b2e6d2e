"""The fixtures themselves work: a real server and the aioresponses mock."""

from __future__ import annotations

from nebula_async import AsyncNebulaClient
from tests.conftest import LocalServer, MockAPI
from tests.helpers import KEY, success_body


async def test_real_server_round_trip(server: LocalServer) -> None:
    """A call over a real socket returns the server's text and request id."""
    async with AsyncNebulaClient(KEY, base_url=server.base_url) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "Hello, World!"
    assert result.request_id == "req_1"
    assert server.requests[0]["body"] == {"model": "m", "prompt": "p"}


async def test_mock_api_round_trip(mock_api: MockAPI) -> None:
    """aioresponses answers on aiohttp 3.14 once given a compatible response class."""
    mock_api.post("https://api.test/v1/text/generate", payload=success_body("hi"))
    async with AsyncNebulaClient(KEY, base_url="https://api.test/v1", max_retries=0) as client:
        result = await client.generate_text(model="m", prompt="p")
    assert result.text == "hi"
    assert mock_api.sent()[0]["body"] == {"model": "m", "prompt": "p"}
