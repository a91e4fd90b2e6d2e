"""A client's first call does not stall its event loop: aiohttp is imported when the client is made.

A regression: the first call imported aiohttp inside the running loop, which blocked every other
task of a web backend for about 0.3 s (``-X dev`` flagged it as a slow callback). Each test runs in
a fresh interpreter, where aiohttp is not imported yet. The figures (import, construction, first
call, and importing aiohttp off the loop instead) are in benchmarks/RESULTS.md, "Import and first
call", from ``python -m benchmarks.first_call``.
"""

from __future__ import annotations

import json

from tests.helpers import run_code

# Loose: the first call itself takes a few ms, importing aiohttp ~300 ms; this machine is loaded.
LONGEST_STALL = 0.15

_FIRST_CALL = r"""
import asyncio, json, socket, sys, time
import nebula_async

BODY = (b'{"status":"success","data":{"text":"hi",'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}')
listener = socket.create_server(("127.0.0.1", 0))
before = "aiohttp" in sys.modules
client = nebula_async.AsyncNebulaClient("k", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
made = "aiohttp" in sys.modules

async def answer(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    await reader.readexactly(size)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % len(BODY) + BODY)
    await writer.drain()
    writer.close()

async def main():
    asyncio.get_running_loop().slow_callback_duration = STALL  # what debug mode reports
    server = await asyncio.start_server(answer, sock=listener)
    gaps = []
    async def heartbeat():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    gaps.clear()
    modules = set(sys.modules)
    text = (await client.generate_text(model="m", prompt="p")).text
    new = set(sys.modules) - modules
    loaded = sorted(m for m in new if m.split(".")[0] in ("aiohttp", "multidict", "yarl"))
    await asyncio.sleep(0.01)  # the heartbeat notes the gap the call ended
    beat.cancel()
    await client.aclose()
    server.close()
    print(json.dumps({"before": before, "made": made, "text": text, "loaded": loaded, "stall": max(gaps)}))

asyncio.run(main())
"""


def test_the_first_call_does_not_stall_the_event_loop() -> None:
    """The constructor loads aiohttp; the first call imports none of it, and stalls no other task."""
    proc, _ = run_code(_FIRST_CALL.replace("STALL", repr(LONGEST_STALL)))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert (seen["before"], seen["made"], seen["text"], seen["loaded"]) == (False, True, "hi", [])
    assert seen["stall"] < LONGEST_STALL, seen


def test_the_first_call_is_no_slow_callback_in_debug_mode() -> None:
    """Under asyncio debug (``-X dev``), a fresh client's first call logs no "Executing ... took" warning."""
    code = _FIRST_CALL.replace("STALL", repr(LONGEST_STALL)).replace("main())", "main(), debug=True)")
    proc, _ = run_code(code, "-X", "dev")
    assert proc.returncode == 0, proc.stderr
    assert "took" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["loaded"] == []
