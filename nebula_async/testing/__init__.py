"""A realistic local Nebula API for tests, load tests and offline work: ``FakeNebulaServer``.

The server is aiohttp.web on a real socket on 127.0.0.1. It speaks the API reference's protocol:
``POST /v1/text/generate``, Bearer auth, the success and error envelopes, the five error codes
(with ``details`` naming the offending field), and server-sent events, one per token, when
``stream`` is true. Its answers are deterministic: the same request always gets the same text;
``usage`` counts tokens with :func:`count_tokens`; streamed chunks concatenate to exactly the
non-streamed text of the same request.

::

    from nebula_async import AsyncNebulaClient
    from nebula_async.testing import FakeNebulaServer

    async with FakeNebulaServer(models=["gpt-4"]) as server:
        server.fail_next(2, status=429, code="rate_limit_exceeded", retry_after=0.1)
        async with AsyncNebulaClient(server.api_key, base_url=server.base_url) as client:
            result = await client.generate_text(model="gpt-4", prompt="Hi")
        assert result.retries == 2

Installed with the SDK, its pytest plugin gives the fixtures ``nebula_server``,
``nebula_client`` (an ``AsyncNebulaClient``; needs pytest-asyncio) and ``nebula_sync_client``;
``@pytest.mark.nebula_server(...)`` and ``@pytest.mark.nebula_client(...)`` pass arguments to the
server and the clients. ``python -m nebula_async.testing --port 8080`` runs it standalone.

``FakeNebulaServer(stream_usage=True)`` (marker: ``@pytest.mark.nebula_server(stream_usage=True)``,
command line: ``--stream-usage``) puts ``usage`` in each stream's final event, as real servers do.

``FakeNebulaServer(faults=FaultMix(rate=0.1, seed=1))`` (command line: ``--faults 0.1 --faults-seed 1``)
faults a tenth of the requests at random: 429 with Retry-After, 500/502/503, HTML error pages,
disconnects, slow replies, streams cut mid-way, error events mid-stream; ``server.faults_injected``
counts them by kind. ``python -m benchmarks.soak`` drives a client through it.

Speed, on one core (``python benchmarks/fake_server.py``: the server pinned to one core of a 2-core
x86-64 VM, Python 3.11, aiohttp 3.14; raw aiohttp load at concurrency 64 from the other core): it
answered 10,750 non-streaming requests/s, and 10,300 streams/s of about 28 events (290,000 events/s);
the load generator was the limit. The server spent 62 µs of CPU per request and 73 µs per stream:
about 16,000 requests/s, or 13,500 streams/s, of one core. For soak runs, set ``max_recorded``.
"""

from ._faults import FAULT_KINDS, FaultMix
from ._generate import count_tokens, default_reply, tokenize
from ._server import DEFAULT_API_KEY, FakeNebulaServer
from ._state import DEFAULT_MODELS, FakeModel, RecordedHeaders, RecordedRequest

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "FAULT_KINDS",
    "FakeModel",
    "FakeNebulaServer",
    "FaultMix",
    "RecordedHeaders",
    "RecordedRequest",
    "count_tokens",
    "default_reply",
    "tokenize",
]
