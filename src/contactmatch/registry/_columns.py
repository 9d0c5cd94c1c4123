"""The immutable base of a registry: nine numpy columns, built in memory or mapped from a file.

Rows are kept in *bucket order* (ascending ``bk``), so a bucket is a contiguous run of rows
and its sealed ids a contiguous run of bytes. The two other orders a query needs are sorted
copies of one value each plus a ``uint32`` link:

==========  ======  ======================================================================
column      bytes   meaning
==========  ======  ======================================================================
bk          8       bucket key (32 bits) above fingerprint bytes 0..3, sorted
fplo        4       fingerprint bytes 4..7
soff_lo     2       sealed id offset inside its block of 256 rows (``n + 1`` entries)
soff_hi     8/256   offset of each block of 256 rows in ``sealed``
sealed      8 + id  the user id sealed to the token (8-byte check + id bytes)
hpos        4       where the row's ``h`` sits in ``h``
h           8       salted 64-bit token hash, sorted: lookup screening and filter values
hdir        <0.5    where each run of ``h`` sharing its top ``dir_bits(n)`` bits starts
uh          8       keyed 64-bit user id hash, sorted
urow        4       the row each ``uh`` entry belongs to
==========  ======  ======================================================================

About ``46.5 + len(user id)`` bytes per row (56 for ten-character ids). ``hdir`` turns a
lookup's binary search over the whole ``h`` column (a cache miss per level past the cache:
23 of them at 10**7 rows) into one directory read and a search among about 12 neighbours
(6x faster at 10**7). A plain ``uint32`` sealed offset would cost 4 bytes a row and overflow
past 4 GiB of ids; the two-level offset costs 2.03.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contactmatch.errors import InvalidInput
from contactmatch.registry._derive import Derived
from contactmatch.registry._ops import count_below, expand_ranges

__all__ = [
    "BLOCK_SHIFT",
    "COLUMNS",
    "MAX_ROWS",
    "Base",
    "base_from_rows",
    "bucket_order",
    "column_lengths",
    "empty_base",
    "merge",
]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

BLOCK_SHIFT = 8
MAX_ROWS = 2**32 - 1
#: Every column: name, little-endian dtype. The snapshot format stores them in this order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("bk", "<u8"),
    ("fplo", "<u4"),
    ("soff_lo", "<u2"),
    ("soff_hi", "<u8"),
    ("sealed", "u1"),
    ("hpos", "<u4"),
    ("h", "<u8"),
    ("hdir", "<u4"),
    ("uh", "<u8"),
    ("urow", "<u4"),
)


def dir_bits(n: int) -> int:
    """Bits of ``h`` the directory of ``n`` rows indexes: ``n / 16 .. n / 8`` slots."""
    return max(0, n.bit_length() - 4)


def directory(h: U64) -> U32:
    """``out[k]``: the first row of ``h`` (sorted) whose top ``dir_bits`` bits are >= ``k``."""
    n = h.shape[0]
    bits = dir_bits(n)
    out = np.zeros((1 << bits) + 1, dtype=np.uint32)
    if n:
        top = (h >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(n, np.int64)
        np.cumsum(np.bincount(top, minlength=1 << bits), out=out[1:])
    return out


def column_lengths(n: int, sealed_bytes: int) -> dict[str, int]:
    """Entries of every column for ``n`` rows holding ``sealed_bytes`` of sealed ids."""
    return {
        "bk": n,
        "fplo": n,
        "soff_lo": n + 1,
        "soff_hi": (n >> BLOCK_SHIFT) + 1,
        "sealed": sealed_bytes,
        "hpos": n,
        "h": n,
        "hdir": (1 << dir_bits(n)) + 1,
        "uh": n,
        "urow": n,
    }


@dataclass(frozen=True, slots=True)
class Base:
    """The columns of an immutable row set (see the module docstring)."""

    bk: U64
    fplo: U32
    soff_lo: U16
    soff_hi: U64
    sealed: U8
    hpos: U32
    h: U64
    hdir: U32
    uh: U64
    urow: U32

    @property
    def n(self) -> int:
        return int(self.bk.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, name).nbytes) for name, _ in COLUMNS)

    def lower_bound(self, q: U64) -> I64:
        """``np.searchsorted(self.h, q)``, through the directory: a few cache misses per
        value instead of one per level of a binary search over the whole column."""
        n = self.n
        if not n:
            return np.zeros(q.shape[0], dtype=np.int64)
        bits = dir_bits(n)
        slot = (q >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros_like(q, np.int64)
        lo = self.hdir[slot].astype(np.int64)
        hi = self.hdir[slot + 1].astype(np.int64)
        # Branch-free binary search of every range at once, as many rounds as the widest
        # range needs (about 6: slots hold 8..16 rows on average).
        for _ in range(int((hi - lo).max(initial=0)).bit_length()):
            mid = (lo + hi) >> 1
            less = (mid < hi) & (self.h[np.minimum(mid, n - 1)] < q)
            lo = np.where(less, mid + 1, lo)
            hi = np.where(less, hi, mid)
        return lo

    def offsets(self, rows: I64) -> I64:
        """Byte offset in ``sealed`` where each row's sealed id starts (``rows`` may be n)."""
        out: I64 = self.soff_hi[rows >> BLOCK_SHIFT].astype(np.int64) + self.soff_lo[rows]
        return out


def empty_base() -> Base:
    """A base of no rows."""
    return base_from_rows(
        Derived(
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint32),
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint8),
            np.zeros(1, np.int64),
        )
    )


def base_from_rows(rows: Derived) -> Base:
    """Columns of rows that are already in bucket order.

    Raises:
        InvalidInput: more than 2**32 - 1 rows (row links are ``uint32``).
    """
    n = len(rows)
    if n > MAX_ROWS:
        raise InvalidInput("a registry holds at most 2**32 - 1 rows")
    # Stable sorts: equal hashes keep bucket order, so the same rows give the same columns.
    hord = np.argsort(rows.h, kind="stable")
    hpos = np.empty(n, dtype=np.uint32)
    hpos[hord] = np.arange(n, dtype=np.uint32)
    uord = np.argsort(rows.uh, kind="stable")
    h = rows.h[hord]
    soff_hi = rows.soff[:: 1 << BLOCK_SHIFT].astype(np.uint64)
    block = np.arange(n + 1, dtype=np.int64) >> BLOCK_SHIFT
    soff_lo = (rows.soff - soff_hi[block].astype(np.int64)).astype(np.uint16)
    return Base(
        bk=rows.bk,
        fplo=rows.fplo,
        soff_lo=soff_lo,
        soff_hi=soff_hi,
        sealed=rows.sealed,
        hpos=hpos,
        h=h,
        hdir=directory(h),
        uh=rows.uh[uord],
        urow=uord.astype(np.uint32),
    )


def bucket_order(rows: Derived) -> I64:
    """The order that sorts a batch by ``(bk, fplo)``: bucket order, canonical on ties."""
    order: I64 = np.lexsort((rows.fplo, rows.bk)).astype(np.int64)
    return order


def merge(base: Base, dead_rows: I64, added: Derived, inspos: I64) -> Base:
    """A new base: ``base`` without ``dead_rows`` (sorted), plus ``added`` (bucket order).

    Added row ``j`` goes before base row ``inspos[j]`` (the order the uncompacted table's
    bucket answers show, so compaction never changes an answer). Every column is merged in
    one pass, no sort of the base: O(n) copies plus O(n log k) binary searches.
    """
    if not len(added) and not dead_rows.shape[0]:
        return base
    k = len(added)
    # Rows: deleting the dead rows shifts an added row's place down by the dead before it.
    at = inspos - np.searchsorted(dead_rows, inspos)
    placed = at + np.arange(k, dtype=np.int64)
    lens = np.delete(np.diff(base.offsets(np.arange(base.n + 1, dtype=np.int64))), dead_rows)
    dead_bytes, _ = expand_ranges(base.offsets(dead_rows), base.offsets(dead_rows + 1))
    sealed_kept = np.delete(base.sealed, dead_bytes)
    kept_soff = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=kept_soff[1:])
    added_lens = np.diff(added.soff)
    sealed = np.insert(sealed_kept, np.repeat(kept_soff[at], added_lens), added.sealed)
    lens = np.insert(lens, at, added_lens)
    soff = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=soff[1:])

    n, n_kept = base.n, base.n - int(dead_rows.shape[0])

    def new_row(old: I64) -> I64:
        kept = old - count_below(dead_rows, old, n)
        out: I64 = kept + count_below(at, kept, n_kept, inclusive=True)
        return out

    # h: merge the added hashes into the kept ones; every position is known by construction,
    # so hpos stays a bijection even where hashes tie.
    dead_hpos = np.sort(base.hpos[dead_rows].astype(np.int64))
    h_kept = np.delete(base.h, dead_hpos)
    h_ord = np.argsort(added.h, kind="stable")
    h_at = np.searchsorted(h_kept, added.h[h_ord])
    h = np.insert(h_kept, h_at, added.h[h_ord])
    old_hpos = np.delete(base.hpos, dead_rows).astype(np.int64)
    i = old_hpos - count_below(dead_hpos, old_hpos, n)
    kept_hpos = i + count_below(h_at, i, n_kept, inclusive=True)
    added_hpos = np.empty(k, dtype=np.int64)
    added_hpos[h_ord] = h_at + np.arange(k, dtype=np.int64)
    hpos = np.insert(kept_hpos, at, added_hpos)
    # uh: same, with the dead rows' entries found through urow.
    dead = np.zeros(n, dtype=np.bool_)
    dead[dead_rows] = True
    alive = ~dead[base.urow]
    uh_kept = base.uh[alive]
    u_ord = np.argsort(added.uh, kind="stable")
    u_at = np.searchsorted(uh_kept, added.uh[u_ord])
    uh = np.insert(uh_kept, u_at, added.uh[u_ord])
    urow = np.insert(new_row(base.urow[alive].astype(np.int64)), u_at, placed[u_ord])
    if uh.shape[0] > MAX_ROWS:
        raise InvalidInput("a registry holds at most 2**32 - 1 rows")
    soff_hi = soff[:: 1 << BLOCK_SHIFT].astype(np.uint64)
    block = np.arange(soff.shape[0], dtype=np.int64) >> BLOCK_SHIFT
    return Base(
        bk=np.insert(np.delete(base.bk, dead_rows), at, added.bk),
        fplo=np.insert(np.delete(base.fplo, dead_rows), at, added.fplo),
        soff_lo=(soff - soff_hi[block].astype(np.int64)).astype(np.uint16),
        soff_hi=soff_hi,
        sealed=sealed,
        hpos=hpos.astype(np.uint32),
        h=h,
        hdir=directory(h),
        uh=uh,
        urow=urow.astype(np.uint32),
    )
