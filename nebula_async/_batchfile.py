"""The batch input: JSONL lines to requests, and the validation pass that reads the whole file first.

Two shapes of line are accepted, and may be mixed:

- Ours: ``{"id": ..., "prompt": ..., "model": ..., "max_tokens": ..., "temperature": ...,
  "top_p": ..., "stop": ...}``; ``custom_id`` may stand for ``id``. Only ``prompt`` is required;
  any other key is an error (a typo such as ``max_token`` must not be ignored).
- OpenAI's batch-file shape: ``{"custom_id": ..., "method": "POST", "url": ..., "body": {...}}``
  (recognised by its ``body``, ``url`` or ``method`` key). ``url`` is ``/v1/chat/completions``
  or ``/v1/completions``. For chat, the prompt is the text of every message's ``content``, in
  order, joined by a blank line (``"\\n\\n"``); a content given as a list of parts contributes its
  ``text`` parts, concatenated; roles are dropped. For completions, it is ``body["prompt"]``.
  ``max_completion_tokens`` means ``max_tokens``; the body's other keys (``n``, ``logprobs``...)
  are OpenAI's own and are ignored.

An id is a non-empty string or an integer, kept as given; without one, the 1-based line number.
``stop`` may be a single string. Blank lines are skipped (they still count as lines).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import attrs

from ._doneset import IdSet
from ._models import GenerateRequest, encode_request
from ._parse import loads
from ._records import BatchId, is_batch_id, is_text

__all__ = [
    "CHECK_EVERY",
    "MAX_PROBLEMS",
    "BatchInputError",
    "Defaults",
    "InputScan",
    "iter_requests",
    "parse_line",
    "scan_input",
]

MAX_PROBLEMS = 20
"""How many problems BatchInputError lists; ``count`` has them all."""

OUR_KEYS = ("id", "custom_id", "prompt", "model", "max_tokens", "temperature", "top_p", "stop")
OPENAI_KEYS = ("custom_id", "method", "url", "body")
CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


class BatchInputError(ValueError):
    """A batch's input file has problems; nothing was sent.

    ``problems`` holds ``(line_number, message)`` for the first 20 of them, in line order;
    ``count`` is how many there are in all. ``str()`` lists them, one per line.
    """

    def __init__(self, path: str, problems: list[tuple[int, str]], count: int) -> None:
        self.path = path
        self.problems = problems
        self.count = count
        lines = [f"{path}: {count} problem{'s' if count != 1 else ''}, nothing was sent:"]
        lines += [f"line {number}: {message}" for number, message in problems]
        if count > len(problems):
            lines.append(f"... and {count - len(problems)} more")
        super().__init__("\n".join(lines))


@attrs.frozen
class Defaults:
    """The values a line's missing fields take: run_batch's options."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None


class _LineError(Exception):
    pass


def parse_line(raw: bytes, number: int, defaults: Defaults) -> tuple[BatchId, GenerateRequest]:
    """Return a line's id and request; ValueError naming what is wrong (without the line number)."""
    try:
        value = loads(raw)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(value)}")
    if "body" in value or "url" in value or "method" in value:
        fields = _openai_fields(value)
    else:
        fields = _our_fields(value)
    batch_id = fields.pop("id")
    if batch_id is None:
        batch_id = number
    elif isinstance(batch_id, str) and not is_text(batch_id):
        raise ValueError("the id is not valid text: it holds a lone surrogate")
    elif not is_batch_id(batch_id):
        raise ValueError(f"the id must be a non-empty string or an integer, got {_json_type(batch_id)}")
    if fields.get("prompt") is None:
        raise ValueError('no "prompt": each line needs the text to generate from')
    if fields.get("model") is None and defaults.model is None:
        raise ValueError('no "model": give one on the line, or a default model (model=...)')
    stop = fields.get("stop")
    if isinstance(stop, str):
        fields["stop"] = [stop]
    for name in ("model", "max_tokens", "temperature", "top_p", "stop"):
        if fields.get(name) is None:
            fields[name] = getattr(defaults, name)
    try:
        request = GenerateRequest(**fields)
        if b"\\ud" in raw or b"\\uD" in raw:  # an escaped surrogate: a lone one could never be sent
            encode_request(request, None, stream=False)  # ValueError naming the field
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return batch_id, request


def _our_fields(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        if key not in OUR_KEYS:
            raise ValueError(_unknown_key(key, OUR_KEYS))
    if "id" in value and "custom_id" in value:
        raise ValueError('both "id" and "custom_id": give one of them')
    fields = {name: value.get(name) for name in OUR_KEYS[2:]}
    fields["id"] = value.get("id", value.get("custom_id"))
    return fields


def _openai_fields(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        if key not in OPENAI_KEYS:
            raise ValueError(_unknown_key(key, OPENAI_KEYS) + " in a line of OpenAI's batch shape")
    method = value.get("method", "POST")
    if method != "POST":
        raise ValueError(f'"method" must be "POST", got {method!r}')
    url = value.get("url")
    body = value.get("body")
    if not isinstance(body, dict):
        raise ValueError(f'"body" must be a JSON object, got {_json_type(body)}')
    if url == CHAT_URL:
        prompt: object = _chat_prompt(body.get("messages"))
    elif url == COMPLETIONS_URL:
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(
                f'"body.prompt" must be one string (one prompt per line), got {_json_type(prompt)}'
            )
    else:
        raise ValueError(f'"url" must be "{CHAT_URL}" or "{COMPLETIONS_URL}", got {url!r}')
    tokens = body.get("max_completion_tokens")
    return {
        "id": value.get("custom_id"),
        "prompt": prompt,
        "model": body.get("model"),
        "max_tokens": tokens if tokens is not None else body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stop": body.get("stop"),
    }


def _chat_prompt(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'"body.messages" must be a non-empty list, got {_json_type(messages)}')
    texts = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                    raise ValueError(
                        f"body.messages[{i}] has a part that is not text ({kind!r}): only text is sent"
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ValueError(f'body.messages[{i}] needs a "content" string or list of text parts')
        texts.append(content)
    return "\n\n".join(texts)


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    import difflib  # only for a line with a mistake: not at import

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected {', '.join(known)}"
    return f"unknown key {key!r} ({hint})"


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", float: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int) else type(value).__name__)


def iter_requests(
    path: str | os.PathLike[str], defaults: Defaults
) -> Generator[tuple[BatchId, GenerateRequest], None, None]:
    """Yield each line's id and request; for a file that scan_input found valid (ValueError otherwise)."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            if raw.strip():
                yield parse_line(raw, number, defaults)


@attrs.frozen
class InputScan:
    """What the validation pass learnt: how many ids, their digests, and whether two collided."""

    total: int
    ids: IdSet
    collided: bool


CHECK_EVERY = 4096
"""The scans call their ``check`` every so many lines: a stop asked for mid-scan ends it soon."""


def scan_input(
    path: str | os.PathLike[str],
    defaults: Defaults,
    digest: Callable[[BatchId], int],
    check: Callable[[], None] | None = None,
) -> InputScan:
    """Read the whole input once; BatchInputError listing every problem, or the ids' digests.

    Repeated digests are checked exactly by reading their lines again: the same id twice is a
    problem (naming both lines); two different ids sharing a digest set ``collided``. ``check``
    is called every CHECK_EVERY lines (it may raise to end the scan).
    """
    problems: list[tuple[int, str]] = []
    count = 0
    ids = IdSet()
    total = 0
    for number, batch_id in _line_ids(path, defaults, check):
        if isinstance(batch_id, ValueError):
            count += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append((number, str(batch_id)))
            continue
        total += 1
        ids.add(digest(batch_id))
    repeated = ids.freeze()
    collided = False
    if repeated:
        duplicates, collided = _find_duplicates(path, defaults, digest, repeated, check)
        count += len(duplicates)
        problems = sorted(problems + duplicates[:MAX_PROBLEMS])[:MAX_PROBLEMS]
    if count:
        raise BatchInputError(os.fspath(path), problems, count)
    return InputScan(total, ids, collided)


def _line_ids(
    path: str | os.PathLike[str], defaults: Defaults, check: Callable[[], None] | None
) -> Iterator[tuple[int, BatchId | ValueError]]:
    """Yield each non-blank line's number and id, or the ValueError that says what is wrong with it."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            if check is not None and number % CHECK_EVERY == 0:
                check()
            if not raw.strip():
                continue
            try:
                batch_id, _ = parse_line(raw, number, defaults)
            except ValueError as exc:
                yield number, exc
            else:
                yield number, batch_id


def _find_duplicates(
    path: str | os.PathLike[str],
    defaults: Defaults,
    digest: Callable[[BatchId], int],
    repeated: set[int],
    check: Callable[[], None] | None,
) -> tuple[list[tuple[int, str]], bool]:
    first_line: dict[tuple[type, BatchId], int] = {}
    seen_digests: dict[int, set[tuple[type, BatchId]]] = {}
    duplicates = []
    for number, batch_id in _line_ids(path, defaults, check):
        if isinstance(batch_id, ValueError):
            continue
        key = digest(batch_id)
        if key not in repeated:
            continue
        exact = (type(batch_id), batch_id)
        seen_digests.setdefault(key, set()).add(exact)
        if exact in first_line:
            duplicates.append((number, f"duplicate id {batch_id!r}, first on line {first_line[exact]}"))
        else:
            first_line[exact] = number
    return duplicates, any(len(exact_ids) > 1 for exact_ids in seen_digests.values())
