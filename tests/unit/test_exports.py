"""The public surface: what both packages export, and that the sync client mirrors the async one."""

from __future__ import annotations

import importlib.resources
import inspect
import subprocess
import sys
from types import ModuleType

import pytest

import nebula_async
import nebula_sync

PACKAGES = [nebula_async, nebula_sync]
MIRRORED_METHODS = ["__init__", "generate_text", "stream_text", "generate_many"]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_sorted_and_unique(package: ModuleType) -> None:
    """Each package's __all__ is sorted and lists every name once."""
    names = list(package.__all__)
    assert names == sorted(names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_exported_name_resolves(package: ModuleType) -> None:
    """Every name in __all__ resolves, and a star import gives exactly those names."""
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []
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


def test_sync_text_stream_is_its_own_class() -> None:
    """nebula_sync.TextStream is a blocking class of its own, not the async one."""
    sync_stream: object = nebula_sync.TextStream
    assert sync_stream is not nebula_async.TextStream
    assert hasattr(nebula_sync.TextStream, "__iter__")
    assert hasattr(nebula_sync.TextStream, "__next__")
    assert hasattr(nebula_sync.TextStream, "__enter__")
    assert hasattr(nebula_async.TextStream, "__aiter__")
    assert hasattr(nebula_async.TextStream, "__aenter__")


def test_version_is_0_1_0() -> None:
    """Both packages report the distribution's version, 0.1.0."""
    assert nebula_async.__version__ == "0.1.0"
    assert nebula_sync.__version__ == "0.1.0"


@pytest.mark.parametrize("method", MIRRORED_METHODS)
def test_sync_method_parameters_match_async_twin(method: str) -> None:
    """Each NebulaClient method has exactly its twin's parameters: names, kinds, defaults, annotations."""
    sync_params = list(inspect.signature(getattr(nebula_sync.NebulaClient, method)).parameters.values())
    async_params = list(
        inspect.signature(getattr(nebula_async.AsyncNebulaClient, method)).parameters.values()
    )
    assert sync_params == async_params


@pytest.mark.parametrize("method", MIRRORED_METHODS)
def test_sync_method_parameter_names_kinds_and_defaults_match(method: str) -> None:
    """Each NebulaClient method is called like its twin: the same names, kinds and defaults, in order."""

    def shape(fn: object) -> list[tuple[str, object, object]]:
        params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]  # a function object
        return [(p.name, p.kind, p.default) for p in params]

    assert shape(getattr(nebula_sync.NebulaClient, method)) == shape(
        getattr(nebula_async.AsyncNebulaClient, method)
    )


def test_close_methods_differ_only_in_name() -> None:
    """The async client closes with aclose(), the sync one with close(); each has a context manager."""
    assert inspect.iscoroutinefunction(nebula_async.AsyncNebulaClient.aclose)
    assert not inspect.iscoroutinefunction(nebula_sync.NebulaClient.close)
    assert hasattr(nebula_async.AsyncNebulaClient, "__aenter__")
    assert hasattr(nebula_sync.NebulaClient, "__enter__")


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


def test_importing_nebula_async_does_not_import_aiohttp() -> None:
    """`import nebula_async` leaves aiohttp unimported: it loads on first use."""
    loaded = _modules_loaded_after("import nebula_async")
    assert "nebula_async" in loaded
    assert "aiohttp" not in loaded


def test_constructing_a_client_does_not_import_aiohttp() -> None:
    """Building an AsyncNebulaClient (no call yet) still does not import aiohttp."""
    loaded = _modules_loaded_after(
        "import nebula_async\nnebula_async.AsyncNebulaClient('k', base_url='http://api.test/v1')"
    )
    assert "aiohttp" not in loaded


def test_pure_modules_do_not_import_aiohttp() -> None:
    """The pure modules (errors, retry, models, SSE, parsing, config) work without aiohttp loaded."""
    loaded = _modules_loaded_after(
        "import nebula_async._errors, nebula_async._retry, nebula_async._models, "
        "nebula_async._sse, nebula_async._parse, nebula_async._config"
    )
    assert "aiohttp" not in loaded
