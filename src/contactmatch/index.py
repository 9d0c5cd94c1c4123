"""The registered-token index: sorted 64-bit fingerprints with 32-bit row ids beside them.

Twelve bytes per registered user (``uint64`` fingerprint + ``uint32`` row id); the tokens
themselves live in a :class:`TokenSource` (the store, a memory-mapped :class:`TokenFile`, or
the in-memory :class:`MemoryTokens` default for small cases). A fingerprint hit is only a
candidate: every hit is confirmed against the full token, so a false match is impossible.

Changes go to a small sorted delta (adds) and a tombstone list (removed base positions) that
are merged into the base arrays once they pass a threshold. Pure: no I/O except
:meth:`TokenIndex.save` / :meth:`TokenIndex.load` and :class:`TokenFile`.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from hashlib import blake2b
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from contactmatch._hashing import SALT_BYTES, hash64, pack_tokens, prefix64
from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = ["FingerprintMode", "MemoryTokens", "TokenFile", "TokenIndex", "TokenSource"]

FingerprintMode = Literal["hash", "prefix"]
RowIds = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_MAX_ROW = 2**32 - 1
_INDEX_MAGIC = b"CMIX"
_TOKENS_MAGIC = b"CMTK"
_FORMAT_VERSION = 1
# magic, format version, mode, pad, count, salt, data checksum; then a header checksum.
_INDEX_HEAD = struct.Struct("<4sHBxQ16s16s")
_INDEX_HEADER_BYTES = 64
_TOKENS_HEAD = struct.Struct("<4sHxxQQ")
_TOKENS_HEADER_BYTES = 64
_MODES: tuple[FingerprintMode, ...] = ("hash", "prefix")


@runtime_checkable
class TokenSource(Protocol):
    """Where full tokens live, keyed by row id, so fingerprint hits can be confirmed."""

    def confirm(self, tokens: Sequence[bytes], row_ids: RowIds) -> Bools:
        """Say, for each pair, whether ``row_ids[i]`` is registered with exactly ``tokens[i]``.

        Args:
            tokens: candidate tokens from a query.
            row_ids: the row each candidate's fingerprint pointed at, aligned with ``tokens``.

        Returns:
            A boolean array aligned with the inputs.
        """
        ...


class MemoryTokens:
    """In-memory row id -> token map: the default source for small indexes and tests."""

    def __init__(self) -> None:
        self._tokens: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def put_many(self, row_ids: RowIds, tokens: Sequence[bytes]) -> None:
        """Record the token of each row (replacing what the row held)."""
        self._tokens.update(zip(row_ids.tolist(), (bytes(t) for t in tokens), strict=True))

    def drop_many(self, row_ids: RowIds) -> None:
        """Forget the given rows; unknown rows are ignored."""
        for r in row_ids.tolist():
            self._tokens.pop(r, None)

    def confirm(self, tokens: Sequence[bytes], row_ids: RowIds) -> Bools:
        """Compare in constant time per pair (see :meth:`TokenSource.confirm`)."""
        get = self._tokens.get
        out = np.zeros(len(tokens), dtype=np.bool_)
        for i, (t, r) in enumerate(zip(tokens, row_ids.tolist(), strict=True)):
            held = get(r)
            out[i] = held is not None and hmac.compare_digest(held, bytes(t))
        return out


class TokenFile:
    """Fixed-width tokens in a memory-mapped file, row ``i`` at offset ``i * width``.

    Suits OPRF/HMAC tokens (all one length); the page cache, not the heap, holds them.
    """

    def __init__(self, matrix: npt.NDArray[np.uint8]) -> None:
        self._matrix = matrix
        self.width = int(matrix.shape[1])

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    @staticmethod
    def write(
        path: str | os.PathLike[str], tokens: Sequence[bytes] | npt.NDArray[np.uint8]
    ) -> None:
        """Write ``tokens[i]`` as the token of row ``i``.

        Args:
            path: the file to create or replace.
            tokens: equal-length tokens, or an ``(n, width)`` ``uint8`` matrix.

        Raises:
            InvalidInput: the tokens are empty or not all of one length.
        """
        if isinstance(tokens, np.ndarray):
            if tokens.ndim != 2 or tokens.dtype != np.uint8 or tokens.shape[1] < 1:
                raise InvalidInput("token matrix must be a 2-D uint8 array")
            matrix = tokens
        else:
            packed, lens = pack_tokens(tokens)
            if lens.size and int(lens.min()) != int(lens.max()):
                raise InvalidInput("a token file holds tokens of one length")
            width = int(lens[0]) if lens.size else 1
            matrix = packed[:, :width]
        head = _TOKENS_HEAD.pack(_TOKENS_MAGIC, _FORMAT_VERSION, matrix.shape[0], matrix.shape[1])
        with open(path, "wb") as f:
            f.write(head.ljust(_TOKENS_HEADER_BYTES, b"\0"))
            f.write(np.ascontiguousarray(matrix).tobytes())

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenFile:
        """Memory-map a file written by :meth:`write`.

        Raises:
            MalformedMessage: the file is not a token file or is truncated.
        """
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(_TOKENS_HEAD.size)
        if len(head) != _TOKENS_HEAD.size:
            raise MalformedMessage("token file too short")
        magic, version, count, width = _TOKENS_HEAD.unpack(head)
        if magic != _TOKENS_MAGIC or version != _FORMAT_VERSION or width < 1:
            raise MalformedMessage("not a contactmatch token file")
        if size != _TOKENS_HEADER_BYTES + count * width:
            raise MalformedMessage("token file length does not match its header")
        if count == 0:
            return cls(np.zeros((0, width), dtype=np.uint8))
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=_TOKENS_HEADER_BYTES)
        # A plain ndarray view of the mapping: np.memmap's subclass hooks cost more than the
        # gather itself on small lookups.
        return cls(mm.view(np.ndarray).reshape(count, width))

    def confirm(self, tokens: Sequence[bytes], row_ids: RowIds) -> Bools:
        """Vectorised comparison of whole rows (see :meth:`TokenSource.confirm`)."""
        out = np.zeros(len(tokens), dtype=np.bool_)
        if not len(tokens):
            return out
        mat, lens = pack_tokens(tokens)
        ok = (lens == self.width) & (row_ids < len(self))
        idx = np.flatnonzero(ok)
        if idx.size:
            held = self._matrix[row_ids[idx].astype(np.intp)]
            # Every byte is compared before reducing, so timing does not depend on where the
            # first difference is.
            out[idx] = (held == mat[idx, : self.width]).all(axis=1)
        return out


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


def _candidates(fps: U64, queries: U64) -> tuple[I64, I64]:
    """Every (query index, position) pair whose fingerprints are equal."""
    n = fps.shape[0]
    if n == 0 or queries.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Sorted needles let searchsorted reuse the previous bound: fewer cold cache lines.
    order = np.argsort(queries)
    left = np.empty(queries.shape[0], dtype=np.int64)
    left[order] = np.searchsorted(fps, queries[order], side="left")
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


class TokenIndex:
    """Token -> row id map over sorted fingerprints; every hit confirmed by a token source."""

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
            merge_fraction: merge the delta once it exceeds this fraction of the base...
            merge_minimum: ...and this many entries.

        Raises:
            InvalidInput: bad salt length or fingerprint mode.
        """
        if fingerprint not in _MODES:
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
        self._fp: U64 = np.zeros(0, dtype=np.uint64)
        self._rows: RowIds = np.zeros(0, dtype=np.uint32)
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
        rows = np.arange(n, dtype=np.uint32) if row_ids is None else _as_rows(row_ids, n)
        if n > _MAX_ROW + 1:
            raise InvalidInput("an index holds at most 2**32 tokens")
        fps = index.fingerprints(tokens)
        # Order among equal fingerprints does not matter (all are walked), so no stable sort.
        order = np.argsort(fps)
        keep = _last_of_each(tokens, fps, order)
        if keep is not None:
            tokens = [tokens[i] for i in np.flatnonzero(keep).tolist()]
            order = order[keep[order]]
        index._fp = fps[order]
        index._rows = rows[order]
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

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._fp.shape[0] - self._tomb.shape[0] + self._dfp.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (base, delta and tombstones)."""
        arrays = (self._fp, self._rows, self._dfp, self._drows, self._tomb)
        return int(sum(a.nbytes for a in arrays))

    @property
    def pending(self) -> int:
        """Changes not yet merged into the base arrays (delta entries plus tombstones)."""
        return int(self._dfp.shape[0] + self._tomb.shape[0])

    def _locate(self, tokens: Sequence[bytes]) -> tuple[npt.NDArray[np.int8], I64, I64]:
        """Where each token is: part (0 absent, 1 base, 2 delta), position, row id (-1)."""
        n = len(tokens)
        part = np.zeros(n, dtype=np.int8)
        where = np.full(n, -1, dtype=np.int64)
        found = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            pack_tokens(tokens)  # still validate the input
            return part, where, found
        queries = self.fingerprints(tokens)
        for code, fps, rows in ((1, self._fp, self._rows), (2, self._dfp, self._drows)):
            qidx, pos = _candidates(fps, queries)
            if code == 1 and self._tomb.size and pos.size:
                slot = np.searchsorted(self._tomb, pos)
                dead = self._tomb[np.minimum(slot, self._tomb.size - 1)] == pos
                qidx, pos = qidx[~dead], pos[~dead]
            if not pos.size:
                continue
            cand_rows = rows[pos]
            ok = self.source.confirm([tokens[i] for i in qidx.tolist()], cand_rows)
            hit = qidx[ok]
            part[hit] = code
            where[hit] = pos[ok]
            found[hit] = cand_rows[ok]
        return part, where, found

    def contains_many(self, tokens: Sequence[bytes]) -> Bools:
        """Whether each token is registered (confirmed, never a false match).

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        present: Bools = self._locate(tokens)[0] != 0
        return present

    def lookup_many(self, tokens: Sequence[bytes]) -> I64:
        """The row id of each token, ``-1`` where it is not registered.

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        return self._locate(tokens)[2]

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
        fps = self.fingerprints(tokens)
        keep = _last_of_each(tokens, fps, np.argsort(fps, kind="stable"))
        if keep is not None:
            tokens = [tokens[i] for i in np.flatnonzero(keep).tolist()]
            fps, rows = fps[keep], rows[keep]
        part, where, found = self._locate(tokens)
        same = (part != 0) & (found == rows.astype(np.int64))
        moved = (part != 0) & ~same
        if moved.any():
            self._drop(part[moved], where[moved], found[moved])
        new = ~same
        if not new.any():
            return
        fps, rows = fps[new], rows[new]
        if self._owned and isinstance(self.source, MemoryTokens):
            self.source.put_many(rows, [tokens[i] for i in np.flatnonzero(new).tolist()])
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
        part, where, found = self._locate(tokens)
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
        limit = max(self.merge_minimum, int(self.merge_fraction * self._fp.shape[0]))
        if self.pending > limit:
            self.compact()

    def compact(self) -> None:
        """Merge the delta and tombstones into the base arrays (one linear pass)."""
        if not self.pending:
            return
        fp, rows = self._fp, self._rows
        if self._tomb.size:
            alive = np.ones(fp.shape[0], dtype=np.bool_)
            alive[self._tomb] = False
            fp, rows = fp[alive], rows[alive]
        slot = np.searchsorted(fp, self._dfp)
        self._fp = np.insert(fp, slot, self._dfp)
        self._rows = np.insert(rows, slot, self._drows)
        self._dfp = np.zeros(0, dtype=np.uint64)
        self._drows = np.zeros(0, dtype=np.uint32)
        self._tomb = np.zeros(0, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the (compacted) index: a 64-byte header, then fingerprints, then row ids.

        The token source is not written: it is the store's, or a :class:`TokenFile`.
        """
        self.compact()
        fp = np.ascontiguousarray(self._fp, dtype="<u8")
        rows = np.ascontiguousarray(self._rows, dtype="<u4")
        digest = blake2b(digest_size=16)
        digest.update(fp.data)
        digest.update(rows.data)
        head = _INDEX_HEAD.pack(
            _INDEX_MAGIC,
            _FORMAT_VERSION,
            _MODES.index(self.mode),
            fp.shape[0],
            self.salt,
            digest.digest(),
        )
        head += blake2b(head, digest_size=_INDEX_HEADER_BYTES - len(head)).digest()
        with open(path, "wb") as f:
            f.write(head)
            f.write(fp.tobytes())
            f.write(rows.tobytes())

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
            path: a file written by :meth:`save`.
            source: where tokens are confirmed (not part of the file).
            mmap: map the arrays read-only instead of reading them into memory.
            verify: also check the data checksum (reads every page).

        Returns:
            The index; updates go to its delta, the mapped file is never written.

        Raises:
            MalformedMessage: the file is not an index, is truncated or fails a checksum.
        """
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(_INDEX_HEADER_BYTES)
        if len(head) != _INDEX_HEADER_BYTES:
            raise MalformedMessage("index file too short")
        body, check = head[: _INDEX_HEAD.size], head[_INDEX_HEAD.size :]
        expect = blake2b(body, digest_size=len(check)).digest()
        if not hmac.compare_digest(check, expect):
            raise MalformedMessage("index header checksum mismatch")
        magic, version, mode, count, salt, data_sum = _INDEX_HEAD.unpack(body)
        if magic != _INDEX_MAGIC or version != _FORMAT_VERSION or mode >= len(_MODES):
            raise MalformedMessage("not a contactmatch index of a known version")
        if size != _INDEX_HEADER_BYTES + 12 * count:
            raise MalformedMessage("index file length does not match its header")
        index = cls(salt=salt, fingerprint=_MODES[mode], source=source)
        if count:
            fp: npt.NDArray[np.generic]
            rows: npt.NDArray[np.generic]
            if mmap:
                fp = np.memmap(path, "<u8", "r", offset=_INDEX_HEADER_BYTES, shape=(count,))
                rows = np.memmap(path, "<u4", "r", offset=_INDEX_HEADER_BYTES + 8 * count)
            else:
                raw = Path(path).read_bytes()
                fp = np.frombuffer(raw, "<u8", count, _INDEX_HEADER_BYTES)
                rows = np.frombuffer(raw, "<u4", count, _INDEX_HEADER_BYTES + 8 * count)
            if verify:
                digest = blake2b(digest_size=16)
                digest.update(np.ascontiguousarray(fp).data)
                digest.update(np.ascontiguousarray(rows).data)
                if not hmac.compare_digest(digest.digest(), data_sum):
                    raise MalformedMessage("index data checksum mismatch")
            index._fp = fp.view(np.ndarray).astype(np.uint64, copy=False)
            index._rows = rows.view(np.ndarray).astype(np.uint32, copy=False)
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
