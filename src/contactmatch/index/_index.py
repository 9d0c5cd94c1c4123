"""The token index: token -> row id over a bucket directory of fingerprints, hits confirmed.

Changes go to a small sorted delta (adds) and a tombstone list (removed base positions) that
are merged into the directory once they pass a threshold. Pure: no I/O except
:meth:`TokenIndex.save` / :meth:`TokenIndex.load`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from contactmatch._hashing import (
    SALT_BYTES,
    hash64,
    hash64_packed,
    pack_tokens,
    prefix64,
    prefix64_packed,
)
from contactmatch.errors import InvalidInput
from contactmatch.index._directory import Directory, candidates
from contactmatch.index._file import MODES, FingerprintMode, read_index, write_index
from contactmatch.index.sources import MemoryTokens, TokenSource

__all__ = ["TokenIndex"]

RowIds = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_MAX_ROW: Final = 2**32 - 1


def _as_rows(row_ids: npt.ArrayLike, n: int) -> RowIds:
    rows = np.asarray(row_ids)
    if rows.shape != (n,):
        raise InvalidInput("row_ids must be one id per token")
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    if rows.dtype.kind not in "iu":
        raise InvalidInput("row_ids must be integers")
    if int(rows.min()) < 0 or int(rows.max()) > _MAX_ROW:
        raise InvalidInput("row_ids must fit in 32 bits (0 <= id < 2**32)")
    return rows.astype(np.uint32)


class _Batch:
    """A query batch packed once: matrix and lengths (for confirmation) and fingerprints."""

    __slots__ = ("fps", "lens", "matrix", "tokens")

    def __init__(self, tokens: Sequence[bytes], index: TokenIndex) -> None:
        self.tokens = tokens
        self.matrix, self.lens = pack_tokens(tokens)
        self.fps = index._fingerprints_packed(self.matrix, self.lens)

    def subset(self, keep: npt.NDArray[np.intp]) -> _Batch:
        out = _Batch.__new__(_Batch)
        out.tokens = [self.tokens[i] for i in keep.tolist()]
        out.matrix, out.lens, out.fps = self.matrix[keep], self.lens[keep], self.fps[keep]
        return out


class TokenIndex:
    """Token -> row id map over a bucketed fingerprint directory; every hit confirmed."""

    def __init__(
        self,
        *,
        salt: bytes | None = None,
        fingerprint: FingerprintMode = "hash",
        source: TokenSource | None = None,
        merge_fraction: float = 0.02,
        merge_minimum: int = 65536,
    ) -> None:
        """Create an empty index.

        Args:
            salt: 16 bytes keying the fingerprint hash; drawn at random when omitted.
            fingerprint: ``"hash"`` (salted 64-bit hash of the whole token, any token) or
                ``"prefix"`` (the token's first 8 bytes; only for tokens that are already
                uniform keyed outputs such as OPRF or HMAC values).
            source: where full tokens are confirmed; an owned :class:`MemoryTokens` if omitted.
                A source that also has ``confirm_packed`` (:class:`PackedTokenSource`) gets
                the packed query matrix instead of ``bytes`` objects.
            merge_fraction: merge the delta once it exceeds this fraction of the base...
            merge_minimum: ...and this many entries.

        Raises:
            InvalidInput: bad salt length or fingerprint mode.
        """
        if fingerprint not in MODES:
            raise InvalidInput("fingerprint must be 'hash' or 'prefix'")
        if salt is None:
            salt = os.urandom(SALT_BYTES)
        if len(salt) != SALT_BYTES:
            raise InvalidInput(f"salt must be {SALT_BYTES} bytes")
        self.salt = bytes(salt)
        self.mode: FingerprintMode = fingerprint
        self._owned = source is None
        self.source: TokenSource = MemoryTokens() if source is None else source
        self.merge_fraction = merge_fraction
        self.merge_minimum = merge_minimum
        self._base = Directory.empty()
        self._dfp: U64 = np.zeros(0, dtype=np.uint64)
        self._drows: RowIds = np.zeros(0, dtype=np.uint32)
        self._tomb: I64 = np.zeros(0, dtype=np.int64)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        tokens: Sequence[bytes],
        row_ids: npt.ArrayLike | None = None,
        *,
        salt: bytes | None = None,
        fingerprint: FingerprintMode = "hash",
        source: TokenSource | None = None,
    ) -> TokenIndex:
        """Bulk-build from millions of tokens in one sort.

        Args:
            tokens: registered tokens; a token given twice keeps its last row id.
            row_ids: the row of each token (default ``0..n-1``), each below ``2**32``.
            salt: see :class:`TokenIndex`.
            fingerprint: see :class:`TokenIndex`.
            source: see :class:`TokenIndex`; it must already hold the given rows.

        Returns:
            The index.

        Raises:
            InvalidInput: malformed tokens or row ids.
        """
        index = cls(salt=salt, fingerprint=fingerprint, source=source)
        n = len(tokens)
        if n > _MAX_ROW:
            raise InvalidInput("an index holds fewer than 2**32 tokens")
        rows = np.arange(n, dtype=np.uint32) if row_ids is None else _as_rows(row_ids, n)
        fps = index.fingerprints(tokens)
        # Order among equal fingerprints does not matter (all are walked), so no stable sort.
        order = np.argsort(fps)
        keep = _last_of_each(tokens, fps, order)
        if keep is not None:
            tokens = [tokens[i] for i in np.flatnonzero(keep).tolist()]
            order = order[keep[order]]
        index._base = Directory.from_sorted(fps[order], rows[order], 64)
        if keep is not None:
            rows = rows[keep]
        if isinstance(index.source, MemoryTokens) and index._owned:
            index.source.put_many(rows, tokens)
        return index

    def fingerprints(self, tokens: Sequence[bytes]) -> U64:
        """The fingerprint of every token under this index's mode and salt."""
        if self.mode == "prefix":
            return prefix64(tokens)
        return hash64(tokens, self.salt)

    def _fingerprints_packed(self, matrix: npt.NDArray[np.uint8], lens: I64) -> U64:
        if self.mode == "prefix":
            return prefix64_packed(matrix, lens)
        return hash64_packed(matrix, lens, self.salt)

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        base = self._base.entries.shape[0]
        return int(base - self._tomb.shape[0] + self._dfp.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (directory, entries, delta and tombstones)."""
        arrays = (self._dfp, self._drows, self._tomb)
        return self._base.nbytes + int(sum(a.nbytes for a in arrays))

    @property
    def pending(self) -> int:
        """Changes not yet merged into the base arrays (delta entries plus tombstones)."""
        return int(self._dfp.shape[0] + self._tomb.shape[0])

    def _find(self, batch: _Batch) -> tuple[npt.NDArray[np.intp], I64, RowIds, Bools | None]:
        """Confirmed hits: query index, position, row id, and whether each is in the delta."""
        qidx, pos, rows = self._base.candidates(batch.fps)
        if self._tomb.size and pos.size:
            slot = np.searchsorted(self._tomb, pos)
            alive = self._tomb[np.minimum(slot, self._tomb.size - 1)] != pos
            qidx, pos, rows = qidx[alive], pos[alive], rows[alive]
        in_delta: Bools | None = None
        if self._dfp.size:
            # The delta is small and sorted by full fingerprint: a binary search suffices.
            dq, dpos = candidates(self._dfp, batch.fps)
            if dq.size:
                in_delta = np.zeros(qidx.shape[0] + dq.shape[0], dtype=np.bool_)
                in_delta[qidx.shape[0] :] = True
                qidx = np.concatenate([qidx, dq])
                pos = np.concatenate([pos, dpos])
                rows = np.concatenate([rows, self._drows[dpos]])
        if qidx.size:
            packed = getattr(self.source, "confirm_packed", None)
            if packed is not None:
                ok: Bools = packed(batch.matrix.take(qidx, axis=0), batch.lens.take(qidx), rows)
            else:
                ok = self.source.confirm([batch.tokens[i] for i in qidx.tolist()], rows)
            if not ok.all():
                qidx, pos, rows = qidx[ok], pos[ok], rows[ok]
                in_delta = None if in_delta is None else in_delta[ok]
        return qidx, pos.astype(np.int64, copy=False), rows, in_delta

    def _locate(self, batch: _Batch) -> tuple[npt.NDArray[np.int8], I64, I64]:
        """Where each token is: part (0 absent, 1 base, 2 delta), position, row id (-1)."""
        n = batch.lens.shape[0]
        part = np.zeros(n, dtype=np.int8)
        where = np.full(n, -1, dtype=np.int64)
        found = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return part, where, found
        qidx, pos, rows, in_delta = self._find(batch)
        part[qidx] = 1 if in_delta is None else 1 + in_delta.astype(np.int8)
        where[qidx] = pos
        found[qidx] = rows
        return part, where, found

    def contains_many(self, tokens: Sequence[bytes]) -> Bools:
        """Whether each token is registered (confirmed, never a false match).

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        batch = _Batch(tokens, self)
        present = np.zeros(len(tokens), dtype=np.bool_)
        if len(tokens) and len(self):
            present[self._find(batch)[0]] = True
        return present

    def lookup_many(self, tokens: Sequence[bytes]) -> I64:
        """The row id of each token, ``-1`` where it is not registered.

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        batch = _Batch(tokens, self)
        found = np.full(len(tokens), -1, dtype=np.int64)
        if len(tokens) and len(self):
            qidx, _, rows, _ = self._find(batch)
            found[qidx] = rows
        return found

    # -- updates ---------------------------------------------------------------------------

    def add_many(self, tokens: Sequence[bytes], row_ids: npt.ArrayLike) -> None:
        """Register tokens under row ids; a token already present moves to its new row.

        A row holds one token: to give a row a new token, remove the old token first.

        Raises:
            InvalidInput: malformed tokens or row ids.
        """
        n = len(tokens)
        rows = _as_rows(row_ids, n)
        if n == 0:
            return
        batch = _Batch(tokens, self)
        keep = _last_of_each(tokens, batch.fps, np.argsort(batch.fps, kind="stable"))
        if keep is not None:
            batch = batch.subset(np.flatnonzero(keep))
            rows = rows[keep]
        part, where, found = self._locate(batch)
        same = (part != 0) & (found == rows.astype(np.int64))
        moved = (part != 0) & ~same
        if moved.any():
            self._drop(part[moved], where[moved], found[moved])
        new = np.flatnonzero(~same)
        if not new.size:
            return
        fps, rows = batch.fps[new], rows[new]
        if self._owned and isinstance(self.source, MemoryTokens):
            self.source.put_many(rows, [batch.tokens[i] for i in new.tolist()])
        order = np.argsort(fps, kind="stable")
        fps, rows = fps[order], rows[order]
        slot = np.searchsorted(self._dfp, fps)
        self._dfp = np.insert(self._dfp, slot, fps)
        self._drows = np.insert(self._drows, slot, rows)
        self._maybe_merge()

    def remove_many(self, tokens: Sequence[bytes]) -> Bools:
        """Unregister tokens.

        Returns:
            Which tokens were registered (and are now removed).

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        part, where, found = self._locate(_Batch(tokens, self))
        present = part != 0
        if present.any():
            # The same token twice in one call must be dropped once.
            sel = np.flatnonzero(present)
            key = part[sel].astype(np.int64) * (2**40) + where[sel]
            _, first = np.unique(key, return_index=True)
            sel = sel[first]
            self._drop(part[sel], where[sel], found[sel])
            self._maybe_merge()
        out: Bools = present
        return out

    def _drop(self, part: npt.NDArray[np.int8], where: I64, rows: I64) -> None:
        base = where[part == 1]
        if base.size:
            self._tomb = np.union1d(self._tomb, base)
        delta = where[part == 2]
        if delta.size:
            self._dfp = np.delete(self._dfp, delta)
            self._drows = np.delete(self._drows, delta)
        if self._owned and isinstance(self.source, MemoryTokens):
            self.source.drop_many(rows.astype(np.uint32))

    def _maybe_merge(self) -> None:
        limit = max(self.merge_minimum, int(self.merge_fraction * self._base.entries.shape[0]))
        if self.pending > limit:
            self.compact()

    def compact(self) -> None:
        """Merge the delta and tombstones into a new directory (one linear pass)."""
        if not self.pending:
            return
        base = self._base
        # Delta fingerprints cut to the base's key width keep their order.
        dkeys = self._dfp >> np.uint64(64 - base.key_bits)
        fast = base.merged(self._tomb, dkeys, self._drows)
        if fast is not None:
            self._base = fast
            self._dfp = np.zeros(0, dtype=np.uint64)
            self._drows = np.zeros(0, dtype=np.uint32)
            self._tomb = np.zeros(0, dtype=np.int64)
            return
        keys, rows = base.keys(), base.rows
        if self._tomb.size:
            alive = np.ones(keys.shape[0], dtype=np.bool_)
            alive[self._tomb] = False
            keys, rows = keys[alive], rows[alive]
        slot = np.searchsorted(keys, dkeys)
        keys = np.insert(keys, slot, dkeys)
        rows = np.insert(rows, slot, self._drows)
        self._base = Directory.from_sorted(keys, rows, base.key_bits)
        self._dfp = np.zeros(0, dtype=np.uint64)
        self._drows = np.zeros(0, dtype=np.uint32)
        self._tomb = np.zeros(0, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the (compacted) index: a 64-byte header, the directory, then the entries.

        The token source is not written: it is the store's, or a :class:`TokenFile`.
        """
        self.compact()
        write_index(path, self._base, self.mode, self.salt)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        source: TokenSource,
        mmap: bool = True,
        verify: bool = False,
    ) -> TokenIndex:
        """Open a saved index, memory-mapping its arrays by default.

        Args:
            path: a file written by :meth:`save` (format 2; format 1 files, sorted
                fingerprints, are read into memory and laid out anew).
            source: where tokens are confirmed (not part of the file).
            mmap: map the arrays read-only instead of reading them into memory.
            verify: also check the data checksum (reads every page).

        Returns:
            The index; updates go to its delta, the mapped file is never written.

        Raises:
            MalformedMessage: the file is not an index, is truncated or fails a checksum.
        """
        directory, mode, salt = read_index(path, mmap=mmap, verify=verify)
        index = cls(salt=salt, fingerprint=mode, source=source)
        index._base = directory
        return index


def _last_of_each(tokens: Sequence[bytes], fps: U64, order: I64) -> Bools | None:
    """Mask keeping the last occurrence of each distinct token, or None if all are distinct.

    ``order`` sorts ``fps``; only tokens whose fingerprints repeat are compared, so the
    common case costs nothing beyond that sort.
    """
    sorted_fp = fps[order]
    dup = np.flatnonzero(sorted_fp[1:] == sorted_fp[:-1])
    if not dup.size:
        return None
    keep = np.ones(fps.shape[0], dtype=np.bool_)
    suspects = np.unique(np.concatenate([order[dup], order[dup + 1]]))
    seen: dict[tuple[int, bytes], int] = {}
    for i in suspects.tolist():
        key = (int(fps[i]), bytes(tokens[i]))
        prev = seen.get(key)
        if prev is not None:
            keep[prev] = False
        seen[key] = i
    return keep
