"""The click group: global options, the small commands, and the one place errors become exit codes.

Exit codes: 0 done; 1 an API error (or a batch with failed rows, or stopped by an API error, or
stdout's reader gone away);
2 bad usage or input; 130 interrupted. A traceback only with ``-v``. The API key is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import click

from .._secret import Secret
from .._version import __version__

if TYPE_CHECKING:
    from .. import AsyncNebulaClient

__all__ = [
    "DEFAULT_MODEL",
    "ENV_MODEL",
    "EXIT_API_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MODELS",
    "Settings",
    "cli",
    "exit_code_for",
    "model_option",
    "run",
]

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

ENV_MODEL = "NEBULA_MODEL"
# The API reference's model table, in its order, with its "Best For" column.
MODELS = (
    ("DeepSeek-V3-0324", "General text generation with high accuracy"),
    ("DeepSeek-R1-Distill-Llama-70B", "Complex queries requiring detailed responses"),
    ("DeepSeek-R1-Distill-Qwen-32B", "Efficient text generation with lower latency"),
    ("Llama3.3-70B", "Advanced conversational AI and knowledge tasks"),
    ("Qwen-QwQ-32B", "Reasoning and problem-solving tasks"),
    ("Qwen2.5-Coder-32B", "Code generation and technical documentation"),
)
DEFAULT_MODEL = MODELS[0][0]


@attrs.frozen
class Settings:
    """The global options, shared by every command through click's context."""

    api_key: Secret | None = attrs.field(default=None, repr=False)  # never a str: tracebacks show locals
    base_url: str | None = None
    verbose: int = 0
    argv: tuple[str, ...] = attrs.field(default=(), repr=False)  # as given: the resume command repeats it

    def client(self, **options: Any) -> AsyncNebulaClient:
        """Make the client every command uses; None options fall back to the environment."""
        from .. import AsyncNebulaClient
        from .._config import ENV_API_KEY

        # `--api-key "$KEY"` with KEY unset: the SDK's error would name api_key=
        if self.api_key is not None and not self.api_key:
            raise click.UsageError(f"--api-key is empty: pass the key, or leave it out to use {ENV_API_KEY}")
        if self.api_key is None and not os.environ.get(ENV_API_KEY):
            raise click.UsageError(f"no API key: pass --api-key KEY or set {ENV_API_KEY}")
        # A Secret: AsyncNebulaClient takes one as it takes a str.
        return AsyncNebulaClient(api_key=cast("str | None", self.api_key), base_url=self.base_url, **options)


model_option = click.option(  # generate's and batch's: each use makes an Option of its own
    "-m",
    "--model",
    default=DEFAULT_MODEL,
    envvar=ENV_MODEL,
    show_default=True,
    show_envvar=True,
    help="model id (`nebula models` lists them)",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="nebula", message="%(prog)s %(version)s")
@click.option(
    "--api-key",
    metavar="KEY",
    help="API key (default: $NEBULA_API_KEY); never printed",
)
@click.option(
    "--base-url", metavar="URL", help="API base URL (default: $NEBULA_BASE_URL, else the public API)"
)
@click.option(
    "-v", "--verbose", count=True, help="show the SDK's log lines on stderr (-vv: debug), tracebacks"
)
@click.pass_context
def cli(ctx: click.Context, api_key: str | None, base_url: str | None, verbose: int) -> None:
    """Generate text with the Nebula API, run resumable batch jobs, and try it all offline.

    \b
    Start with `nebula demo`: a local fake API, no key or network needed.
    Exit codes: 0 done, 1 API error (or failed batch rows), 2 bad usage or input, 130 interrupted.
    """
    argv = ctx.obj if isinstance(ctx.obj, tuple) else tuple(sys.argv[1:])  # run() passes what it was given
    key = None if api_key is None else Secret(api_key)
    ctx.obj = Settings(api_key=key, base_url=base_url, verbose=verbose, argv=argv)
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


@cli.command(short_help="Generate text for a prompt.")
@click.argument("prompt")
@model_option
@click.option("--max-tokens", type=int, metavar="N", help="most tokens to generate")
@click.option("--temperature", type=float, metavar="T", help="sampling temperature, 0 to 2")
@click.option("--top-p", type=float, metavar="P", help="nucleus sampling, 0 to 1")
@click.option("--stop", multiple=True, metavar="TEXT", help="stop at this text (repeatable)")
@click.option(
    "--stream/--no-stream",
    default=None,
    help="print tokens as they arrive (default: when stdout is a terminal)",
)
@click.option(
    "--json", "as_json", is_flag=True, help="print the whole result as JSON: text, usage, request_id"
)
@click.pass_obj
def generate(
    settings: Settings,
    prompt: str,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: tuple[str, ...],
    stream: bool | None,
    as_json: bool,
) -> int:
    """Generate text for PROMPT (`-` reads it from stdin) and print it on stdout."""
    if as_json and stream:
        raise click.UsageError(
            "--json prints the whole result at the end: it can't be combined with --stream"
        )
    if prompt == "-":
        prompt = sys.stdin.read()
    streaming = sys.stdout.isatty() if stream is None and not as_json else bool(stream)
    request: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": list(stop) if stop else None,
    }
    return asyncio.run(_generate(settings, request, streaming=streaming, as_json=as_json))


async def _generate(settings: Settings, request: dict[str, Any], *, streaming: bool, as_json: bool) -> int:
    async with settings.client() as client:
        if streaming:
            text = ""
            async with client.stream_text(**request) as stream:
                async for chunk in stream:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                    text += chunk.text
            if not text.endswith("\n"):
                sys.stdout.write("\n")
            return EXIT_OK
        result = await client.generate_text(**request)
    if as_json:
        print(json.dumps(attrs.asdict(result), ensure_ascii=False))
    else:
        print(result.text)
    return EXIT_OK


@cli.command(short_help="List the models and what each is best for.")
def models() -> int:
    """List the API reference's text-generation models and what each is best for."""
    width = max(len(name) for name, _ in MODELS)
    for name, best_for in (("Model", "Best For"), *MODELS):  # plain columns: grep and cut work on them
        print(f"{name:<{width}}  {best_for}")
    return EXIT_OK


@cli.command(
    "fake-server",
    short_help="Serve a fake Nebula API on this machine.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,  # its own parser answers --help, with exactly its options
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def fake_server(ctx: click.Context, args: tuple[str, ...]) -> int:
    """Serve a fake Nebula API on this machine until Ctrl-C (`nebula fake-server --help`)."""
    from ..testing.__main__ import main as serve

    return serve(list(args), prog=ctx.command_path)


def _register_more() -> None:
    """Add the commands that live in modules of their own."""
    from ._batch import batch
    from ._demo import demo

    cli.add_command(batch)
    cli.add_command(demo)


_register_more()


def exit_code_for(error: BaseException) -> int:
    """Return the documented exit code for an exception that ended a command."""
    from .._errors import APIConnectionError, APIError, NebulaError

    if isinstance(error, (APIError, APIConnectionError)):
        return EXIT_API_ERROR
    if isinstance(error, (KeyboardInterrupt, click.Abort)):
        return EXIT_INTERRUPTED
    if isinstance(error, (NebulaError, ValueError, TypeError)):
        return EXIT_USAGE  # a bad argument, input line or setting (no API key)
    return EXIT_API_ERROR  # the output file could not be written (OSError), or a bug: not the user's usage


def _describe(error: BaseException) -> str:
    from .._errors import NebulaError

    if isinstance(error, (NebulaError, OSError, ValueError, TypeError)):
        return str(error)
    return f"{type(error).__name__}: {error}"  # a bug: its type is the first clue


def run(argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> int:
    """Run the command line with ``argv`` and return its exit code; errors become one line on stderr.

    A reader of stdout that went away (``nebula generate ... | head -c 10``) ends it quietly with 1.
    """
    code = _run(argv, prog_name)
    if not _flush_stdout():
        return code or EXIT_API_ERROR
    return code


def _flush_stdout() -> bool:
    """Flush stdout now rather than at exit; return False if its reader has gone (a closed pipe)."""
    try:
        # click answers EPIPE by wrapping sys.stdout in a wrapper whose flush ignores it: the
        # stream underneath still holds what could not be written.
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None and not stream.closed:
                stream.flush()
    except BrokenPipeError:
        # Else Python flushes again at exit: "Exception ignored ... BrokenPipeError", status 120.
        with contextlib.suppress(OSError, ValueError):  # not a real file (a test's capture)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return False
    return True


def _run(argv: Sequence[str] | None, prog_name: str | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _verbose(args)
    try:
        code = cli.main(args=args, prog_name=prog_name, standalone_mode=False, obj=tuple(args))
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:  # fake-server's argparse: --help, or a bad option
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (Exception, KeyboardInterrupt, click.Abort) as exc:
        if verbose:
            traceback.print_exc()
        if isinstance(exc, (KeyboardInterrupt, click.Abort)):
            print("nebula: interrupted", file=sys.stderr)
        else:
            print(f"nebula: error: {_describe(exc)}", file=sys.stderr)
            if _is_bug(exc) and not verbose:
                print("nebula: this is a bug: please report it with the output of -v", file=sys.stderr)
        return exit_code_for(exc)
    return code if isinstance(code, int) else EXIT_OK


def _verbose(args: list[str]) -> bool:
    """Whether the global options (those before the command's name) include -v."""
    taking_value = False
    for arg in args:
        if taking_value:
            taking_value = False
        elif arg in ("--api-key", "--base-url"):
            taking_value = True
        elif arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            return True
        elif not arg.startswith("-"):
            return False  # the command's name: what follows is its own
    return False


def _is_bug(error: BaseException) -> bool:
    from .._errors import NebulaError

    return not isinstance(error, (NebulaError, ValueError, TypeError, OSError))
