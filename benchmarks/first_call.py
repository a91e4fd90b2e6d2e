"""Import and first call: ``python -m benchmarks.first_call`` prints a Markdown section.

Each figure is the median of ``--runs`` fresh interpreters (nothing imported yet), each running:

- ``import nebula_async`` (wall time, over the same interpreter's ``import asyncio``);
- ``AsyncNebulaClient(...)``, made outside the event loop (where the client now imports aiohttp);
- the first ``generate_text`` of that client, against a raw asyncio server on 127.0.0.1 in the
  same loop, while a heartbeat task wakes every millisecond: its largest gap is how long the first
  call blocked every other task of the loop;
- for the other choice, importing aiohttp off the loop: the same heartbeat while a thread imports
  aiohttp (``asyncio.to_thread``), and while the loop imports it inline (what the first call did).

Run it on a checkout with ``PYTHONPATH=<checkout>`` to compare two versions of the SDK.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import asyncio, json, sys, time
mode = sys.argv[1]
out = {}
t0 = time.perf_counter(); import asyncio as _a; out["asyncio"] = time.perf_counter() - t0

BODY = (b'{"status":"success","data":{"text":"hi",'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}')

async def handle(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % len(BODY) + BODY)
    await writer.drain()
    writer.close()

async def heartbeat(gaps):
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now

async def measure(work):
    gaps = []
    beat = asyncio.create_task(heartbeat(gaps))
    await asyncio.sleep(0.02)  # the heartbeat is running
    gaps.clear()
    t0 = time.perf_counter()
    await work()
    out["work"] = time.perf_counter() - t0
    await asyncio.sleep(0.005)  # the heartbeat records the gap the work ended
    beat.cancel()
    out["gap"] = max(gaps, default=0.0)

if mode == "sdk":
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    t0 = time.perf_counter(); import nebula_async; out["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client = nebula_async.AsyncNebulaClient("k", base_url=f"http://127.0.0.1:{port}/v1")
    out["construct"] = time.perf_counter() - t0
    async def main():
        server = await asyncio.start_server(handle, sock=listener)
        async def first():
            assert (await client.generate_text(model="m", prompt="p")).text == "hi"
        await measure(first)
        await client.aclose()
        server.close()
    asyncio.run(main())
else:
    import importlib
    async def main():
        if mode == "thread":
            async def work():
                await asyncio.to_thread(importlib.import_module, "aiohttp")
        else:
            async def work():
                importlib.import_module("aiohttp")
        await measure(work)
    asyncio.run(main())
print(json.dumps(out))
"""


def _run(mode: str, runs: int) -> dict[str, float]:
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=60
        )
        if proc.returncode:
            raise SystemExit(f"the {mode} run failed:\n{proc.stderr}")
        results.append(json.loads(proc.stdout))
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main(argv: list[str] | None = None) -> int:
    """Measure, then print the section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_call")
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per figure (median)")
    args = parser.parse_args(argv)
    sdk = _run("sdk", args.runs)
    inline = _run("inline", args.runs)
    thread = _run("thread", args.runs)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    print(f"### Import and first call (median of {args.runs} fresh interpreters)\n")
    print("| step | wall time | longest stall of the event loop |")
    print("|---|---:|---:|")
    print(f"| `import nebula_async` | {ms(sdk['import'])} | - |")
    print(f"| `AsyncNebulaClient(...)`, outside the loop | {ms(sdk['construct'])} | - |")
    print(f"| first `generate_text` | {ms(sdk['work'])} | {ms(sdk['gap'])} |")
    ways = (("in the loop (what a first call did)", inline), ("off the loop (`to_thread`)", thread))
    for label, row in ways:
        print(f"| `import aiohttp` {label} | {ms(row['work'])} | {ms(row['gap'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
