"""The fake server's plain state: models, recorded requests, scripted faults and per-key limits.

No aiohttp here (only multidict, for headers). One lock guards it all: a test thread scripts
faults while the server's own thread (``run_in_thread``) answers requests.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from .._checks import check_int

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_MODELS",
    "FakeModel",
    "Fault",
    "Limits",
    "RecordedHeaders",
    "RecordedRequest",
    "Script",
    "merge_models",
    "seconds_header",
]

DEFAULT_CONTEXT_LENGTH = 8192


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_int(attribute.name, value, 1)


def _name(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"a model name must be a non-empty str, got {value!r}")


@attrs.frozen
class FakeModel:
    """A model the fake server knows; prompts longer than ``context_length`` tokens are rejected."""

    name: str = attrs.field(validator=_name)
    context_length: int = attrs.field(default=DEFAULT_CONTEXT_LENGTH, validator=_positive_int)


# The API reference's table, with each model family's published context window; then the model
# ids its examples use ("gpt-4", ...), so that every example in the reference and README runs as
# written (the reference gives no context lengths for those: each model's published one).
DEFAULT_MODELS = (
    FakeModel("DeepSeek-V3-0324", 131072),
    FakeModel("DeepSeek-R1-Distill-Llama-70B", 131072),
    FakeModel("DeepSeek-R1-Distill-Qwen-32B", 131072),
    FakeModel("Llama3.3-70B", 131072),
    FakeModel("Qwen-QwQ-32B", 32768),
    FakeModel("Qwen2.5-Coder-32B", 32768),
    FakeModel("gpt-4", 8192),
    FakeModel("claude-2", 100000),
    FakeModel("llama-2-70b", 4096),
)


def merge_models(models: Iterable[str | FakeModel], *, default_models: bool) -> dict[str, FakeModel]:
    """Return the server's model table: the defaults (if kept), then ``models`` added or replacing by name."""
    if isinstance(models, (str, FakeModel)):
        raise TypeError("models must be a list of names or FakeModel objects, e.g. models=['gpt-4']")
    if isinstance(models, Mapping):  # its values would be silently ignored
        raise TypeError("models must be a list, e.g. models=['gpt-4', FakeModel('tiny', context_length=16)]")
    table = {m.name: m for m in DEFAULT_MODELS} if default_models else {}
    for model in models:
        spec = FakeModel(model) if isinstance(model, str) else model
        if not isinstance(spec, FakeModel):
            raise TypeError(f"models: expected a name or a FakeModel, got {type(model).__name__}")
        table[spec.name] = spec
    if not table:
        raise ValueError("the fake server needs at least one model: pass models=[...] or keep the defaults")
    return table


class RecordedHeaders(Mapping[str, str]):
    """A request's headers: case-insensitive lookup, and a repr that hides the Authorization value."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        if isinstance(headers, CIMultiDictProxy):  # aiohttp's request headers: already read-only
            self._headers: CIMultiDictProxy[str] = headers
        elif isinstance(headers, RecordedHeaders):  # its items() has each name once; getall() has all
            self._headers = CIMultiDictProxy(CIMultiDict((n, v) for n in headers for v in headers.getall(n)))
        else:  # items() of a multidict keeps repeated headers
            self._headers = CIMultiDictProxy(CIMultiDict(headers.items()))
        self._unique: list[str] | None = None

    @property
    def _names(self) -> list[str]:
        # A Mapping has each key once, whatever repeats on the wire; worked out when first asked.
        if self._unique is None:
            names: dict[str, str] = {}
            for name in self._headers:
                names.setdefault(name.lower(), name)
            self._unique = list(names.values())
        return self._unique

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def getall(self, name: str) -> list[str]:
        """Return every value sent for ``name`` (a header may repeat)."""
        return self._headers.getall(name, [])

    def __repr__(self) -> str:
        shown = {k: "<redacted>" if k.lower() == "authorization" else v for k, v in self._headers.items()}
        return f"RecordedHeaders({shown!r})"


def _recorded_headers(headers: Mapping[str, str]) -> RecordedHeaders:
    # Read-only, so attrs.evolve shares the record's headers rather than copying them.
    return headers if isinstance(headers, RecordedHeaders) else RecordedHeaders(headers)


@attrs.define
class RecordedRequest:
    """One request the fake server received, for assertions.

    ``json`` is the decoded body (None when it was not JSON); ``time`` is ``time.time()`` on
    arrival; ``status`` is the HTTP status answered (None while in progress, or when a fault dropped
    the connection). ``api_key`` is the Bearer key sent; it, like the Authorization header, is
    never shown in a repr.
    """

    method: str
    path: str
    headers: RecordedHeaders = attrs.field(converter=_recorded_headers)
    body: bytes = attrs.field(repr=False)
    json: Any
    time: float
    request_id: str
    api_key: str | None = attrs.field(default=None, repr=False, eq=False)  # eq: pytest's diffs show fields
    status: int | None = None


@attrs.frozen
class Fault:
    """One scripted misbehaviour; ``kind`` picks which, the rest are its settings."""

    kind: str  # "fail", "html", "delay", "disconnect", "drop_stream", "error_event"
    status: int = 500
    code: str | None = None
    message: str = ""
    details: Mapping[str, Any] | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    events: int = 0


class Script:
    """Faults queued for the next requests, in order; stream faults wait for the next valid stream."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._request_faults: collections.deque[Fault] = collections.deque()
        self._stream_faults: collections.deque[Fault] = collections.deque()

    def add(self, fault: Fault, count: int) -> None:
        queue = self._stream_faults if fault.kind in ("drop_stream", "error_event") else self._request_faults
        with self._lock:
            queue.extend([fault] * count)

    def next_request_fault(self) -> Fault | None:
        with self._lock:
            return self._request_faults.popleft() if self._request_faults else None

    def next_stream_fault(self) -> Fault | None:
        with self._lock:
            return self._stream_faults.popleft() if self._stream_faults else None

    def pending(self) -> int:
        with self._lock:
            return len(self._request_faults) + len(self._stream_faults)

    def clear(self) -> None:
        with self._lock:
            self._request_faults.clear()
            self._stream_faults.clear()


class Limits:
    """Per-key sliding-window rate limits (requests and tokens) and token quotas.

    A request is refused while its key's window is full: ``N`` requests, or at least ``N`` tokens
    (prompt plus completion, counted when answered), in the last second or minute. The wait it is
    told is until enough of the window has slid out for it to be admitted.
    """

    def __init__(
        self,
        lock: threading.Lock,
        *,
        requests_per_second: int | None,
        requests_per_minute: int | None,
        token_quota: int | None,
        tokens_per_minute: int | None = None,
        tokens_per_second: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = lock
        self._clock = clock
        self._windows = [(n, w) for n, w in ((requests_per_second, 1.0), (requests_per_minute, 60.0)) if n]
        self._token_windows = [(n, w) for n, w in ((tokens_per_second, 1.0), (tokens_per_minute, 60.0)) if n]
        self._admitted: dict[str, list[collections.deque[float]]] = {}
        # Per key and token window: (time, tokens) answered, and their sum.
        self._charged: dict[str, list[_TokenWindow]] = {}
        self.token_quota = token_quota
        self._used: dict[str, int] = {}

    def admit(self, key: str) -> float | None:
        """Count one request for ``key``; return None if allowed, else the seconds until it would be."""
        if not self._windows and not self._token_windows:
            return None
        with self._lock:
            now = self._clock()
            windows = self._admitted.setdefault(key, [collections.deque() for _ in self._windows])
            wait = 0.0
            for (limit, seconds), times in zip(self._windows, windows, strict=True):
                while times and now - times[0] >= seconds:
                    times.popleft()
                if len(times) >= limit:  # the oldest admitted request leaves the window first
                    wait = max(wait, times[0] + seconds - now)
            for (limit, seconds), charged in zip(self._token_windows, self._token_state(key), strict=True):
                wait = max(wait, charged.wait(limit, seconds, now))
            if wait > 0:
                return wait
            for times in windows:
                times.append(now)
            return None

    def describe(self) -> str:
        """Say what the rate limits are, e.g. ``"requests: 2 per second and 60 per minute, per API key"``."""
        parts = []
        for noun, windows in (("requests", self._windows), ("tokens", self._token_windows)):
            if windows:
                each = [f"{n} per {'second' if w == 1.0 else 'minute'}" for n, w in windows]
                parts.append(f"{noun}: " + " and ".join(each))
        return "; ".join(parts) + ", per API key"

    def quota_left(self, key: str) -> bool:
        """Whether ``key`` has tokens left under the quota."""
        with self._lock:
            return self.token_quota is None or self._used.get(key, 0) < self.token_quota

    def charge(self, key: str, tokens: int) -> None:
        """Count ``tokens`` (prompt plus completion) of an answer to ``key``: its quota and token windows."""
        with self._lock:
            self._used[key] = self._used.get(key, 0) + tokens
            if self._token_windows:
                now = self._clock()
                for charged in self._token_state(key):
                    charged.add(now, tokens)

    def used(self, key: str) -> int:
        with self._lock:
            return self._used.get(key, 0)

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()
            self._charged.clear()
            self._used.clear()

    def _token_state(self, key: str) -> list[_TokenWindow]:
        return self._charged.setdefault(key, [_TokenWindow() for _ in self._token_windows])


class _TokenWindow:
    """The tokens answered to one key in one sliding window: (time, tokens) entries and their sum."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def add(self, now: float, tokens: int) -> None:
        self.entries.append((now, tokens))
        self.total += tokens

    def wait(self, limit: int, seconds: float, now: float) -> float:
        """Return 0.0 if fewer than ``limit`` tokens are in the window, else the seconds until they are."""
        entries = self.entries
        while entries and now - entries[0][0] >= seconds:
            self.total -= entries.popleft()[1]
        if self.total < limit:
            return 0.0
        left = self.total
        index = 0
        while left >= limit:  # the oldest leave first: wait until enough of them have
            left -= entries[index][1]
            index += 1
        return entries[index - 1][0] + seconds - now


def seconds_header(seconds: float) -> dict[str, str]:
    """Return Retry-After (whole seconds, rounded up, as HTTP requires) and retry-after-ms (exact)."""
    milliseconds = math.ceil(round(seconds * 1000, 6))  # round first: 4.03 * 1000 is 4030.0000000000005
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(milliseconds)}
