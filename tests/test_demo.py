"""`python -m nebula_sync.demo` (the API reference's example, offline) runs and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPLY = 'Here\'s a simple Hello World program in Python:\n\nprint("Hello, World!")'  # the reference's text


def test_demo_runs_offline_and_exits_cleanly() -> None:
    """The demo prints the example's text, a stream, a retry and typed errors, then exits 0 quietly."""
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
    assert proc.stderr == ""  # no traceback, no unclosed-session warning; the retry's log line is on stdout
    out = proc.stdout
    assert out.startswith("local demo API at http://127.0.0.1:")
    assert f"1. generate_text:\n{REPLY}\n   usage: Usage(prompt_tokens=7, completion_tokens=20" in out
    assert f"2. stream_text: {REPLY}\n   finish_reason: stop, usage: Usage(prompt_tokens=" in out
    assert "  log: WARNING rate limited by the API (rate_limit_exceeded: " in out
    assert "every call of this client waits 0.200 s before it is sent" in out
    assert "   succeeded after 1 retry (the server answered 429, then 200)\n" in out
    assert "   ModelNotFoundError: model_not_found: Model 'invalid-model' not found (HTTP 404" in out
    assert "   ValueError before sending: temperature must be between 0 and 2, got 3\n" in out
    assert out.endswith("the local API received 5 requests\n")  # the ValueError sent nothing
    assert "YOUR_API_KEY" not in out
