"""What the fake server's tests share: the values they send, and raw clients that show the wire.

Most tests speak raw aiohttp (or urllib, from sync code) to the server, so the server is checked
independently of the SDK; the SDK appears only where the point is that it maps an answer right.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from nebula_async import AsyncNebulaClient, RetryPolicy, TextChunk, TextStream
from nebula_async.testing import FakeNebulaServer

FAKE_KEY = "sk-fake-test-SECRET-4fQ9zW"  # distinctive: any sighting of it in a log, repr or diff is a leak
MODEL = "Llama3.3-70B"
PATH = "/text/generate"  # after base_url, which ends in /v1
WAIT = 10.0  # seconds: generous, only reached when something is broken
BANNER = re.compile(r"^FakeNebulaServer at (http://127\.0\.0\.1:(\d+)/v1) ")  # the CLI's first line
THREE_FAST_RETRIES = RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.001)

# The API reference's model table, written out here rather than read from the package under test.
REFERENCE_MODELS = [
    "DeepSeek-V3-0324",
    "DeepSeek-R1-Distill-Llama-70B",
    "DeepSeek-R1-Distill-Qwen-32B",
    "Llama3.3-70B",
    "Qwen-QwQ-32B",
    "Qwen2.5-Coder-32B",
]
# The model ids of the API reference's examples, which the server knows too, with these contexts.
EXAMPLE_MODELS = {"gpt-4": 8192, "claude-2": 100000, "llama-2-70b": 4096}

# The replies of the ``fake`` fixture's server, by prompt; any other prompt gets the made-up text.
FIVE_WORDS = "one two three four five"
LONG_REPLY = " ".join(f"w{i}" for i in range(300))  # 300 tokens: "w0", " w1", ...
UNICODE_REPLY = "Grüße, 世界! naïve café 😀 — ok\n\tdone"
REPLIES = {"Say hi": "Hello, World!", "five": FIVE_WORDS, "long": LONG_REPLY, "unicode": UNICODE_REPLY}


@dataclasses.dataclass(frozen=True)
class Answer:
    """One raw HTTP answer: status, headers, parsed Content-Type and the body's bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    content_type: str
    raw: bytes

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.raw)

    def success(self) -> dict[str, Any]:
        """Return ``data`` after checking the success envelope's exact shape."""
        assert (self.status, self.content_type) == (200, "application/json"), self.raw
        body = self.json()
        assert set(body) == {"status", "data"}
        assert body["status"] == "success"
        data = body["data"]
        assert set(data) == {"text", "usage"}
        assert isinstance(data["text"], str)
        check_usage(data["usage"])
        return dict(data)

    def error(self) -> dict[str, Any]:
        """Return ``error`` after checking the error envelope's exact shape."""
        assert self.content_type == "application/json", self.raw
        body = self.json()
        assert set(body) == {"status", "error"}
        assert body["status"] == "error"
        error = body["error"]
        assert {"code", "message"} <= set(error) <= {"code", "message", "details"}
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]
        return dict(error)

    def events(self) -> list[dict[str, Any]]:
        """Return a whole stream's events after checking each one's exact bytes against the reference.

        Every event is ``data: {"text": ..., "finish_reason": ...}`` then a blank line; the final
        one may add ``"usage"`` (``stream_usage=True``).
        """
        assert (self.status, self.content_type) == (200, "text/event-stream"), self.raw
        assert self.raw.endswith(b"\n\n")
        parts = self.raw[:-2].split(b"\n\n")
        events = []
        for i, part in enumerate(parts):
            assert part.startswith(b"data: ")
            event = json.loads(part[len(b"data: ") :])
            if i == len(parts) - 1 and "usage" in event:
                assert list(event) == ["text", "finish_reason", "usage"]
                check_usage(event["usage"])
            else:
                assert list(event) == ["text", "finish_reason"]
            # The byte shape json.dumps gives: `data: {"text": "...", "finish_reason": null}`.
            assert part == b"data: " + json.dumps(event).encode()
            events.append(event)
        return events


def check_usage(usage: Mapping[str, Any]) -> None:
    """Check that ``usage`` has exactly the three documented int counts, the total their sum."""
    assert list(usage) == ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert all(type(v) is int for v in usage.values())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def parse_events(raw: bytes) -> list[Any]:
    """Decode every whole ``data:`` event in ``raw``, error events and cut streams included."""
    return [json.loads(block.removeprefix(b"data: ")) for block in raw.split(b"\n\n") if block.strip()]


def body(**fields: Any) -> dict[str, Any]:
    """Return a valid request body with ``fields`` added or replaced."""
    return {"model": MODEL, "prompt": "Say hi", **fields}


async def send(
    http: aiohttp.ClientSession,
    server: FakeNebulaServer,
    payload: object = b"",
    *,
    key: str | None = FAKE_KEY,
    content_type: str | None = "application/json",
    method: str = "POST",
    path: str = PATH,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Send ``payload`` (bytes as is, anything else as JSON) and return the whole answer."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent: dict[str, str] = {}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if content_type is not None:
        sent["Content-Type"] = content_type
    sent.update(headers or {})
    skip = () if content_type is not None else ("Content-Type",)
    async with http.request(
        method, server.base_url + path, data=data, headers=sent, skip_auto_headers=skip
    ) as response:
        raw = await response.read()
        return Answer(response.status, response.headers, response.content_type, raw)


async def both(
    http: aiohttp.ClientSession, server: FakeNebulaServer, request: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send ``request`` without and then with streaming; return the success data and the events."""
    data = (await send(http, server, request)).success()
    events = (await send(http, server, {**request, "stream": True})).events()
    return data, events


async def read_broken_stream(
    http: aiohttp.ClientSession, server: FakeNebulaServer, request: dict[str, Any]
) -> bytes:
    """Stream ``request`` and return the bytes read before the body broke; fail if it did not break."""
    received = b""
    async with http.post(
        server.base_url + PATH,
        json={**request, "stream": True},
        headers={"Authorization": f"Bearer {FAKE_KEY}"},
    ) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # noqa: PT012  # the loop is what must raise
            while chunk := await response.content.readany():
                received += chunk
    return received


async def data_line_times(
    http: aiohttp.ClientSession, server: FakeNebulaServer, request: dict[str, Any]
) -> tuple[float, list[float]]:
    """Stream ``request``; return when it was sent and when each ``data:`` line arrived (perf_counter)."""
    headers = {"Authorization": f"Bearer {FAKE_KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with http.post(
        server.base_url + PATH, data=json.dumps({**request, "stream": True}), headers=headers
    ) as response:
        assert response.status == 200
        while line := await response.content.readline():
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
    return started, arrivals


def joined(events: list[dict[str, Any]]) -> str:
    """Return the events' texts concatenated."""
    return "".join(e["text"] for e in events)


def finish_reasons(events: list[dict[str, Any]]) -> list[str | None]:
    """Return each event's finish_reason, in order."""
    return [e["finish_reason"] for e in events]


def statuses(server: FakeNebulaServer) -> list[int | None]:
    """Return the status answered to each recorded request (None: no answer), oldest first."""
    return [r.status for r in server.requests]


def sdk(server: FakeNebulaServer, **kwargs: Any) -> AsyncNebulaClient:
    """Return an SDK client for ``server``, with its key unless one is given."""
    kwargs.setdefault("api_key", server.api_key)
    return AsyncNebulaClient(base_url=server.base_url, **kwargs)


async def drain(stream: TextStream, into: list[TextChunk]) -> None:
    """Read ``stream`` to its end inside its ``async with``, appending each chunk to ``into``."""
    async with stream:
        async for chunk in stream:
            into.append(chunk)


def post(
    base_url: str, payload: object = None, *, data: bytes | None = None, key: str = FAKE_KEY
) -> tuple[int, dict[str, str], Any]:
    """POST from sync code (urllib); return the status, the headers and the decoded JSON answer.

    ``payload`` is sent as JSON (default: ``body()``), ``data`` as is.
    """
    if data is None:
        data = json.dumps(body() if payload is None else payload).encode()
    request = urllib.request.Request(
        base_url + PATH,
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


def refuses(port: int) -> bool:
    """Return whether nothing accepts connections on 127.0.0.1:``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def run_pytest(tmp_path: Path, test_file: str, ini: str, *args: str) -> tuple[int, str]:
    """Write ``test_file`` and ``ini`` into tmp_path, run pytest there; return its exit code and output."""
    (tmp_path / "test_example.py").write_text(test_file)
    (tmp_path / "pytest.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NEBULA_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr
