"""The public surface: what both packages export, and that the sync client mirrors the async one."""

from __future__ import annotations

import collections.abc
import contextlib
import importlib.metadata
import importlib.resources
import inspect
import subprocess
import sys
import typing
from types import ModuleType

import attrs
import pytest
from packaging.version import Version

import nebula_async
import nebula_sync
from tests.helpers import KEY

PACKAGES = [nebula_async, nebula_sync]
MIRRORED_METHODS = ["__init__", "generate_text", "stream_text", "generate_many", "as_completed", "run_batch"]
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing answers, nothing leaves the machine

# What each exported name is: the documented surface, by kind.
MODELS = {
    "GenerateRequest",
    "TextChunk",
    "TextGeneration",
    "Usage",
    "RetryPolicy",
    "Timeout",
    "RateLimit",
    "Outcome",
    "BatchProgress",
    "BatchSummary",
}
ERRORS = {
    "NebulaError",
    "APIError",
    "InvalidRequestError",
    "ContextLengthExceededError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ModelNotFoundError",
    "RateLimitError",
    "InsufficientQuotaError",
    "ServerError",
    "APIConnectionError",
    "APITimeoutError",
}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_sorted_and_unique(package: ModuleType) -> None:
    """Each package's __all__ is sorted and lists every name once."""
    names = list(package.__all__)
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_async_exports_are_the_documented_objects() -> None:
    """nebula_async exports the client, the stream, frozen attrs models and the error classes, all its own."""
    others = {"AsyncNebulaClient", "TextStream", "BatchInputError", "__version__"}
    assert set(nebula_async.__all__) == MODELS | ERRORS | others
    assert issubclass(nebula_async.BatchInputError, ValueError)  # bad input, like the argument checks
    for name in MODELS:
        model = getattr(nebula_async, name)
        assert attrs.has(model), name
        assert model.__module__.startswith("nebula_async."), name
        assert attrs.fields(model), name  # a model with fields, not an empty marker
    for name in ERRORS:
        error = getattr(nebula_async, name)
        assert issubclass(error, nebula_async.NebulaError), name
        assert error.__module__.startswith("nebula_async."), name
    assert issubclass(nebula_async.NebulaError, Exception)
    assert nebula_async.AsyncNebulaClient.__module__.startswith("nebula_async.")
    assert nebula_async.TextStream.__module__.startswith("nebula_async.")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_star_import_gives_exactly_all(package: ModuleType) -> None:
    """A star import gives exactly the names in __all__."""
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)  # the star import a user might write
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(package.__all__)


def test_sync_exports_the_async_surface_with_its_own_client() -> None:
    """nebula_sync exports the same names as nebula_async, with NebulaClient in place of AsyncNebulaClient."""
    expected = (set(nebula_async.__all__) - {"AsyncNebulaClient"}) | {"NebulaClient"}
    assert set(nebula_sync.__all__) == expected


@pytest.mark.parametrize(
    "name", sorted((set(nebula_async.__all__) & set(nebula_sync.__all__)) - {"TextStream"})
)
def test_shared_names_are_the_same_objects(name: str) -> None:
    """A model, error or config class imported from nebula_sync is the very object nebula_async defines."""
    assert getattr(nebula_sync, name) is getattr(nebula_async, name)


def test_each_client_returns_its_own_text_stream() -> None:
    """stream_text returns nebula_sync.TextStream (an iterator) or nebula_async.TextStream (an async one)."""
    sync_stream: object = nebula_sync.TextStream
    assert sync_stream is not nebula_async.TextStream
    assert typing.get_type_hints(nebula_sync.NebulaClient.stream_text)["return"] is nebula_sync.TextStream
    assert (
        typing.get_type_hints(nebula_async.AsyncNebulaClient.stream_text)["return"] is nebula_async.TextStream
    )
    assert issubclass(nebula_sync.TextStream, collections.abc.Iterator)
    assert issubclass(nebula_sync.TextStream, contextlib.AbstractContextManager)
    assert issubclass(nebula_async.TextStream, collections.abc.AsyncIterator)
    assert issubclass(nebula_async.TextStream, contextlib.AbstractAsyncContextManager)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_version_is_the_installed_distributions(package: ModuleType) -> None:
    """Both packages report the installed nebula-sdk's version, a canonical PEP 440 version."""
    installed = importlib.metadata.version("nebula-sdk")
    assert package.__version__ == installed
    assert str(Version(installed)) == installed  # Version() raises on anything PEP 440 does not allow


@pytest.mark.parametrize("method", MIRRORED_METHODS)
def test_sync_method_parameters_match_async_twin(method: str) -> None:
    """Each NebulaClient method has exactly its twin's parameters: names, kinds, defaults, annotations."""
    sync_params = list(inspect.signature(getattr(nebula_sync.NebulaClient, method)).parameters.values())
    async_params = list(
        inspect.signature(getattr(nebula_async.AsyncNebulaClient, method)).parameters.values()
    )
    assert sync_params == async_params


async def test_async_client_closes_with_aclose_or_async_with() -> None:
    """aclose() is a coroutine; ``async with`` gives the client itself and closes it on exit."""
    assert inspect.iscoroutinefunction(nebula_async.AsyncNebulaClient.aclose)
    client = nebula_async.AsyncNebulaClient(KEY, base_url=UNREACHABLE)
    async with client as entered:
        assert entered is client
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate_text(model="m", prompt="p")


def test_sync_client_closes_with_close_or_with() -> None:
    """close() is a plain method; ``with`` gives the client itself and closes it on exit."""
    assert not inspect.iscoroutinefunction(nebula_sync.NebulaClient.close)
    client = nebula_sync.NebulaClient(KEY, base_url=UNREACHABLE)
    with client as entered:
        assert entered is client
    with pytest.raises(RuntimeError, match="closed"):
        client.generate_text(model="m", prompt="p")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_package_ships_py_typed(package: ModuleType) -> None:
    """Each package carries a py.typed marker so type checkers use its annotations."""
    assert importlib.resources.files(package.__name__).joinpath("py.typed").is_file()


def _modules_loaded_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return set(result.stdout.split())


def test_importing_nebula_async_does_not_import_aiohttp_or_cattrs() -> None:
    """`import nebula_async` leaves aiohttp, cattrs and orjson unimported: they load on first use."""
    loaded = _modules_loaded_after("import nebula_async")
    assert "nebula_async" in loaded
    assert not {"aiohttp", "cattrs", "orjson"} & loaded


def test_importing_nebula_sync_starts_no_thread_and_loads_neither_aiohttp_nor_anyio() -> None:
    """`import nebula_sync` loads nothing the first call would not need, and anyio not at all."""
    loaded = _modules_loaded_after("import threading, nebula_sync\nassert threading.active_count() == 1")
    assert "nebula_sync" in loaded
    assert not {"aiohttp", "cattrs", "anyio"} & loaded


def test_a_sync_client_call_never_loads_anyio() -> None:
    """A sync call runs without anyio: the loop thread is nebula_sync's own (nothing listens on port 1)."""
    loaded = _modules_loaded_after(
        "from nebula_sync import NebulaClient\n"
        "c = NebulaClient('k', base_url='http://127.0.0.1:1/v1', max_retries=0)\n"
        "try:\n    c.generate_text(model='m', prompt='p')\nexcept Exception:\n    pass\n"
        "c.close()"
    )
    assert "aiohttp" in loaded  # the call did reach the transport
    assert "anyio" not in loaded


def test_constructing_a_client_imports_aiohttp() -> None:
    """Building an AsyncNebulaClient imports aiohttp, so that its first call, in the loop, does not.

    tests/integration/test_event_loop_blocking.py measures the loop's stall at that first call.
    """
    loaded = _modules_loaded_after(
        "import nebula_async\nnebula_async.AsyncNebulaClient('k', base_url='http://api.test/v1')"
    )
    assert "aiohttp" in loaded


def test_pure_modules_do_not_import_aiohttp() -> None:
    """The pure modules (errors, retry, models, SSE, parsing, config, batch files) work without aiohttp."""
    loaded = _modules_loaded_after(
        "import nebula_async._errors, nebula_async._retry, nebula_async._models, "
        "nebula_async._sse, nebula_async._parse, nebula_async._config, "
        "nebula_async._records, nebula_async._doneset, nebula_async._batchfile"
    )
    assert "aiohttp" not in loaded
