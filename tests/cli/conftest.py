"""A FakeNebulaServer in a thread for each test, and the environment that points `nebula` at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nebula_async.testing import FakeNebulaServer
from tests.cli._support import cli_env

KEY = "sk-cli-test-SECRET-8b2d"  # distinctive: seeing it in any output is a leak


@pytest.fixture
def api() -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer on 127.0.0.1 that accepts only KEY."""
    with FakeNebulaServer(api_keys=[KEY], stream_usage=True).run_in_thread() as server:
        yield server


@pytest.fixture
def env(api: FakeNebulaServer) -> dict[str, str]:
    """The environment of a `nebula` process that talks to ``api`` with KEY."""
    return cli_env(NEBULA_API_KEY=KEY, NEBULA_BASE_URL=api.base_url)
