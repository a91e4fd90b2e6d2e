"""The clients side by side: each makes the same calls against the fixed server and checks every reply.

An async client has ``generate()`` (one whole answer) and ``stream(events)`` (one stream, read to its
end, returning the events read); a sync client has the same methods, blocking. Each raises
``WrongReply`` when what came back is not the server's text, so a client that fails fast cannot look
fast. Comparison clients are imported only when used: a missing one is reported as skipped.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._server import expected_text

__all__ = ["ASYNC_CLIENTS", "SYNC_CLIENTS", "AsyncClient", "SyncClient", "WrongReply"]

API_KEY = "bench-key"
PROMPT = "Write a hello world program"
MAX_TOKENS = 100
WHOLE = expected_text(MAX_TOKENS)
_STREAM_TEXT = {n: expected_text(n) for n in (100, 10_000)}
_HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


class WrongReply(Exception):
    """A client got something other than the server's fixed answer."""


def _check(got: str, want: str) -> None:
    if got != want:
        raise WrongReply(f"expected {len(want)} chars starting {want[:30]!r}, got {len(got)}: {got[:30]!r}")


def _nebula_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


class AsyncClient:
    """One client under test, in one event loop."""

    name = ""

    async def open(self, base_url: str, connections: int) -> None:
        """Build the client (``connections``: the pool size, or None for the client's default)."""

    async def close(self) -> None:
        """Release the client's connections."""

    async def generate(self, model: str = "bench") -> None:
        """Make one non-streaming call and check its text."""
        raise NotImplementedError

    async def stream(self, events: int) -> int:
        """Read one stream of ``events`` events to its end, check its text, return the events read."""
        raise NotImplementedError


class SyncClient:
    """One blocking client under test; shared by all threads of a run."""

    name = ""

    def open(self, base_url: str) -> None:
        """Build the client."""

    def close(self) -> None:
        """Release the client's connections."""

    def generate(self) -> None:
        """Make one non-streaming call and check its text."""
        raise NotImplementedError

    def stream(self, events: int) -> int:
        """Read one stream to its end, check its text, return the events read."""
        raise NotImplementedError


# --- async -------------------------------------------------------------------------------------


class NebulaAsync(AsyncClient):
    """nebula_async.AsyncNebulaClient, as documented."""

    name = "nebula_async"

    async def open(self, base_url: str, connections: int) -> None:
        import nebula_async

        self.client = nebula_async.AsyncNebulaClient(
            API_KEY, base_url=f"{base_url}/v1", max_connections=connections
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def generate(self, model: str = "bench") -> None:
        result = await self.client.generate_text(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS)
        _check(result.text, WHOLE)

    async def stream(self, events: int) -> int:
        count = 0
        async with self.client.stream_text(
            model=f"bench-sse-{events}", prompt=PROMPT, max_tokens=MAX_TOKENS
        ) as stream:
            async for _ in stream:
                count += 1
        _check(stream.text, _STREAM_TEXT[events])
        if stream.finish_reason != "stop":
            raise WrongReply(f"finish_reason {stream.finish_reason!r}")
        return count


class NebulaAsyncStdlibJson(NebulaAsync):
    """nebula_async decoding with the stdlib's json even when orjson (the [speed] extra) is installed."""

    name = "nebula_async (stdlib json)"

    async def open(self, base_url: str, connections: int) -> None:
        from nebula_async import _parse

        _parse._fast_loads = None
        await super().open(base_url, connections)


class RawAiohttp(AsyncClient):
    """aiohttp alone, doing what any client must: post, read, decode the JSON, take the text.

    Streams are read line by line (``async for line in response.content``), the loop most code uses.
    """

    name = "aiohttp"

    async def open(self, base_url: str, connections: int) -> None:
        import aiohttp

        self.url = f"{base_url}/v1/text/generate"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def close(self) -> None:
        await self.session.close()

    async def generate(self, model: str = "bench") -> None:
        # Encoded per call, as any client must: prompts differ from call to call.
        async with self.session.post(self.url, data=_nebula_body(model, False), headers=_HEADERS) as response:
            raw = await response.read()
        if response.status != 200:
            raise WrongReply(f"HTTP {response.status}")
        body = json.loads(raw)
        if body["status"] != "success":
            raise WrongReply(str(body)[:100])
        _check(body["data"]["text"], WHOLE)

    async def stream(self, events: int) -> int:
        parts: list[str] = []
        finish = None
        async with self.session.post(
            self.url, data=_nebula_body(f"bench-sse-{events}", True), headers=_HEADERS
        ) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    finish = _take(line[6:], parts)
                    if finish is not None:
                        break
        return _check_stream(parts, finish, "stop", events)


class RawAiohttpIterAny(RawAiohttp):
    """aiohttp alone, reading whole chunks with ``iter_any()`` and splitting lines itself (fastest)."""

    name = "aiohttp iter_any"

    async def stream(self, events: int) -> int:
        parts: list[str] = []
        finish = None
        rest = b""
        async with self.session.post(
            self.url, data=_nebula_body(f"bench-sse-{events}", True), headers=_HEADERS
        ) as response:
            async for chunk in response.content.iter_any():
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.startswith(b"data: "):
                        finish = _take(line[6:], parts)
                if finish is not None:
                    break
        return _check_stream(parts, finish, "stop", events)


def _take(data: bytes | str, parts: list[str]) -> object:
    """Decode one event's JSON as any raw client must, keep its text, return its finish_reason."""
    event = json.loads(data)
    parts.append(event["text"])
    return event["finish_reason"]


def _check_stream(parts: list[str], finish: object, want_finish: str, events: int) -> int:
    _check("".join(parts), _STREAM_TEXT[events])
    if finish != want_finish:
        raise WrongReply(f"finish_reason {finish!r}")
    return len(parts)


class OpenAIAsync(AsyncClient):
    """openai-python's AsyncOpenAI (completions API), on its default httpx transport."""

    name = "openai"

    def _http_client(self, connections: int) -> Any:
        import openai

        return openai.DefaultAsyncHttpxClient(limits=_httpx_limits(connections))

    async def open(self, base_url: str, connections: int) -> None:
        import openai

        self.client = openai.AsyncOpenAI(
            api_key=API_KEY, base_url=f"{base_url}/v1", http_client=self._http_client(connections)
        )

    async def close(self) -> None:
        await self.client.close()

    async def generate(self, model: str = "bench") -> None:
        result = await self.client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS)
        _check(result.choices[0].text, WHOLE)

    async def stream(self, events: int) -> int:
        parts: list[str] = []
        finish = None
        stream = await self.client.completions.create(
            model=f"bench-sse-{events}", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
        async with stream:
            async for chunk in stream:
                parts.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason
        return _check_stream(parts, finish, "length", events)


class OpenAIAsyncAiohttp(OpenAIAsync):
    """AsyncOpenAI on its optional aiohttp transport (``openai[aiohttp]``)."""

    name = "openai (aiohttp)"

    def _http_client(self, connections: int) -> Any:
        import openai

        return openai.DefaultAioHttpClient(limits=_httpx_limits(connections))


def _httpx_limits(connections: int) -> Any:
    import openai

    # openai's own defaults, with the pool size every client in the run gets.
    return openai.DEFAULT_CONNECTION_LIMITS.__class__(
        max_connections=connections, max_keepalive_connections=connections
    )


# --- sync --------------------------------------------------------------------------------------


class NebulaSync(SyncClient):
    """nebula_sync.NebulaClient, as documented."""

    name = "nebula_sync"
    uvloop = "0"

    def open(self, base_url: str) -> None:
        import nebula_sync

        os.environ["NEBULA_SYNC_UVLOOP"] = self.uvloop
        self.client = nebula_sync.NebulaClient(API_KEY, base_url=f"{base_url}/v1")

    def close(self) -> None:
        self.client.close()

    def generate(self) -> None:
        _check(self.client.generate_text(model="bench", prompt=PROMPT, max_tokens=MAX_TOKENS).text, WHOLE)

    def stream(self, events: int) -> int:
        count = 0
        with self.client.stream_text(model=f"bench-sse-{events}", prompt=PROMPT, max_tokens=MAX_TOKENS) as s:
            for _ in s:
                count += 1
        _check(s.text, _STREAM_TEXT[events])
        return count


class NebulaSyncUvloop(NebulaSync):
    """nebula_sync with NEBULA_SYNC_UVLOOP=1: its loop on uvloop."""

    name = "nebula_sync (uvloop)"
    uvloop = "1"


class NebulaSyncStdlibJson(NebulaSync):
    """nebula_sync decoding with the stdlib's json even when orjson is installed."""

    name = "nebula_sync (stdlib json)"

    def open(self, base_url: str) -> None:
        from nebula_async import _parse

        _parse._fast_loads = None
        super().open(base_url)


class RawHttpx(SyncClient):
    """httpx.Client alone: post, decode the JSON, take the text; streams by ``iter_lines()``."""

    name = "httpx"

    def open(self, base_url: str) -> None:
        import httpx

        self.url = f"{base_url}/v1/text/generate"
        self.client = httpx.Client(headers=_HEADERS)

    def close(self) -> None:
        self.client.close()

    def generate(self) -> None:
        response = self.client.post(self.url, content=_nebula_body("bench", False))
        if response.status_code != 200:
            raise WrongReply(f"HTTP {response.status_code}")
        _check(json.loads(response.content)["data"]["text"], WHOLE)

    def stream(self, events: int) -> int:
        parts: list[str] = []
        finish = None
        with self.client.stream("POST", self.url, content=_nebula_body(f"bench-sse-{events}", True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    finish = _take(line[6:], parts)
                    if finish is not None:
                        break
        return _check_stream(parts, finish, "stop", events)


class OpenAISync(SyncClient):
    """openai-python's OpenAI (completions API)."""

    name = "openai"

    def open(self, base_url: str) -> None:
        import openai

        self.client = openai.OpenAI(api_key=API_KEY, base_url=f"{base_url}/v1")

    def close(self) -> None:
        self.client.close()

    def generate(self) -> None:
        result = self.client.completions.create(model="bench", prompt=PROMPT, max_tokens=MAX_TOKENS)
        _check(result.choices[0].text, WHOLE)

    def stream(self, events: int) -> int:
        parts: list[str] = []
        finish = None
        with self.client.completions.create(
            model=f"bench-sse-{events}", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True
        ) as stream:
            for chunk in stream:
                parts.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason
        return _check_stream(parts, finish, "length", events)


ASYNC_CLIENTS: dict[str, type[AsyncClient]] = {
    c.name: c
    for c in (
        NebulaAsync,
        NebulaAsyncStdlibJson,
        RawAiohttp,
        RawAiohttpIterAny,
        OpenAIAsync,
        OpenAIAsyncAiohttp,
    )
}
# --- one thread hop, no HTTP: what a sync call adds to an async one -------------------------------


async def _hop_reply() -> str:
    return WHOLE


class NebulaSyncHop(SyncClient):
    """nebula_sync's round trip to its event loop alone: a no-op coroutine run in its LoopThread,
    the runtime every NebulaClient call goes through."""

    name = "nebula_sync hop"

    def open(self, base_url: str) -> None:
        from nebula_sync._runtime import LoopThread

        os.environ["NEBULA_SYNC_UVLOOP"] = "0"
        self.runtime = LoopThread(name="nebula-sync-hop")

    def close(self) -> None:
        self.runtime.close()

    def generate(self) -> None:
        _check(self.runtime.run(_hop_reply), WHOLE)


class AnyioPortalCall(SyncClient):
    """anyio's BlockingPortal.call with the same no-op coroutine."""

    name = "anyio portal.call"

    def open(self, base_url: str) -> None:
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)

    def generate(self) -> None:
        _check(self.portal.call(_hop_reply), WHOLE)


class AnyioStartTaskSoon(AnyioPortalCall):
    """anyio's BlockingPortal.start_task_soon, waiting for its future."""

    name = "anyio start_task_soon"

    def generate(self) -> None:
        _check(self.portal.start_task_soon(_hop_reply).result(), WHOLE)


SYNC_CLIENTS: dict[str, type[SyncClient]] = {
    c.name: c
    for c in (
        NebulaSync,
        NebulaSyncUvloop,
        NebulaSyncStdlibJson,
        RawHttpx,
        OpenAISync,
        NebulaSyncHop,
        AnyioPortalCall,
        AnyioStartTaskSoon,
    )
}
