"""The README's main-job command, ``python -m nebula_sync.demo``, runs offline and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_offline_and_exits_cleanly() -> None:
    """The demo prints the example's text, a stream, a retry and typed errors, then exits 0 at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBULA_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "nebula_sync.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'print("Hello, World!")' in out
    assert "finish_reason: stop" in out
    assert "succeeded after 1 retry" in out
    assert "ModelNotFoundError: model_not_found" in out
    assert "ValueError before sending: temperature must be between 0 and 2, got 3" in out
    # The only stderr line is the retry's WARNING: no traceback, no unclosed-session warning.
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if "WARNING retrying in" in line
    ]
    assert "YOUR_API_KEY" not in out + proc.stderr
