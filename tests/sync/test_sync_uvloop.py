"""NEBULA_SYNC_UVLOOP: the sync client's own loop on uvloop, only when asked."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient
from tests.helpers import KEY


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_default_loop_is_asyncio(fake_thread: FakeNebulaServer) -> None:
    """Without the variable the client's loop is the stdlib's, even with uvloop installed (fork-safe)."""
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client._run(_loop_type).startswith("asyncio")


def test_uvloop_when_asked(fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEBULA_SYNC_UVLOOP=1 runs the loop on uvloop; calls, streams and close() work as ever."""
    pytest.importorskip("uvloop")
    monkeypatch.setenv("NEBULA_SYNC_UVLOOP", "1")
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client._run(_loop_type).startswith("uvloop")
        assert client.generate_text(model="m", prompt="hello there").text == "echo: hello there"
        with client.stream_text(model="m", prompt="one two three") as stream:
            assert "".join(chunk.text for chunk in stream) == "echo: one two three"


@pytest.mark.parametrize("value", ["yes", "true", " 1"])
def test_a_bad_value_fails_before_a_thread_starts(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but 1 or 0 is a ValueError naming the variable, and no loop thread is left behind."""
    monkeypatch.setenv("NEBULA_SYNC_UVLOOP", value)
    before = threading.active_count()
    with pytest.raises(ValueError, match=r"NEBULA_SYNC_UVLOOP must be 1 or 0, got"):
        NebulaClient(KEY, base_url="http://127.0.0.1:9/v1")
    assert threading.active_count() == before


def test_zero_means_asyncio(fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEBULA_SYNC_UVLOOP=0 is the default, spelled out."""
    monkeypatch.setenv("NEBULA_SYNC_UVLOOP", "0")
    with NebulaClient(KEY, base_url=fake_thread.base_url) as client:
        assert client._run(_loop_type).startswith("asyncio")
