"""The sync TextStream crosses into the event-loop thread once per network read, not once per event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient

EVENTS = 1000
TEXTS = [f" {i}," for i in range(EVENTS // 2)]  # two tokens each: " 0" and ","


def _count_hops(client: NebulaClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the client's one way into its event loop; return the list of what went through it."""
    hops: list[str] = []
    real_run: Callable[..., Any] = client._run

    def counting_run(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return real_run(fn, *args, **kwargs)

    monkeypatch.setattr(client, "_run", counting_run)  # before stream_text(): the stream keeps it
    return hops


def _burst(fake: FakeNebulaServer) -> None:
    """Make the fake answer "p" with EVENTS events; without a token_delay it sends them in one write."""
    fake.replies["p"] = "".join(TEXTS)
    assert fake.token_delay == 0


def test_a_burst_of_events_takes_a_handful_of_hops(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1000 events sent in one write are all delivered in order with far fewer than 1000 portal hops."""
    _burst(fake_thread)
    hops = _count_hops(fake_client, monkeypatch)
    with fake_client.stream_text(model="m", prompt="p", max_tokens=EVENTS) as stream:
        chunks = list(stream)
    assert [chunk.text for chunk in chunks] == [piece for text in TEXTS for piece in (text[:-1], ",")]
    assert [chunk.finish_reason for chunk in chunks[-2:]] == [None, "stop"]
    assert stream.text == "".join(TEXTS)
    assert stream.finish_reason == "stop"
    # Enter, a few reads (one write may reach us in several socket reads), the end, close.
    assert len(hops) <= 12, hops
    assert hops.count("_fill") <= 8, hops


def test_a_plain_iterator_also_takes_a_handful_of_hops(
    fake_client: NebulaClient, fake_thread: FakeNebulaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iterating a stream without ``with`` batches its hops too, and ends with the whole text."""
    _burst(fake_thread)
    hops = _count_hops(fake_client, monkeypatch)
    stream = fake_client.stream_text(model="m", prompt="p", max_tokens=EVENTS)
    count = sum(1 for _ in stream)
    assert count == EVENTS
    assert stream.finish_reason == "stop"
    assert stream.text == "".join(TEXTS)
    assert len(hops) <= 10, hops
