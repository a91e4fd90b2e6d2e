"""Run the API reference's example, offline, against a small local server: ``python -m nebula_sync.demo``.

The server listens on 127.0.0.1 only and speaks the documented protocol (success and error
envelopes, server-sent events); nothing leaves the machine and no API key is needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from nebula_sync import ModelNotFoundError, NebulaClient

_MODELS = {"gpt-4", "DeepSeek-V3-0324", "Llama3.3-70B"}
_REPLY = 'Here\'s a simple Hello World program in Python:\n\nprint("Hello, World!")'


@contextmanager
def local_server() -> Iterator[str]:
    """Serve a demo API in a background thread; yield its base URL."""
    ready = threading.Event()
    state: dict[str, object] = {"throttle": 1}  # the first request of the demo's retry step is rate limited

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") not in _MODELS:
            message = f"Model {body.get('model')!r} not found"
            missing = {"code": "model_not_found", "message": message, "details": {"model": message}}
            return web.json_response({"status": "error", "error": missing}, status=404)
        if body.get("prompt") == "retry me" and state["throttle"]:
            state["throttle"] = 0
            limited = {"code": "rate_limit_exceeded", "message": "Too many requests"}
            return web.json_response(
                {"status": "error", "error": limited}, status=429, headers={"Retry-After": "0.2"}
            )
        words = _REPLY.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if not body.get("stream"):
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": len(pieces)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            return web.json_response({"status": "success", "data": {"text": _REPLY, "usage": usage}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            event = {"text": piece, "finish_reason": "stop" if i == len(pieces) - 1 else None}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.03)  # a visible token rate
        await response.write_eof()
        return response

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/text/generate", generate)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    urls: list[str] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield urls[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def main() -> None:
    """Run the demo and print what each step shows."""
    logging.basicConfig(level=logging.WARNING, format="  log: %(levelname)s %(message)s")
    with local_server() as base_url:
        print(f"local demo API at {base_url}\n")

        # The API reference's example, as written (plus base_url, to stay on this machine).
        client = NebulaClient(api_key="YOUR_API_KEY", base_url=base_url)
        response = client.generate_text(
            model="gpt-4", prompt="Write a hello world program in Python", max_tokens=100
        )
        print("1. generate_text:")
        print(response.text)
        print(f"   usage: {response.usage}\n")

        print("2. stream_text: ", end="", flush=True)
        with client.stream_text(model="gpt-4", prompt="Write a hello world program") as stream:
            for chunk in stream:
                print(chunk.text, end="", flush=True)
        print(f"\n   finish_reason: {stream.finish_reason}\n")

        print("3. a rate limit (429, Retry-After: 0.2) is retried:")
        retried = client.generate_text(model="gpt-4", prompt="retry me")
        print(f"   succeeded after {retried.retries} retry\n")

        print("4. errors are typed:")
        try:
            client.generate_text(model="invalid-model", prompt="hi")
        except ModelNotFoundError as exc:
            print(f"   {type(exc).__name__}: {exc}")
        try:
            client.generate_text(model="gpt-4", prompt="hi", temperature=3)
        except ValueError as exc:
            print(f"   ValueError before sending: {exc}")
        # No client.close(): the reference's example doesn't call it either, and the process exits cleanly.


if __name__ == "__main__":
    main()
