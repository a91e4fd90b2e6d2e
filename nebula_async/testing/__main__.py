"""Run FakeNebulaServer standalone until Ctrl-C: ``python -m nebula_async.testing --port 8080``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from ._faults import FaultMix
from ._server import FakeNebulaServer
from ._state import FakeModel


def _model(value: str) -> FakeModel:
    name, colon, context = value.rpartition(":")
    if not (colon and context.isdigit()):  # no context given, or a name with a colon, such as llama3:8b
        name, context = value, ""
    try:
        return FakeModel(name, int(context)) if context else FakeModel(name)
    except (TypeError, ValueError):  # an empty name, a context of 0
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:CONTEXT_LENGTH, got {value!r}") from None


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a fake Nebula text-generation API on this machine, until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY",
        help="accept only this key (repeatable; default: any non-empty key)",
    )  # fmt: skip
    parser.add_argument(
        "--model", action="append", dest="models", type=_model, default=[], metavar="NAME[:CONTEXT]",
        help="add a model, e.g. mistral-7b:32768 (repeatable; the API reference's nine are always there)",
    )  # fmt: skip
    parser.add_argument("--time-to-first-token", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--token-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--stream-usage", action="store_true", help="put usage in each stream's final event")
    parser.add_argument("--requests-per-second", type=int, metavar="N", help="per-key rate limit")
    parser.add_argument("--requests-per-minute", type=int, metavar="N", help="per-key rate limit")
    parser.add_argument(
        "--tokens-per-minute", type=int, metavar="TOKENS", help="per-key limit, prompt plus completion"
    )
    parser.add_argument(
        "--tokens-per-second", type=int, metavar="TOKENS", help="per-key limit, prompt plus completion"
    )
    parser.add_argument(
        "--token-quota", type=int, metavar="TOKENS", help="tokens per key before insufficient_quota"
    )
    parser.add_argument(
        "--faults", type=float, default=0.0, metavar="RATE",
        help="fault this share of the requests at random, e.g. 0.1 (429, 5xx, HTML, disconnects, ...)",
    )  # fmt: skip
    parser.add_argument(
        "--faults-seed", type=int, metavar="N", help="seed of the random faults (default: fresh)"
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=1.0, metavar="SECONDS",
        help="how long a 'slow' random fault holds its reply (default: 1.0)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="do not print a line per request")
    return parser


async def _serve(server: FakeNebulaServer, *, any_key: bool) -> None:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
        # Before the banner: whoever reads it may signal at once. SIGINT too: a KeyboardInterrupt
        # raised at a random point of the loop (Python 3.10's asyncio.run) can skip the clean stop.
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with server:
        keys = "any non-empty Bearer key" if any_key else "the --api-key keys only"
        print(f"FakeNebulaServer at {server.base_url} ({keys}; Ctrl-C to stop)", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m nebula_async.testing") -> int:
    """Parse the command line and serve until interrupted; return the exit status.

    ``prog`` names the command in its help and errors (``nebula fake-server`` runs it too).
    """
    args = _parser(prog).parse_args(argv)
    try:
        faults = None
        if args.faults:
            faults = FaultMix(rate=args.faults, seed=args.faults_seed, slow_seconds=args.slow_seconds)
        server = FakeNebulaServer(
            host=args.host,
            port=args.port,
            api_keys=args.api_keys,
            models=args.models,
            time_to_first_token=args.time_to_first_token,
            token_delay=args.token_delay,
            stream_usage=args.stream_usage,
            requests_per_second=args.requests_per_second,
            requests_per_minute=args.requests_per_minute,
            token_quota=args.token_quota,
            tokens_per_minute=args.tokens_per_minute,
            tokens_per_second=args.tokens_per_second,
            max_recorded=0,  # nobody can read them from the command line; a long run must not grow
            access_log=not args.quiet,
            faults=faults,
        )
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_serve(server, any_key=args.api_keys is None))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or the address is not ours
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
