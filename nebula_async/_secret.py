"""Secret: the API key, held so that no repr, attribute or traceback local shows it as a str."""

from __future__ import annotations

import os
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """A string kept out of plain sight; ``reveal()`` gives it back where a header is built.

    Error trackers record the locals of every frame of a traceback, and some serialize objects'
    attributes too: so the value is stored XOR-masked with a random pad, not as a str, and the
    repr is redacted. Making one never raises, whatever ``value`` is (the key's checks raise later,
    on the Secret, from frames that hold no copy of the key); a value that is not a str is dropped,
    keeping only its type's name for the error message.
    """

    __slots__ = ("_masked", "_pad", "kind")

    def __init__(self, value: object) -> None:
        # "str" (a subclass too), or the type's name of what the caller passed instead, for the error.
        self.kind = "str" if isinstance(value, str) else type(value).__name__
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b""
        self._pad = os.urandom(len(raw))
        self._masked = _xor(raw, self._pad)

    def reveal(self) -> str:
        """Return the value (a str; empty for a value that was not one)."""
        return _xor(self._masked, self._pad).decode("utf-8", "surrogatepass")

    def prefixed(self, prefix: str) -> Secret:
        """Return a Secret of ``prefix`` followed by this value (``Bearer <key>``), revealed only inside."""
        return Secret(prefix + self.reveal())

    def __bool__(self) -> bool:
        return bool(self._masked)

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __reduce__(self) -> NoReturn:
        # A pickle (a checkpoint, a process pool's queue) would write the key in clear.
        raise TypeError("a Secret can't be pickled or copied")


def _xor(data: bytes, pad: bytes) -> bytes:
    # As two big integers: a tenth of the time of a byte-by-byte loop, on the per-call path of a proxy.
    size = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(size, "big")
