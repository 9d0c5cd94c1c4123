"""What a :class:`~contactmatch.registry.table.RegistryTable` hands back: value types only.

:class:`HashDelta` (what a change did to the membership, for filter publishers) and
:class:`BucketAnswer` (a bucket query's rows, ready for the wire) are read by publishers and
the bucket method, which need them without the table's machinery.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from contactmatch._hashing import scale

__all__ = ["BucketAnswer", "HashDelta"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class HashDelta:
    """What one :meth:`RegistryTable.apply` changed, as multisets of ``h`` values.

    A value both added and removed in one batch (a user re-registered with the same token)
    is neither, so a filter patched with ``removed`` then ``added`` is exactly the filter
    built from the new membership.
    """

    added: U64
    removed: U64
    #: The 32-bit bucket keys of every row that joined or left (before cancelling): which
    #: buckets' entries may have changed, for answers laid out by bucket (the PIR database).
    buckets: U64 = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def scaled(self, bound: int) -> tuple[U64, U64]:
        """``(added, removed)`` as filter values for a filter of this bound, each sorted."""
        return scale(self.added, bound), scale(self.removed, bound)

    def __bool__(self) -> bool:
        return bool(self.added.shape[0] or self.removed.shape[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketAnswer:
    """The rows of every requested prefix, concatenated in request order.

    ``counts[i]`` consecutive entries belong to ``prefixes[i]``. Entry ``j`` is the 8-byte
    ``fingerprints[j]`` and ``sealed[offsets[j]:offsets[j + 1]]``. Within a prefix, entries
    are in ``(bucket key, fingerprint)`` order, whatever the compaction state, so processes
    holding the same rows give byte-identical answers (rows whose bucket key and first four
    fingerprint bytes both tie, about 2**-64 per pair, keep the order they arrived in).
    """

    counts: I64
    fingerprints: U8
    sealed: bytes
    offsets: I64
    #: Each entry's 32-bit bucket key (what the PIR layout places entries by).
    keys: U64 = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def __len__(self) -> int:
        return int(self.fingerprints.shape[0])

    def fingerprint_list(self) -> list[bytes]:
        """Every fingerprint as its own ``bytes`` (what :class:`BucketResponse` takes)."""
        flat = self.fingerprints.tobytes()
        return [flat[i : i + 8] for i in range(0, len(flat), 8)]

    def sealed_list(self) -> list[bytes]:
        """Every sealed user id as its own ``bytes``."""
        s = self.sealed
        return [s[a:b] for a, b in pairwise(self.offsets.tolist())]

    def items_encoding(self) -> tuple[bytes, bytes]:
        """The fingerprint and sealed lists in the wire's item-list encoding, built whole.

        The encoding is ``schemes.wire``'s: u32 count, u16 width and the joined items when
        every item has that width, else width 0 and each item prefixed by its u16 length.
        Writing these bytes straight into a bucket response saves a ``bytes`` object per
        entry (two per registered user in the requested buckets).
        """
        count = len(self)
        head = struct.pack(">IH", count, 8 if count else 0)
        fps = head + self.fingerprints.tobytes()
        lens = np.diff(self.offsets)
        if count and int(lens.min()) == int(lens.max()):
            return fps, struct.pack(">IH", count, int(lens[0])) + self.sealed
        prefix = lens.astype(">u2").view(np.uint8)
        body = np.insert(
            np.frombuffer(self.sealed, dtype=np.uint8), np.repeat(self.offsets[:-1], 2), prefix
        )
        return fps, struct.pack(">IH", count, 0) + body.tobytes()

    def entries(self) -> list[list[tuple[bytes, bytes]]]:
        """Per prefix, ``[(fingerprint, sealed), ...]``: :meth:`TokenTable.bucket`'s shape."""
        pairs = list(zip(self.fingerprint_list(), self.sealed_list(), strict=True))
        ends = np.cumsum(self.counts).tolist()
        return [pairs[b - c : b] for b, c in zip(ends, self.counts.tolist(), strict=True)]
