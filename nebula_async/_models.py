"""Request and response models (frozen attrs classes) and the one cattrs converter that maps them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

__all__ = [
    "GenerateRequest",
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
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_tokens must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_tokens must be >= 1, got {value}")


def _in_range(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], object], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{attribute.name} must be a number, got {type(value).__name__}")
        if math.isnan(value) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be between {low:g} and {high:g}, got {value!r}")

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
    temperature: float | None = attrs.field(default=None, validator=_in_range(0.0, 2.0))
    top_p: float | None = attrs.field(default=None, validator=_in_range(0.0, 1.0))
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


_converter = cattrs.Converter()  # ours alone: never cattrs.global_converter, which users may tune


def _strict_str(value: object, _: type) -> str:
    # The default hook calls str(value): a null would become "None" and 12 would become "12".
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: type) -> int:
    # The default calls int(value): 12.7 would silently become 12.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook(int, _strict_int)
_converter.register_unstructure_hook(
    GenerateRequest,
    make_dict_unstructure_fn(GenerateRequest, _converter, _cattrs_omit_if_default=True),
)
# Built once here rather than looked up per call: these run for every response and every event.
_converter.register_structure_hook(_SuccessData, make_dict_structure_fn(_SuccessData, _converter))
_converter.register_structure_hook(TextChunk, make_dict_structure_fn(TextChunk, _converter))
_structure_success = _converter.get_structure_hook(_SuccessData)
_structure_chunk = _converter.get_structure_hook(TextChunk)
_unstructure_request: Callable[[GenerateRequest], dict[str, Any]] = _converter.get_unstructure_hook(
    GenerateRequest
)


def structure_success(data: Mapping[str, Any]) -> tuple[str, Usage]:
    """Read ``text`` and ``usage`` from a success envelope's ``data``; raises cattrs errors."""
    parsed: _SuccessData = _structure_success(data, _SuccessData)
    return parsed.text, parsed.usage


def structure_chunk(data: Mapping[str, Any]) -> TextChunk:
    """Read one stream event's payload; raises cattrs errors."""
    chunk: TextChunk = _structure_chunk(data, TextChunk)
    return chunk


# Typed parameters: passing one through extra_body would bypass its validation.
_RESERVED_BODY_KEYS = frozenset(field.name for field in attrs.fields(GenerateRequest)) | {"stream"}


def encode_request(request: GenerateRequest, extra_body: Mapping[str, Any] | None, *, stream: bool) -> bytes:
    """Return the JSON body for ``request``; raise ValueError or TypeError for what can't be sent."""
    payload = _unstructure_request(request)
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


def _unencodable_field(payload: Mapping[str, Any]) -> str:
    for name, value in payload.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return name if name in _RESERVED_BODY_KEYS else f"extra_body[{name!r}]"
    return "the request"  # unreachable in practice: encode() failed, so some field is at fault
