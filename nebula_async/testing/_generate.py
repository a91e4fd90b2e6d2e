"""The fake server's tokenizer and its deterministic text generation (pure: no I/O, no aiohttp).

The tokenizer: a token is a word (a run of letters, digits and underscores) or one other
non-space character, together with the whitespace before it; whitespace at the very end of a text
is one token of its own. ``"Hello, World!"`` is ``["Hello", ",", " World", "!"]``: four tokens.
Joining a text's tokens gives the text back, byte for byte.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

import attrs

__all__ = ["Generation", "count_tokens", "default_reply", "generate", "tokenize"]

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

_WORDS = (
    "the", "a", "model", "answer", "token", "stream", "server", "request", "quick", "simple", "small",
    "clear", "text", "reply", "line", "word", "test", "value", "result", "code", "data", "list", "is",
    "was", "will", "can", "should", "makes", "reads", "writes", "sends", "returns", "each", "every",
    "one", "two", "three", "first", "last", "next", "fast", "slow", "good", "new", "old", "here", "there",
    "now", "then", "and", "or", "but", "with", "from", "into", "over", "under", "about", "after",
)  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Split ``text`` into the fake server's tokens; ``"".join(tokenize(t)) == t``."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """Return how many tokens the fake server counts in ``text`` (what ``usage`` reports)."""
    return len(_TOKEN.findall(text))


_CACHED_PROMPT_CHARS = 4096  # longer prompts are rare in load tests and would pin memory in the cache


def default_reply(model: str, prompt: str, temperature: float, top_p: float) -> str:
    """Return the reply the fake server writes when no other is configured.

    Two to four sentences of five to twelve words, chosen by a generator seeded with the model,
    prompt, temperature and top_p: the same request always gets the same text, on any machine.
    """
    # + 0.0 turns -0.0 into 0.0: equal numbers must give equal text (the cache treats them as one).
    temperature, top_p = float(temperature) + 0.0, float(top_p) + 0.0
    if len(prompt) > _CACHED_PROMPT_CHARS:
        return _make_reply(model, prompt, temperature, top_p)
    return _cached_reply(model, prompt, temperature, top_p)


def _make_reply(model: str, prompt: str, temperature: float, top_p: float) -> str:
    seed = f"{model}\x00{prompt}\x00{temperature!r}\x00{top_p!r}"
    rng = random.Random(seed.encode("utf-8", "surrogatepass"))
    sentences = []
    for _ in range(rng.randint(2, 4)):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 12)))
        sentences.append(words[0].upper() + words[1:] + ".")
    return " ".join(sentences)


_cached_reply = functools.lru_cache(maxsize=4096)(_make_reply)  # load tests repeat prompts


@attrs.frozen
class Generation:
    """What one request generates: the text, the pieces a stream sends, and why it ended."""

    text: str
    chunks: tuple[str, ...]  # one stream event each; they concatenate to ``text``
    finish_reason: str  # "stop" (the reply ended or a stop string came) or "length" (max_tokens)
    completion_tokens: int


def generate(reply: str, *, max_tokens: int, stop: Sequence[str] = ()) -> Generation:
    """Generate ``reply`` token by token, as a model would, up to ``max_tokens`` or a stop string.

    A stop string ends the text just before it (it is not included); it is found even when it
    spans tokens. ``completion_tokens`` counts the tokens produced, the one that completed the stop
    string included. A reply that ends exactly at ``max_tokens`` finishes with "stop".
    """
    tokens = tokenize(reply)
    if max_tokens < len(tokens):
        produced, finish_reason = tokens[:max_tokens], "length"
    else:
        produced, finish_reason = tokens, "stop"
    if not stop:
        return Generation("".join(produced), tuple(produced), finish_reason, len(produced))
    longest = max(len(s) for s in stop)
    text = ""
    for count, token in enumerate(produced, 1):
        # A stop string can only newly appear where this token's text overlaps its end.
        start = max(0, len(text) - longest + 1)
        text += token  # in place only while nothing else refers to text: keep it out of closures
        cut = -1
        for s in stop:
            at = text.find(s, start)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        if cut >= 0:
            return Generation(text[:cut], _clip(produced[:count], cut), "stop", count)
    return Generation(text, tuple(produced), finish_reason, len(produced))


def _clip(tokens: Sequence[str], length: int) -> tuple[str, ...]:
    """Return the non-empty pieces of ``tokens`` that fall within the first ``length`` characters."""
    pieces = []
    for token in tokens:
        if length <= 0:
            break
        pieces.append(token[:length])
        length -= len(token)
    return tuple(p for p in pieces if p)
