"""Random faults for soak runs: ``FaultMix`` says how often and which; ``RandomFaults`` draws them.

No aiohttp here. The draws come from one ``random.Random(seed)`` under a lock, in the order the
requests arrive: the same seed and the same arrival order give the same faults.
"""

from __future__ import annotations

import collections
import math
import random
import threading
from collections.abc import Mapping
from typing import Any

import attrs

from .._checks import check_number
from ._state import Fault
from ._wire import default_message

__all__ = ["FAULT_KINDS", "STREAM_ONLY", "FaultMix", "RandomFaults"]

# Every kind a FaultMix can inject, with its default weight (all equal).
FAULT_KINDS = (
    "rate_limit",  # 429 rate_limit_exceeded with Retry-After / retry-after-ms
    "server_error",  # 500, 502 or 503 with the JSON error envelope
    "html",  # an HTML error page (502 or 503), as a proxy in front of the API sends
    "disconnect",  # the connection closed before any reply
    "slow",  # the reply held for ``slow_seconds``, then sent normally
    "drop_stream",  # a stream cut mid-way (streams only)
    "error_event",  # a server_error event mid-stream (streams only)
)
STREAM_ONLY = frozenset({"drop_stream", "error_event"})


def _rate(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(attribute.name, value, high=1)


def _seconds(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(attribute.name, value, unit=" of seconds")


def _weights(value: Mapping[str, float] | None) -> Mapping[str, float]:
    if value is None:
        return dict.fromkeys(FAULT_KINDS, 1.0)
    unknown = sorted(set(value) - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; the kinds are {', '.join(FAULT_KINDS)}")
    for kind, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"the weight of {kind!r} must be a number >= 0, got {weight!r}")
    if not any(value.values()):
        raise ValueError("at least one fault kind needs a weight above 0")
    return dict(value)


@attrs.frozen
class FaultMix:
    """How a FakeNebulaServer misbehaves at random: ``FakeNebulaServer(faults=FaultMix(rate=0.1, seed=1))``.

    Each generation request is faulted with probability ``rate``; the kind is drawn by
    ``weights`` (kind -> relative weight; default: every kind of ``FAULT_KINDS`` equally) among
    the kinds that fit the request: ``drop_stream`` and ``error_event`` only for streams. The
    kinds: ``rate_limit`` (429 with a Retry-After of ``retry_after`` seconds, drawn uniformly),
    ``server_error`` (500, 502 or 503), ``html`` (an HTML page, 502 or 503), ``disconnect``
    (closed before any reply), ``slow`` (held ``slow_seconds``, then answered normally: set it
    above the client's read timeout), ``drop_stream`` (cut after 0 to 8 events) and
    ``error_event`` (a ``server_error`` event after 0 to 8 events). Scripted faults
    (``fail_next``, ...) come first. ``seed`` None draws a fresh seed.
    """

    rate: float = attrs.field(default=0.1, validator=_rate)
    seed: int | None = None
    weights: Mapping[str, float] = attrs.field(default=None, converter=_weights)
    retry_after: tuple[float, float] = (0.05, 0.2)
    slow_seconds: float = attrs.field(default=1.0, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        low, high = self.retry_after
        if not (0 <= low <= high and math.isfinite(high)):
            raise ValueError(
                f"retry_after must be (low, high) seconds with 0 <= low <= high, got {low, high}"
            )


class RandomFaults:
    """Draw a FaultMix's faults, request by request, and count them by kind (thread-safe)."""

    def __init__(self, mix: FaultMix, lock: threading.Lock) -> None:
        self.mix = mix
        self._lock = lock
        self._rng = random.Random(mix.seed)
        self._counts: collections.Counter[str] = collections.Counter()
        kinds = [(k, w) for k, w in mix.weights.items() if w > 0]
        self._choices = {
            stream: [(k, w) for k, w in kinds if stream or k not in STREAM_ONLY] for stream in (False, True)
        }

    def draw(self, *, stream: bool) -> tuple[str, Fault] | None:
        """Return the next request's fault kind and fault, or None: answer it normally.

        Nothing is counted until ``injected`` says the fault happened (a stream fault drawn for
        a request that is then refused never does).
        """
        choices = self._choices[stream]
        with self._lock:
            rng = self._rng
            if not choices or rng.random() >= self.mix.rate:
                return None
            kind = rng.choices([k for k, _ in choices], [w for _, w in choices])[0]
            return kind, self._make(kind, rng)

    def injected(self, kind: str) -> None:
        """Count one fault of ``kind`` as done."""
        with self._lock:
            self._counts[kind] += 1

    def _make(self, kind: str, rng: random.Random) -> Fault:
        if kind == "rate_limit":
            seconds = round(rng.uniform(*self.mix.retry_after), 3)
            message = default_message("rate_limit_exceeded")
            return Fault("fail", status=429, code="rate_limit_exceeded", message=message, retry_after=seconds)
        if kind == "server_error":
            message = default_message("server_error")
            return Fault("fail", status=rng.choice((500, 502, 503)), code="server_error", message=message)
        if kind == "html":
            return Fault("html", status=rng.choice((502, 503)))
        if kind == "disconnect":
            return Fault("disconnect")
        if kind == "slow":
            return Fault("delay", seconds=self.mix.slow_seconds)
        if kind == "drop_stream":
            return Fault("drop_stream", events=rng.randint(0, 8))
        message = default_message("server_error")
        return Fault("error_event", code="server_error", message=message, events=rng.randint(0, 8))

    def counts(self) -> dict[str, int]:
        """Return the faults drawn so far, by kind (every kind of the mix, zeros included)."""
        with self._lock:
            return {kind: self._counts[kind] for kind in self.mix.weights}
