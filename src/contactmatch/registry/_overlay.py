"""The changes since a base was made: rows added, and base rows removed.

Small by construction (the table compacts it into a new base past a bound), so every update
here may copy the overlay's arrays; none copies the base. Each change makes a new
:class:`Overlay` (copy on write), so readers holding the old one see a consistent state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contactmatch.registry._columns import Base, bucket_order
from contactmatch.registry._derive import Derived
from contactmatch.registry._ops import expand_ranges, is_member, remove_values

__all__ = ["Overlay"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_NONE = np.zeros(0, dtype=np.int64)


def _no_rows() -> Derived:
    empty = np.zeros(0, dtype=np.uint64)
    return Derived(
        empty, empty, np.zeros(0, np.uint32), empty, np.zeros(0, np.uint8), np.zeros(1, np.int64)
    )


@dataclass(frozen=True, slots=True)
class Overlay:
    """Added rows (in bucket order, like a base) and the base rows removed.

    ``inspos[i]`` is the first base row whose ``bk`` is not below added row ``i``'s: the row
    it is listed before in a bucket answer (and lands before at compaction).
    """

    rows: Derived
    inspos: I64
    hs: U64
    uhs: U64
    uperm: I64
    dead_rows: I64
    dead_hpos: I64

    @classmethod
    def empty(cls) -> Overlay:
        """No change."""
        empty = np.zeros(0, dtype=np.uint64)
        return cls(_no_rows(), _NONE, empty, empty, _NONE, _NONE, _NONE)

    @property
    def size(self) -> int:
        """Rows added plus base rows removed: the work a compaction would fold in."""
        return len(self.rows) + int(self.dead_rows.shape[0])

    @property
    def nbytes(self) -> int:
        r = self.rows
        arrays = (r.h, r.bk, r.fplo, r.uh, r.sealed, r.soff, self.inspos, self.hs, self.uhs)
        extra = (self.uperm, self.dead_rows, self.dead_hpos)
        return sum(int(a.nbytes) for a in arrays + extra)

    # --- finding rows ------------------------------------------------------------------------
    def rows_of_users(self, uh: U64) -> I64:
        """Added rows whose user hash is one of ``uh``."""
        lo = np.searchsorted(self.uhs, uh, side="left")
        hi = np.searchsorted(self.uhs, uh, side="right")
        idx, _ = expand_ranges(lo, hi)
        return self.uperm[idx]

    def rows_of_tokens(self, h: U64, bk: U64, fplo: npt.NDArray[np.uint32]) -> I64:
        """Added rows holding one of these tokens (equal ``bk``, ``fplo`` and ``h``)."""
        r = self.rows
        lo = np.searchsorted(r.bk, bk, side="left")
        hi = np.searchsorted(r.bk, bk, side="right")
        idx, owner = expand_ranges(lo, hi)
        same = (r.fplo[idx] == fplo[owner]) & (r.h[idx] == h[owner])
        found: I64 = idx[same]
        return found

    # --- changing ------------------------------------------------------------------------------
    def without(self, gone: I64) -> Overlay:
        """Drop added rows ``gone`` (sorted, unique)."""
        if not gone.shape[0]:
            return self
        r = self.rows
        keep = np.ones(len(r), dtype=np.bool_)
        keep[gone] = False
        lens = np.diff(r.soff)
        soff = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lens[keep], out=soff[1:])
        rows = Derived(
            r.h[keep], r.bk[keep], r.fplo[keep], r.uh[keep], r.sealed[np.repeat(keep, lens)], soff
        )
        alive = ~is_member(gone, self.uperm)
        uperm = self.uperm[alive]
        uperm = uperm - np.searchsorted(gone, uperm)
        return Overlay(
            rows,
            self.inspos[keep],
            remove_values(self.hs, r.h[gone]),
            self.uhs[alive],
            uperm,
            self.dead_rows,
            self.dead_hpos,
        )

    def with_dead(self, rows: I64, hpos: I64) -> Overlay:
        """Mark live base rows (and their ``h`` positions) removed."""
        if not rows.shape[0]:
            return self
        return Overlay(
            self.rows,
            self.inspos,
            self.hs,
            self.uhs,
            self.uperm,
            np.sort(np.concatenate([self.dead_rows, rows])),
            np.sort(np.concatenate([self.dead_hpos, hpos])),
        )

    def plus(self, new: Derived, base: Base) -> Overlay:
        """Add rows (any order); equal ``bk`` rows keep arrival order after existing ones."""
        k = len(new)
        if not k:
            return self
        new = new.take(bucket_order(new))
        r = self.rows
        at = np.searchsorted(r.bk, new.bk, side="right")
        lens = np.insert(np.diff(r.soff), at, np.diff(new.soff))
        soff = np.zeros(lens.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=soff[1:])
        byte_at = np.repeat(r.soff[at], np.diff(new.soff))
        rows = Derived(
            np.insert(r.h, at, new.h),
            np.insert(r.bk, at, new.bk),
            np.insert(r.fplo, at, new.fplo),
            np.insert(r.uh, at, new.uh),
            np.insert(r.sealed, byte_at, new.sealed),
            soff,
        )
        # Existing rows shift past the new rows inserted at or before them.
        moved = self.uperm + np.searchsorted(at, self.uperm, side="right")
        placed = at + np.arange(k, dtype=np.int64)
        order = np.argsort(new.uh, kind="stable")
        upos = np.searchsorted(self.uhs, new.uh[order], side="right")
        hsort = np.sort(new.h)
        return Overlay(
            rows,
            np.insert(self.inspos, at, np.searchsorted(base.bk, new.bk, side="left")),
            np.insert(self.hs, np.searchsorted(self.hs, hsort), hsort),
            np.insert(self.uhs, upos, new.uh[order]),
            np.insert(moved, upos, placed[order]),
            self.dead_rows,
            self.dead_hpos,
        )
