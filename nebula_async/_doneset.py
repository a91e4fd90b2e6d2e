"""Compact sets of batch ids: 8 bytes an id, whatever the id's length. Pure: no I/O.

An id is kept as a 64-bit BLAKE2b digest keyed with a random key of the run (so no input can be
crafted to collide), in a sorted ``array('Q')``: 1,000,000 ids take 8 MB, where a set of the
strings would take well over 100 MB.

The guarantee, as the runner uses it: the ids of one input are checked to have distinct digests
(a collision between two different input ids is found exactly, by re-reading their lines, and the
run then picks another key), so within an input a digest stands for exactly one id, and no input
line is ever skipped or reported as a duplicate because of a collision. The one case left to
chance is an output line whose id is not in the input at all (a different input file): it could
hide an input id with the same digest, with probability below 2**-64 per pair of ids.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from bisect import bisect_left

from ._records import BatchId

__all__ = ["IdDigester", "IdSet"]


class IdDigester:
    """Map ids to keyed 64-bit digests; ``bits`` < 64 keeps fewer bits (tests use it to force collisions)."""

    def __init__(self, key: bytes | None = None, *, bits: int = 64) -> None:
        self._key = key if key is not None else os.urandom(16)
        self._mask = (1 << bits) - 1

    def __call__(self, batch_id: BatchId) -> int:
        # The type is part of the digest: the string "1" and the int 1 are different ids.
        data = (b"i" + str(batch_id).encode()) if isinstance(batch_id, int) else (b"s" + batch_id.encode())
        digest = hashlib.blake2b(data, digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "little") & self._mask


class IdSet:
    """A set of digests: ``add`` them, then ``freeze()`` once, then test membership with ``in``."""

    def __init__(self) -> None:
        self._digests = array("Q")

    def add(self, digest: int) -> None:
        """Add ``digest``; only before freeze()."""
        self._digests.append(digest)

    def freeze(self) -> set[int]:
        """Sort the digests and drop repeats; return the digests that were added more than once.

        Call it once, after the last add().
        """
        ordered = sorted(self._digests)  # a transient list: 1,000,000 digests take ~40 MB for a moment
        unique = array("Q")
        repeated: set[int] = set()
        last = -1
        for digest in ordered:
            if digest != last:
                unique.append(digest)
                last = digest
            else:
                repeated.add(digest)
        self._digests = unique
        return repeated

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, digest: object) -> bool:
        digests = self._digests
        i = bisect_left(digests, digest)  # type: ignore[call-overload]  # array is a sequence of ints
        return i < len(digests) and bool(digests[i] == digest)

    def count_in(self, other: IdSet) -> int:
        """Return how many digests of ``other`` are in this set."""
        return sum(1 for digest in other._digests if digest in self)
