"""The fake server's tokenizer, default reply and token-by-token generation (pure functions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_async.testing._generate import (
    Generation,
    _cached_reply,
    _make_reply,
    count_tokens,
    default_reply,
    generate,
    tokenize,
)

# Text that exercises every tokenizer branch: words, punctuation, runs of assorted whitespace
# (including Unicode spaces), multi-byte letters, emoji and combining marks.
_WORDS_AND_MARKS = ["Hello", "World", "a", "_x1", "42", "héllo", "中文", ",", "!", ".", "😀", "e\u0301", "'"]
_SPACES = [" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u2028", "\u3000"]
_pieces = st.sampled_from([*_WORDS_AND_MARKS, *_SPACES])
_texts = st.one_of(
    st.text(max_size=40),
    st.lists(_pieces, max_size=15).map("".join),
    st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003", max_size=8),
)
# Replies made of few distinct pieces, so drawn stop strings often occur (and span tokens).
_replies = st.lists(
    st.sampled_from(["ab", "c", " ab", " d", ",", ".", " ", "\n", "é", "ab."]), max_size=12
).map("".join)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, int, list[str]]:
    """Draw a reply, a max_tokens and stop strings, mostly cut from the reply so they do occur."""
    reply = draw(_replies)
    stop = []
    for _ in range(draw(st.integers(0, 3))):
        if reply and draw(st.booleans()):
            start = draw(st.integers(0, len(reply) - 1))
            stop.append(reply[start : draw(st.integers(start + 1, min(len(reply), start + 5)))])
        else:
            stop.append(draw(st.text(alphabet="abcd ,.\né", min_size=1, max_size=4)))
    return reply, draw(st.integers(0, 15)), stop


def _oracle(reply: str, max_tokens: int, stop: Sequence[str]) -> tuple[str, str, int]:
    """Generate by brute force: after each token, look for any stop string in the whole text so far."""
    tokens = tokenize(reply)
    produced = tokens[:max_tokens]
    for count in range(1, len(produced) + 1):
        text = "".join(produced[:count])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[: min(hits)], "stop", count
    return "".join(produced), "length" if len(tokens) > max_tokens else "stop", len(produced)


# --- tokenize --------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(_texts)
def test_tokens_join_back_to_the_text(text: str) -> None:
    """Joining a text's tokens gives the text back, for any text, Unicode and whitespace included."""
    assert "".join(tokenize(text)) == text


@settings(max_examples=100, deadline=None)
@given(_texts)
def test_only_the_last_token_can_be_bare_whitespace(text: str) -> None:
    """No token is empty, and every token but the last carries a non-space character."""
    tokens = tokenize(text)
    assert all(tokens)
    assert all(not t.isspace() for t in tokens[:-1])


@settings(max_examples=100, deadline=None)
@given(_texts)
def test_count_tokens_is_the_number_of_tokens(text: str) -> None:
    """count_tokens agrees with len(tokenize(text)), which is what usage reports."""
    assert count_tokens(text) == len(tokenize(text))


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, World!", ["Hello", ",", " World", "!"]),
        ("", []),
        ("   ", ["   "]),
        ("a ", ["a", " "]),
        ("a \n", ["a", " \n"]),
        ("a\t\n b  ", ["a", "\t\n b", "  "]),
        ("x,y", ["x", ",", "y"]),
        ("_a1 __", ["_a1", " __"]),
        (" héllo 中文😀😀", [" héllo", " 中文", "😀", "😀"]),
        ("...", [".", ".", "."]),
    ],
)
def test_documented_tokenization(text: str, tokens: list[str]) -> None:
    """Words keep their leading whitespace, other characters stand alone, trailing whitespace is one token."""
    assert tokenize(text) == tokens
    assert count_tokens(text) == len(tokens)


# --- default_reply ---------------------------------------------------------------------------------

_SENTENCE = r"[A-Z][a-z]*(?: [a-z]+){4,11}\."
_REPLY_SHAPE = re.compile(rf"{_SENTENCE}(?: {_SENTENCE}){{1,3}}")


def test_default_reply_is_pinned() -> None:
    """A known request gives a known text, so replies users snapshot never change silently."""
    expected = (
        "Old now was returns line there should every first reply. Code last line then returns simple value."
    )
    assert default_reply("gpt-4", "Hi", 0.7, 1.0) == expected


def test_default_reply_is_the_same_in_another_process() -> None:
    """A child process with a different PYTHONHASHSEED writes the same reply as this one."""
    code = (
        "from nebula_async.testing._generate import default_reply;"
        "print(default_reply('Llama3.3-70B', 'Say hi, twice!', 0.3, 0.9), end='')"
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        child = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=20
        )
        assert child.stdout == default_reply("Llama3.3-70B", "Say hi, twice!", 0.3, 0.9)


def test_default_reply_caches_only_short_prompts() -> None:
    """A prompt over 4096 characters is not cached, a short one is; either way the text is the same."""
    # Regression: every prompt was cached, so a load test of long prompts pinned their memory.
    cache = _cached_reply
    cache.cache_clear()  # a full cache would not grow: start from empty
    long_prompt = "word " * 1000 + "unique long prompt"
    assert len(long_prompt) > 4096
    first = default_reply("Llama3.3-70B", long_prompt, 0.7, 1.0)
    assert default_reply("Llama3.3-70B", long_prompt, 0.7, 1.0) == first
    assert cache.cache_info().currsize == 0
    assert cache("Llama3.3-70B", long_prompt, 0.7, 1.0) == first  # the cached path would have said the same
    cache.cache_clear()
    short = default_reply("Llama3.3-70B", "a short prompt", 0.7, 1.0)
    assert cache.cache_info().currsize == 1
    assert default_reply("Llama3.3-70B", "a short prompt", 0.7, 1.0) == short
    assert cache.cache_info().hits == 1
    assert _make_reply("Llama3.3-70B", "a short prompt", 0.7, 1.0) == short


def test_default_reply_repeats_without_the_cache() -> None:
    """The same arguments give the same text even when the cache is cold."""
    first = default_reply("m", "prompt", 0.7, 1.0)
    _cached_reply.cache_clear()
    assert default_reply("m", "prompt", 0.7, 1.0) == first


@pytest.mark.parametrize(
    "other",
    [
        ("m2", "prompt", 0.7, 1.0),
        ("m", "prompt!", 0.7, 1.0),
        ("m", "prompt", 0.71, 1.0),
        ("m", "prompt", 0.7, 0.99),
        ("m", "prompt\x00", 0.7, 1.0),
    ],
)
def test_default_reply_depends_on_every_argument(other: tuple[str, str, float, float]) -> None:
    """Changing the model, the prompt, the temperature or top_p changes the text."""
    assert default_reply(*other) != default_reply("m", "prompt", 0.7, 1.0)


def test_default_reply_arguments_do_not_run_together() -> None:
    """Moving text between model and prompt changes the seed (the fields are separated)."""
    assert default_reply("ab", "c", 0.7, 1.0) != default_reply("a", "bc", 0.7, 1.0)


def test_integer_and_float_temperatures_give_the_same_text() -> None:
    """temperature=1 and temperature=1.0 (one JSON number) give the same text, cache or no cache."""
    _cached_reply.cache_clear()
    as_int = default_reply("m", "p", 1, 1)
    _cached_reply.cache_clear()
    assert default_reply("m", "p", 1.0, 1.0) == as_int


def test_negative_zero_temperature_gives_the_same_text_as_zero() -> None:
    """temperature -0.0 (valid JSON, accepted by validation) gives the text of 0.0 whatever came first."""
    _cached_reply.cache_clear()
    negative = default_reply("m", "p", -0.0, 1.0)
    _cached_reply.cache_clear()
    assert default_reply("m", "p", 0.0, 1.0) == negative


def test_default_reply_takes_a_prompt_with_a_lone_surrogate() -> None:
    """A prompt holding a lone surrogate, which json.loads produces from "\\ud800", still gets a reply."""
    assert _REPLY_SHAPE.fullmatch(default_reply("m", "\ud800", 0.7, 1.0))


@settings(max_examples=50, deadline=None)
@given(
    st.text(min_size=1, max_size=10),
    st.text(max_size=20),
    st.floats(0, 2),
    st.floats(0, 1),
)
def test_default_reply_is_two_to_four_sentences(
    model: str, prompt: str, temperature: float, top_p: float
) -> None:
    """Every reply is two to four capitalised sentences of five to twelve words, each ending with '.'."""
    assert _REPLY_SHAPE.fullmatch(default_reply(model, prompt, temperature, top_p))


# --- generate --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_generate_matches_a_brute_force_model(case: tuple[str, int, list[str]]) -> None:
    """Text, finish reason and token count equal those of re-scanning the whole text after every token."""
    reply, max_tokens, stop = case
    result = generate(reply, max_tokens=max_tokens, stop=stop)
    assert (result.text, result.finish_reason, result.completion_tokens) == _oracle(reply, max_tokens, stop)


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_generation_invariants(case: tuple[str, int, list[str]]) -> None:
    """Chunks are the produced tokens (the last maybe clipped) joining to a stop-free prefix of the reply."""
    reply, max_tokens, stop = case
    result = generate(reply, max_tokens=max_tokens, stop=stop)
    tokens = tokenize(reply)
    assert "".join(result.chunks) == result.text
    assert all(result.chunks)
    assert reply.startswith(result.text)
    assert not any(s in result.text for s in stop)
    assert result.completion_tokens <= max_tokens
    if result.chunks:
        *whole, last = result.chunks
        assert whole == tokens[: len(whole)]
        assert tokens[len(whole)].startswith(last)
    if result.finish_reason == "length":
        assert len(tokens) > max_tokens
        assert result.completion_tokens == max_tokens
        assert result.text == "".join(tokens[:max_tokens])
    else:
        assert result.finish_reason == "stop"


def test_without_stop_the_whole_reply_is_sent_token_by_token() -> None:
    """With room and no stop strings the text is the reply, one chunk per token, finishing "stop"."""
    assert generate("Hello, World!", max_tokens=100) == Generation(
        "Hello, World!", ("Hello", ",", " World", "!"), "stop", 4
    )


def test_max_tokens_cuts_the_reply() -> None:
    """A reply longer than max_tokens ends after max_tokens tokens with "length"."""
    assert generate("Hello, World!", max_tokens=3) == Generation(
        "Hello, World", ("Hello", ",", " World"), "length", 3
    )


def test_reply_ending_exactly_at_max_tokens_finishes_stop() -> None:
    """A reply of exactly max_tokens tokens ends with "stop": nothing was cut."""
    assert generate("Hello, World!", max_tokens=4).finish_reason == "stop"


def test_stop_string_spanning_two_tokens_is_found() -> None:
    """A stop string made of the end of one token and the start of the next ends the text before it."""
    result = generate("Hello, World!", max_tokens=100, stop=[", W"])
    assert result == Generation("Hello", ("Hello",), "stop", 3)


def test_stop_string_inside_a_token_clips_the_chunk() -> None:
    """A stop string in the middle of a token keeps the token's part before it as the last chunk."""
    result = generate("Hello, World!", max_tokens=100, stop=["rld"])
    assert result == Generation("Hello, Wo", ("Hello", ",", " Wo"), "stop", 3)


def test_earliest_of_several_stops_wins() -> None:
    """When several stop strings complete in one token, the text ends before the one that starts first."""
    result = generate("Hello, World!", max_tokens=100, stop=["World", "o, W", "!"])
    assert result.text == "Hell"
    assert result.completion_tokens == 3


def test_stop_at_the_start_gives_no_text() -> None:
    """A stop string at the very start gives text "" and no chunks."""
    assert generate("Hello, World!", max_tokens=100, stop=["He"]) == Generation("", (), "stop", 1)


def test_stop_beyond_max_tokens_does_not_count() -> None:
    """A stop string that only appears after max_tokens leaves the finish reason "length"."""
    result = generate("Hello, World!", max_tokens=2, stop=["World"])
    assert (result.text, result.finish_reason) == ("Hello,", "length")


def test_empty_reply() -> None:
    """An empty reply gives empty text, no chunks, no tokens, finishing "stop"."""
    assert generate("", max_tokens=5, stop=["x"]) == Generation("", (), "stop", 0)
