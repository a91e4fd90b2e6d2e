"""The blocking client's rate_limit=: the same pacing, shared by every thread that calls it."""

from __future__ import annotations

import itertools
import threading

from nebula_async.testing import FakeNebulaServer
from nebula_sync import NebulaClient, RateLimit
from tests.sync._support import KEY


def test_sync_client_paces_calls_from_several_threads(fake_thread: FakeNebulaServer) -> None:
    """Six calls from three threads under 600 requests/minute reach the server about 0.1 s apart."""
    limit = RateLimit(requests_per_minute=600)
    with NebulaClient(KEY, base_url=fake_thread.base_url, rate_limit=limit) as client:
        assert client.rate_limit is limit

        def two_calls() -> None:
            for _ in range(2):
                client.generate_text(model="m", prompt="p")

        threads = [threading.Thread(target=two_calls) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    times = sorted(r.time for r in fake_thread.requests)
    assert len(times) == 6
    assert times[-1] - times[0] >= 5 * 0.1 * 0.9  # paced: five intervals of 0.1 s
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.05  # arrivals jitter; they never bunch


def test_sync_client_without_rate_limit_says_none(fake_client: NebulaClient) -> None:
    """A NebulaClient made without rate_limit= reports None."""
    assert fake_client.rate_limit is None
