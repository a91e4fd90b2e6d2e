"""Helpers shared by the fake server's tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# The API reference's model table, written out here rather than read from the package under test.
REFERENCE_MODELS = [
    "DeepSeek-V3-0324",
    "DeepSeek-R1-Distill-Llama-70B",
    "DeepSeek-R1-Distill-Qwen-32B",
    "Llama3.3-70B",
    "Qwen-QwQ-32B",
    "Qwen2.5-Coder-32B",
]


def refuses(port: int) -> bool:
    """Return whether nothing accepts connections on 127.0.0.1:``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def run_pytest(tmp_path: Path, test_file: str, ini: str, *args: str) -> tuple[int, str]:
    """Write ``test_file`` and ``ini`` into tmp_path, run pytest there; return its exit code and output."""
    (tmp_path / "test_example.py").write_text(test_file)
    (tmp_path / "pytest.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NEBULA_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr
