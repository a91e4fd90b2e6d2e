"""Run the API reference's example, offline, against a local fake API: ``python -m nebula_sync.demo``.

The server is ``nebula_async.testing.FakeNebulaServer``, the one the SDK's own tests use: it listens on
127.0.0.1 only and speaks the documented protocol (success and error envelopes, server-sent events);
nothing leaves the machine and no API key is needed.
"""

from __future__ import annotations

import logging
import sys

from nebula_async.testing import FakeNebulaServer
from nebula_sync import ModelNotFoundError, NebulaClient

_PROMPT = "Write a hello world program in Python"  # the API reference's example
_STREAM_PROMPT = "Write a hello world program"  # the API reference's streaming example
_REPLY = 'Here\'s a simple Hello World program in Python:\n\nprint("Hello, World!")'
_TOKEN_DELAY = 0.03  # seconds between streamed chunks: slow enough to watch


def main() -> None:
    """Run the demo and print what each step shows."""
    # stdout, not stderr: the retry's WARNING line is part of what the demo shows.
    logging.basicConfig(level=logging.WARNING, format="  log: %(levelname)s %(message)s", stream=sys.stdout)
    server = FakeNebulaServer(
        models=["gpt-4"], replies={_PROMPT: _REPLY, _STREAM_PROMPT: _REPLY}, stream_usage=True
    )
    with server.run_in_thread():
        print(f"local demo API at {server.base_url}\n")

        # The API reference's example, as written (plus base_url, to stay on this machine).
        client = NebulaClient(api_key="YOUR_API_KEY", base_url=server.base_url)
        response = client.generate_text(model="gpt-4", prompt=_PROMPT, max_tokens=100)
        print("1. generate_text:")
        print(response.text)
        print(f"   usage: {response.usage}\n")

        print("2. stream_text: ", end="", flush=True)
        server.token_delay = _TOKEN_DELAY
        try:
            with client.stream_text(model="gpt-4", prompt=_STREAM_PROMPT) as stream:
                for chunk in stream:
                    print(chunk.text, end="", flush=True)
        finally:
            server.token_delay = 0.0
        print(f"\n   finish_reason: {stream.finish_reason}, usage: {stream.usage}\n")

        print("3. a rate limit (429, retry after 0.2 s) is retried:")
        server.fail_next(1, status=429, code="rate_limit_exceeded", retry_after=0.2)
        retried = client.generate_text(model="gpt-4", prompt="Say hi")
        statuses = ", then ".join(str(r.status) for r in server.requests[-1 - retried.retries :])
        print(f"   succeeded after {retried.retries} retry (the server answered {statuses})\n")

        print("4. errors are typed:")
        try:
            client.generate_text(model="invalid-model", prompt="hi")
        except ModelNotFoundError as exc:
            print(f"   {type(exc).__name__}: {exc}")
        try:
            client.generate_text(model="gpt-4", prompt="hi", temperature=3)
        except ValueError as exc:
            print(f"   ValueError before sending: {exc}")
        print(f"\nthe local API received {len(server.requests)} requests")
        # No client.close(): the reference's example doesn't call it either, and the process exits cleanly.


if __name__ == "__main__":
    main()
