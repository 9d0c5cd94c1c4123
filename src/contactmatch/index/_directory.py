"""The merged part of an index: a bucket directory over 64-bit fingerprint keys.

Why a directory and not a sorted array with ``searchsorted``: binary search made ~20
dependent cache misses per query; the directory makes two independent gathers per query
and one per entry of its bucket, which the CPU overlaps (docs/index-and-filters.md).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["REM_BITS", "Directory", "candidates", "dir_bits_for"]

RowIds = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

REM_BITS: Final = 32  # key bits kept in an entry beside the directory's bits
_S32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)


def candidates(fps: U64, queries: U64) -> tuple[I64, I64]:
    """Every (query index, position) pair whose fingerprints are equal (the sorted delta)."""
    n = fps.shape[0]
    if n == 0 or queries.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    left = np.searchsorted(fps, queries, side="left")
    qidx = np.flatnonzero(left < n)
    pos = left[qidx]
    hit = fps[pos] == queries[qidx]
    qidx, pos = qidx[hit], pos[hit]
    out_q, out_p = [qidx], [pos]
    # Equal fingerprints (a 64-bit collision, ~n^2/2^65) sit side by side: walk them.
    while qidx.size:
        pos = pos + 1
        more = pos < n
        qidx, pos = qidx[more], pos[more]
        hit = fps[pos] == queries[qidx]
        qidx, pos = qidx[hit], pos[hit]
        out_q.append(qidx)
        out_p.append(pos)
    return np.concatenate(out_q), np.concatenate(out_p)


def dir_bits_for(n: int) -> int:
    """Directory bits: the largest d with ``2**d < n``, so offsets cost < 4 bytes per entry.

    Buckets then hold 1-2 entries on average (Poisson); a lookup reads all of its bucket.
    """
    return max(0, (n - 1).bit_length() - 1) if n > 1 else 0


class Directory:
    """The merged part of an index: a bucket directory over fingerprint keys.

    A *key* is the top ``key_bits`` bits of a fingerprint. Its top ``dir_bits`` bits pick a
    bucket; ``offsets[b]:offsets[b + 1]`` are that bucket's entries, sorted by key. An entry is
    one ``uint64``: the key's remaining low bits (at most 32) in its low half and the row id in
    its high half, so the candidate's row comes in the same cache line as its remainder.
    """

    __slots__ = (
        "_dir_shift",
        "_key_shift",
        "_next",
        "_rem_mask",
        "dir_bits",
        "entries",
        "key_bits",
        "offsets",
    )

    def __init__(self, offsets: U32, entries: U64, key_bits: int, dir_bits: int) -> None:
        self.offsets = offsets
        self._next = offsets[1:]  # bucket ends, so a lookup needs no ``bucket + 1``
        self.entries = entries
        self.key_bits = key_bits
        self.dir_bits = dir_bits
        # Shifts and mask as numpy scalars once, not per query batch.
        self._dir_shift = np.uint64(64 - dir_bits) if dir_bits else None
        self._key_shift = np.uint64(64 - key_bits)
        rem_bits = key_bits - dir_bits
        self._rem_mask = None if rem_bits == REM_BITS else np.uint64((1 << rem_bits) - 1)

    @classmethod
    def empty(cls) -> Directory:
        return cls(np.zeros(2, dtype=np.uint32), np.zeros(0, dtype=np.uint64), 64, 0)

    @classmethod
    def from_sorted(cls, keys: U64, rows: RowIds, key_bits: int) -> Directory:
        """Lay out entries whose ``key_bits``-bit keys are sorted (ascending)."""
        n = keys.shape[0]
        d = dir_bits_for(n)
        if key_bits - d > REM_BITS:
            # Keep what fits: d directory bits + 32 remainder bits. Bits once dropped are gone
            # (only a rebuild from the tokens restores them); that only costs false candidates,
            # n / 2**key_bits per query, never a false match.
            keys = keys >> np.uint64(key_bits - d - REM_BITS)
            key_bits = d + REM_BITS
        shift = np.uint64(key_bits - d)
        offsets = np.zeros((1 << d) + 1, dtype=np.uint32)
        if n:
            counts = np.bincount((keys >> shift).astype(np.intp), minlength=1 << d)
            np.cumsum(counts, out=offsets[1:])
        entries = keys & np.uint64((1 << (key_bits - d)) - 1)
        entries |= rows.astype(np.uint64) << _S32
        return cls(offsets, entries, key_bits, d)

    def merged(self, tomb: I64, dkeys: U64, drows: RowIds) -> Directory | None:
        """This directory without the entries at ``tomb`` and with sorted ``dkeys`` added.

        The common merge keeps the directory's bits (the entry count stays between the same
        powers of two): then entries are deleted and inserted in place and the offsets are
        shifted, a few linear passes, with no key rebuilt and no sort. Returns None when the
        directory must change (the caller lays everything out anew).
        """
        n = self.entries.shape[0]
        d, key_bits = self.dir_bits, self.key_bits
        rem_bits = key_bits - d
        if not n or rem_bits > REM_BITS or dir_bits_for(n - tomb.size + dkeys.size) != d:
            return None
        if tomb.size + dkeys.size >= 2**31:
            return None  # keeps the running offset change below in int32
        buckets = 1 << d
        entries = np.delete(self.entries, tomb) if tomb.size else self.entries
        shift = np.uint64(rem_bits)
        dbucket = (dkeys >> shift).astype(np.intp)
        drem = dkeys & np.uint64((1 << rem_bits) - 1)
        # Each new entry goes after the surviving entries of its bucket with smaller keys.
        starts = self.offsets.take(dbucket).astype(np.intp)
        stops = self.offsets.take(dbucket + 1).astype(np.intp)
        starts -= np.searchsorted(tomb, starts)
        stops -= np.searchsorted(tomb, stops)
        counts = stops - starts
        ends = np.cumsum(counts)
        total = int(ends[-1]) if ends.size else 0
        qidx = np.repeat(np.arange(dkeys.shape[0], dtype=np.intp), counts)
        pos = np.repeat(starts - ends + counts, counts) + np.arange(total, dtype=np.intp)
        smaller = (entries.take(pos) & _M32) < drem.take(qidx)
        slots = starts + np.bincount(qidx[smaller], minlength=dkeys.shape[0])
        entries = np.insert(entries, slots, drem | (drows.astype(np.uint64) << _S32))
        # Offsets move by (entries added - entries removed) in the buckets before each one;
        # uint32 arithmetic wraps back into range because every final offset fits.
        # A running change never exceeds the changes merged (< 2**31), so int32 holds it.
        change = np.zeros(buckets, dtype=np.int32)
        np.add.at(change, dbucket, 1)
        np.subtract.at(change, np.searchsorted(self.offsets, tomb, side="right") - 1, 1)
        np.cumsum(change, out=change)
        offsets = self.offsets.copy()
        offsets[1:] += change.view(np.uint32)
        return Directory(offsets, entries, key_bits, d)

    def keys(self) -> U64:
        """Every entry's key, in entry order (sorted)."""
        d = self.dir_bits
        shift = np.uint64(self.key_bits - d)
        counts = np.diff(self.offsets).astype(np.intp)
        buckets = np.repeat(np.arange(1 << d, dtype=np.uint64), counts)
        out: U64 = (buckets << shift) | (self.entries & _M32)
        return out

    @property
    def rows(self) -> RowIds:
        out: RowIds = (self.entries >> _S32).astype(np.uint32)
        return out

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.entries.nbytes)

    def candidates(self, fps: U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], RowIds]:
        """Every (query index, entry position, row id) whose keys equal.

        Two gathers per query (a bucket's bounds, usually one cache line) and one per entry of
        that bucket: independent loads the CPU overlaps, unlike a binary search's chain of
        dependent probes. Buckets are expanded with ``np.repeat``, so a long bucket costs
        entries, not a special path.
        """
        n = fps.shape[0]
        # Views, not copies, wherever the bits allow: at 1,000 queries each numpy call costs
        # more than the memory it touches. Buckets are < 2**31, so the int64 view is exact.
        if self._dir_shift is None:
            bucket = np.zeros(n, dtype=np.intp)
        else:
            bucket = (fps >> self._dir_shift).view(np.intp)
        key = fps >> self._key_shift
        if self._rem_mask is not None:
            key &= self._rem_mask
        rem = key.view(np.uint32)[0::2]  # little-endian: the low half holds the remainder
        # take() rather than [] throughout: numpy's fancy indexing costs ~2x more per call.
        lo = self.offsets.take(bucket).astype(np.intp)
        counts = self._next.take(bucket).astype(np.intp)
        counts -= lo
        ends = np.cumsum(counts)
        total = int(ends[-1]) if n else 0
        # Position of candidate j of query i: lo[i] + (j - first candidate of query i).
        qidx = np.repeat(np.arange(n, dtype=np.intp), counts)
        lo -= ends
        lo += counts
        pos = np.repeat(lo, counts)
        pos += np.arange(total, dtype=np.intp)
        halves = self.entries.take(pos).view(np.uint32)  # little-endian: [remainder, row]
        hit = np.flatnonzero(halves[0::2] == rem.take(qidx))
        return qidx.take(hit), pos.take(hit), halves[1::2].take(hit)
