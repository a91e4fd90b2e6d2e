"""README's "Jupyter and IPython" advice, in a real Jupyter kernel (ipykernel), against a fake server.

The kernel is a child process driven over ZeroMQ, as a notebook front end drives it: nbclient runs
the README's cells as a notebook; jupyter_client's KernelManager interrupts a running cell with
SIGINT, as the notebook's stop button does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nebula_async.testing import FakeNebulaServer

nbformat = pytest.importorskip("nbformat", reason="nbclient is not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")
from jupyter_client.blocking.client import BlockingKernelClient  # noqa: E402  # after the skip: optional
from jupyter_client.manager import KernelManager  # noqa: E402  # after the skip: optional

ROOT = Path(__file__).resolve().parents[2]
KERNEL_WAIT = 30.0  # seconds for a kernel to start or a cell to finish: generous, for a loaded CI machine
ANSWER_AFTER = 10.0  # seconds the slow server takes to answer
PROMPT = 3.0  # an interrupted cell must be answered well within this; the call would take 10 s

pytestmark = pytest.mark.timeout(120)  # a kernel that never answers must fail the test, not hang it


def _readme_cells() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Jupyter and IPython", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(cells) == 2, "README's Jupyter section: a call, then aclose()"
    return [cell.strip() for cell in cells]


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the kernel's files in tmp_path, away from a developer's own Jupyter and IPython set-up."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # else jupyter_core warns that it will be the default


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, kernel_env: None) -> Iterator[FakeNebulaServer]:
    """A FakeNebulaServer in a thread, which the kernel's NEBULA_BASE_URL and NEBULA_API_KEY point at."""
    with FakeNebulaServer(replies={"Say hi": "Hi there!"}).run_in_thread() as server:
        monkeypatch.setenv("NEBULA_BASE_URL", server.base_url)
        monkeypatch.setenv("NEBULA_API_KEY", server.api_key)
        yield server


def test_readme_notebook_cells_run_in_a_kernel(api: FakeNebulaServer) -> None:
    """README's Jupyter cells run as written in a kernel (top-level await, aclose()); so does NebulaClient."""
    sync_cell = (
        "from nebula_sync import NebulaClient\n\n"
        'print(NebulaClient().generate_text(model="gpt-4", prompt="Say hi").text)'
    )
    cells = [*_readme_cells(), sync_cell]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in cells])
    nbclient.NotebookClient(notebook, timeout=KERNEL_WAIT, kernel_name="python3").execute()
    outputs = [cell.outputs for cell in notebook.cells]
    assert outputs[0] == [nbformat.v4.new_output("stream", name="stdout", text="Hi there!\n")]
    assert outputs[1] == []
    assert outputs[2] == [nbformat.v4.new_output("stream", name="stdout", text="Hi there!\n")]
    assert [request.status for request in api.requests] == [200, 200]


@pytest.fixture
def kernel(api: FakeNebulaServer) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A running kernel and a client of it; shut down after the test."""
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=KERNEL_WAIT)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _execute(client: BlockingKernelClient, code: str) -> str:
    """Send ``code`` to the kernel to run; return the message id of its execute_request."""
    msg_id: str = client.execute(code)
    return msg_id


def _reply(client: BlockingKernelClient, msg_id: str) -> dict[str, Any]:
    """Wait for the execute_reply of ``msg_id``; return its content."""
    while True:
        message = client.get_shell_msg(timeout=KERNEL_WAIT)
        if message["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = message["content"]
            return content


def _interrupted(
    kernel: tuple[KernelManager, BlockingKernelClient], server: FakeNebulaServer, code: str
) -> tuple[float, dict[str, Any]]:
    """Run ``code``, interrupt the kernel once its request reached ``server``; return the wait, the reply."""
    manager, client = kernel
    sent = len(server.requests)
    msg_id = _execute(client, code)
    deadline = time.monotonic() + KERNEL_WAIT
    while len(server.requests) == sent:
        assert time.monotonic() < deadline, "the cell's request never reached the server"
        time.sleep(0.01)
    time.sleep(0.2)  # the call now waits on its socket for the answer
    started = time.monotonic()
    manager.interrupt_kernel()
    reply = _reply(client, msg_id)
    return time.monotonic() - started, reply


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ('await client.generate_text(model="gpt-4", prompt="Write a poem")', "CancelledError"),
        (
            'async with client.stream_text(model="gpt-4", prompt="Write a poem") as stream:\n'
            "    text = [chunk.text async for chunk in stream]",
            "CancelledError",
        ),
        ('NebulaClient().generate_text(model="gpt-4", prompt="Write a poem")', "KeyboardInterrupt"),
    ],
    ids=["async_call", "async_stream_before_first_event", "sync_call"],
)
def test_kernel_interrupt_ends_a_waiting_call_at_once(
    api: FakeNebulaServer, kernel: tuple[KernelManager, BlockingKernelClient], code: str, error: str
) -> None:
    """A kernel interrupt ends a call waiting for a slow answer at once, as the README says."""
    # Regression: ipykernel's cancel of the cell waited for the answer (ipykernel#881), 1.5 s late for an
    # answer due 2 s after the call, until the SDK had signals wake the kernel's loop (_kernel.py).
    api.time_to_first_token = ANSWER_AFTER
    imports = "from nebula_async import AsyncNebulaClient\nfrom nebula_sync import NebulaClient\n"
    setup = imports + "client = AsyncNebulaClient()\n"
    assert _reply(kernel[1], _execute(kernel[1], setup))["status"] == "ok"
    waited, reply = _interrupted(kernel, api, code)
    assert (reply["status"], reply["ename"]) == ("error", error)
    assert waited < PROMPT
