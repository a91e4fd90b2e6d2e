"""Request and response models (frozen attrs classes), request encoding, and the cattrs converter.

The converter (and cattrs itself) is built on first use: well-formed answers never need it (``_parse``
checks them by hand), and cattrs costs more import time than the rest of the package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._checks import check_int, check_number

__all__ = [
    "GenerateRequest",
    "MalformedPayloadError",
    "TextChunk",
    "TextGeneration",
    "Usage",
    "encode_request",
    "structure_chunk",
    "structure_success",
]


# Validators are our own: attrs' instance_of puts a tuple in str(exc), and every message here
# names the argument, what was wrong and what to pass instead.
def _non_empty_str(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")


def _max_tokens(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_int("max_tokens", value, 1)


def _at_most(high: float) -> Callable[[Any, attrs.Attribute[Any], object], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_number(attribute.name, value, high=high)

    return check


def _stop_tuple(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"stop must be a list of strings, got a single {type(value).__name__}: use stop=[{value!r}]"
        )
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"stop must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"stop[{i}] must be a str, got {type(item).__name__}")
        if not item:
            raise ValueError(f"stop[{i}] must be a non-empty string")
    return tuple(value)


@attrs.frozen
class GenerateRequest:
    """One text-generation request; invalid values raise ValueError or TypeError here, before sending.

    Fields left as None are not sent, so the API applies its own defaults (max_tokens 256,
    temperature 0.7, top_p 1).
    """

    model: str = attrs.field(validator=_non_empty_str)
    prompt: str = attrs.field(validator=_non_empty_str)
    max_tokens: int | None = attrs.field(default=None, validator=_max_tokens)
    temperature: float | None = attrs.field(default=None, validator=_at_most(2.0))
    top_p: float | None = attrs.field(default=None, validator=_at_most(1.0))
    stop: tuple[str, ...] | None = attrs.field(default=None, converter=_stop_tuple)


@attrs.frozen
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@attrs.frozen
class TextGeneration:
    """A completed generation.

    ``request_id`` is the response's ``x-request-id`` header (None when absent); ``retries`` is
    how many failed attempts came before the one that succeeded.
    """

    text: str
    usage: Usage
    request_id: str | None = None
    retries: int = 0


@attrs.frozen
class TextChunk:
    """One streamed piece of text.

    ``finish_reason`` is set on the last one (``"stop"``, ``"length"``...); ``usage`` on the one
    that carried token counts, if the server sends them (in practice the last one).
    """

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


@attrs.frozen
class _SuccessData:
    text: str
    usage: Usage


class MalformedPayloadError(ValueError):
    """An answer's JSON does not fit the model; the message names each field at fault, one per "; "."""


def _strict_str(value: object, _: type) -> str:
    # cattrs' default hook calls str(value): a null would become "None" and 12 would become "12".
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: type) -> int:
    # The default calls int(value): 12.7 would silently become 12.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


@functools.cache  # once per process: a race at most builds it twice, and both are equal
def _hooks() -> tuple[Callable[[Any, type], _SuccessData], Callable[[Any, type], TextChunk]]:
    import cattrs
    from cattrs.gen import make_dict_structure_fn

    converter = cattrs.Converter()  # ours alone: never cattrs.global_converter, which users may tune
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    return (
        make_dict_structure_fn(_SuccessData, converter),
        make_dict_structure_fn(TextChunk, converter),
    )


def _structure(hook: Callable[[Any, type], Any], data: Mapping[str, Any], cls: type, path: str) -> Any:
    import cattrs

    try:
        return hook(data, cls)
    except cattrs.ClassValidationError as exc:
        raise MalformedPayloadError("; ".join(cattrs.transform_error(exc, path=path))) from None


def structure_success(data: Mapping[str, Any]) -> tuple[str, Usage]:
    """Read ``text`` and ``usage`` from a success envelope's ``data``; raise MalformedPayloadError."""
    parsed: _SuccessData = _structure(_hooks()[0], data, _SuccessData, "data")
    return parsed.text, parsed.usage


def structure_chunk(data: Mapping[str, Any]) -> TextChunk:
    """Read one stream event's payload; raise MalformedPayloadError."""
    chunk: TextChunk = _structure(_hooks()[1], data, TextChunk, "event")
    return chunk


# Typed parameters: passing one through extra_body would bypass its validation.
_RESERVED_BODY_KEYS = frozenset(field.name for field in attrs.fields(GenerateRequest)) | {"stream"}


def encode_request(request: GenerateRequest, extra_body: Mapping[str, Any] | None, *, stream: bool) -> bytes:
    """Return the JSON body for ``request``; raise ValueError or TypeError for what can't be sent."""
    payload = _request_fields(request)
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise TypeError(f"extra_body must be a dict of JSON values, got {type(extra_body).__name__}")
    if extra_body:
        clash = _RESERVED_BODY_KEYS.intersection(extra_body)
        if clash:
            name = sorted(clash)[0]
            hint = "use stream_text()" if name == "stream" else f"pass {name}= as an argument"
            raise ValueError(f"extra_body must not set {name!r}: {hint}")
        payload.update(extra_body)
    if stream:
        payload["stream"] = True
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"extra_body must hold only JSON values: {exc}") from None
    except ValueError as exc:  # NaN or infinity, or a circular reference
        raise ValueError(f"extra_body must hold only JSON values: {exc}") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(
            f"{_unencodable_field(payload)} is not valid text: it holds a lone surrogate"
        ) from None


def _request_fields(request: GenerateRequest) -> dict[str, Any]:
    # By hand, in field order, only what the caller passed (None is the API's default): this is what
    # cattrs' omit-if-default unstructuring gave, without importing cattrs for every request.
    payload: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.stop is not None:
        payload["stop"] = list(request.stop)
    return payload


def _unencodable_field(payload: Mapping[str, Any]) -> str:
    for name, value in payload.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return name if name in _RESERVED_BODY_KEYS else f"extra_body[{name!r}]"
    return "the request"  # unreachable in practice: encode() failed, so some field is at fault
