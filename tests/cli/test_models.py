"""`nebula models`: the API reference's model table, with what each model is best for."""

from __future__ import annotations

from tests.cli._support import nebula

# The reference's table, written out here rather than read from the package under test.
REFERENCE = [
    ("DeepSeek-V3-0324", "General text generation with high accuracy"),
    ("DeepSeek-R1-Distill-Llama-70B", "Complex queries requiring detailed responses"),
    ("DeepSeek-R1-Distill-Qwen-32B", "Efficient text generation with lower latency"),
    ("Llama3.3-70B", "Advanced conversational AI and knowledge tasks"),
    ("Qwen-QwQ-32B", "Reasoning and problem-solving tasks"),
    ("Qwen2.5-Coder-32B", "Code generation and technical documentation"),
]


def test_models_prints_the_reference_table_in_order() -> None:
    """Each model has a line with its "Best For", in the reference's order; no key is needed."""
    proc = nebula("models")
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = [line.split(None, 1) for line in proc.stdout.splitlines()]
    assert lines[0] == ["Model", "Best For"]
    assert [(name, best.strip()) for name, best in lines[1:]] == REFERENCE
