"""pytest plugin (entry point ``pytest11``): fixtures that run a FakeNebulaServer and clients for it.

Kept outside ``nebula_async.testing``, which imports aiohttp: pytest loads this module in every
project where the SDK is installed. Loading it imports only ``nebula_async`` itself (attrs; no
cattrs, no aiohttp); the server and the clients load when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nebula_async import AsyncNebulaClient
    from nebula_async.testing import FakeNebulaServer
    from nebula_sync import NebulaClient

__all__ = ["nebula_client", "nebula_server", "nebula_sync_client", "pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``nebula_server`` marker."""
    config.addinivalue_line(
        "markers",
        "nebula_server(**kwargs): keyword arguments for the FakeNebulaServer of the nebula_server fixture",
    )
    config.addinivalue_line(
        "markers",
        "nebula_client(**kwargs): keyword arguments for the clients of nebula_client and nebula_sync_client",
    )


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """Merge the keyword arguments of every ``name`` marker on the test: module, class, function."""
    kwargs: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):  # farthest first: the closest wins
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{name} takes keyword arguments only")
        kwargs.update(marker.kwargs)
    return kwargs


@pytest.fixture
def nebula_server(request: pytest.FixtureRequest) -> Iterator[FakeNebulaServer]:
    """Run a fresh FakeNebulaServer for the test, in a thread of its own (so sync and async tests can use it).

    ``@pytest.mark.nebula_server(models=["gpt-4"], token_delay=0.01)`` passes arguments to it (on
    a module, class or test; the closest wins), e.g. ``stream_usage=True`` for usage in the final
    stream event.
    """
    from nebula_async.testing import FakeNebulaServer

    with FakeNebulaServer(**_marker_kwargs(request, "nebula_server")).run_in_thread() as server:
        yield server


@pytest.fixture
def nebula_sync_client(
    request: pytest.FixtureRequest, nebula_server: FakeNebulaServer
) -> Iterator[NebulaClient]:
    """A ``nebula_sync.NebulaClient`` pointed at ``nebula_server``, closed after the test.

    ``@pytest.mark.nebula_client(max_retries=0)`` passes arguments to it.
    """
    from nebula_sync import NebulaClient

    kwargs = _marker_kwargs(request, "nebula_client")
    with NebulaClient(api_key=nebula_server.api_key, base_url=nebula_server.base_url, **kwargs) as client:
        yield client


async def _nebula_client(
    request: pytest.FixtureRequest, nebula_server: FakeNebulaServer
) -> AsyncIterator[AsyncNebulaClient]:
    """An ``AsyncNebulaClient`` pointed at ``nebula_server``, in the test's loop, closed after it.

    ``@pytest.mark.nebula_client(max_retries=0)`` passes arguments to it. It lives in the test's
    own event loop (function scope); for tests in a wider loop scope, make your own fixture.
    """
    from nebula_async import AsyncNebulaClient

    kwargs = _marker_kwargs(request, "nebula_client")
    base_url = nebula_server.base_url
    async with AsyncNebulaClient(api_key=nebula_server.api_key, base_url=base_url, **kwargs) as client:
        yield client


def _needs_pytest_asyncio(nebula_server: FakeNebulaServer) -> None:
    """Stands in for nebula_client when pytest-asyncio is missing."""
    raise pytest.UsageError(
        "the nebula_client fixture needs pytest-asyncio (pip install pytest-asyncio); "
        "or use nebula_sync_client"
    )


nebula_client: Any
try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - pytest-asyncio is in our dev extra
    nebula_client = pytest.fixture(name="nebula_client")(_needs_pytest_asyncio)
else:
    nebula_client = _async_fixture(name="nebula_client")(_nebula_client)
