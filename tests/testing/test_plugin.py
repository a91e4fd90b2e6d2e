"""The pytest plugin's fixtures and marker, exercised by pytest runs in subprocesses."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from tests.testing._support import run_pytest

ROOT = Path(__file__).resolve().parents[2]
# A new user's project: pytest-asyncio in its default strict mode, loop-scope warning silenced.
STRICT_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
AUTO_INI = STRICT_INI + "asyncio_mode = auto\nfilterwarnings = error\n"


def _readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Testing your code", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "README's 'Testing your code' section has no python block"
    return match.group(1)


def test_readme_example_passes_in_a_new_project(tmp_path: Path) -> None:
    """README's complete test file passes as is, with pytest-asyncio in strict mode: 3 passed, no warnings."""
    code, output = run_pytest(tmp_path, _readme_example(), STRICT_INI)
    assert code == 0, output
    assert re.search(r"^3 passed in ", output, flags=re.MULTILINE), output
    assert "warning" not in output.lower(), output


FIXTURE_TESTS = """
import json
import urllib.request

import pytest

from nebula_async import AsyncNebulaClient
from nebula_async.testing import FakeModel


@pytest.mark.nebula_server(
    models=[FakeModel("tiny", 4)], default_models=False, api_keys={"sk-marker"}, replies={"Hi": "Hello there"}
)
def test_marker_kwargs_reach_the_server(nebula_server, nebula_sync_client):
    assert nebula_server.api_key == "sk-marker"
    assert set(nebula_server.models) == {"tiny"}
    assert nebula_sync_client.generate_text(model="tiny", prompt="Hi").text == "Hello there"
    assert nebula_server.requests[0].api_key == "sk-marker"


def test_first_leaves_requests_and_faults_behind(nebula_server, nebula_sync_client):
    assert nebula_server.api_key == "nebula-fake-key"
    assert nebula_server.requests == []
    nebula_sync_client.generate_text(model="Llama3.3-70B", prompt="Hi")
    nebula_server.fail_next(5)


def test_second_gets_a_fresh_server(nebula_server):
    assert nebula_server.requests == []
    assert nebula_server.pending_faults == 0


def test_sync_client_streams(nebula_server, nebula_sync_client):
    chunks = [c.text for c in nebula_sync_client.stream_text(model="Llama3.3-70B", prompt="Hi", max_tokens=3)]
    assert len(chunks) == 3
    assert [r.status for r in nebula_server.requests] == [200]


async def test_nebula_client_without_a_mark(nebula_server, nebula_client):
    result = await nebula_client.generate_text(model="Llama3.3-70B", prompt="Hi")
    assert result.request_id == nebula_server.requests[0].request_id


@pytest.mark.nebula_server(stream_usage=True, replies={"Hi": "Hello there"})
def test_stream_usage_marker(nebula_server):
    request = urllib.request.Request(
        nebula_server.base_url + "/text/generate",
        data=json.dumps({"model": "Llama3.3-70B", "prompt": "Hi", "stream": True}).encode(),
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        last = response.read().rstrip(b"\\n").split(b"\\n\\n")[-1]
    final = json.loads(last.removeprefix(b"data: "))
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert final == {"text": " there", "finish_reason": "stop", "usage": usage}


async def test_own_async_client_without_a_mark(nebula_server):
    async with AsyncNebulaClient(nebula_server.api_key, base_url=nebula_server.base_url) as client:
        async with client.stream_text(model="Llama3.3-70B", prompt="Hi", max_tokens=3) as stream:
            assert len([chunk async for chunk in stream]) == 3
"""


def test_fixtures_work_in_auto_mode(tmp_path: Path) -> None:
    """Under asyncio_mode=auto, strict markers, warnings as errors: marker kwargs, fresh servers, clients."""
    code, output = run_pytest(tmp_path, FIXTURE_TESTS, AUTO_INI, "--strict-markers")
    assert code == 0, output
    assert re.search(r"^7 passed in ", output, flags=re.MULTILINE), output


# Markers on a module, a class and a test; a nebula_client marker for both clients.
MARKER_TESTS = """
import pytest

from nebula_async import ServerError

pytestmark = pytest.mark.nebula_server(default_models=False, models=["module-model"], api_keys=["module-key"])


@pytest.mark.nebula_server(api_keys=["class-key"], models=["class-model"])
class TestMarkers:
    @pytest.mark.nebula_server(models=["method-model"])
    def test_method_marker_wins_per_key(self, nebula_server):
        assert nebula_server.api_key == "class-key"
        assert set(nebula_server.models) == {"method-model"}

    def test_class_marker_alone(self, nebula_server):
        assert nebula_server.api_key == "class-key"
        assert set(nebula_server.models) == {"class-model"}


@pytest.mark.nebula_client(max_retries=0)
def test_sync_client_gets_the_marker(nebula_server, nebula_sync_client):
    nebula_server.fail_next(status=500)
    with pytest.raises(ServerError):
        nebula_sync_client.generate_text(model="module-model", prompt="Hi")
    assert len(nebula_server.requests) == 1


@pytest.mark.nebula_client(max_retries=0)
async def test_async_client_gets_the_marker(nebula_server, nebula_client):
    nebula_server.fail_next(status=500)
    with pytest.raises(ServerError):
        await nebula_client.generate_text(model="module-model", prompt="Hi")
    assert len(nebula_server.requests) == 1
"""


def test_markers_merge_and_reach_both_clients(tmp_path: Path) -> None:
    """nebula_server markers merge per key, the closest winning; nebula_client reaches both clients."""
    # Regression: only the closest nebula_server marker counted, and there was no nebula_client marker.
    code, output = run_pytest(tmp_path, MARKER_TESTS, AUTO_INI, "--strict-markers")
    assert code == 0, output
    assert re.search(r"^4 passed in ", output, flags=re.MULTILINE), output


MARKER_MISUSE = """
import pytest


@pytest.mark.nebula_server("gpt-4")
def test_positional(nebula_server):
    pass


@pytest.mark.nebula_server(no_such_option=1)
def test_unknown_keyword(nebula_server):
    pass
"""


def test_marker_misuse_fails_with_a_clear_error(tmp_path: Path) -> None:
    """The marker with positional arguments fails with a usage error; an unknown keyword names itself."""
    code, output = run_pytest(tmp_path, textwrap.dedent(MARKER_MISUSE), STRICT_INI)
    assert code == 1, output
    assert re.search(r"^2 errors in ", output, flags=re.MULTILINE), output
    assert "UsageError: @pytest.mark.nebula_server takes keyword arguments only" in output
    assert "unexpected keyword argument 'no_such_option'" in output
