"""The registered-token index: a bucket directory over 64-bit fingerprints, 32-bit row ids.

At most twelve bytes per registered user: each entry is one ``uint64`` (32 more bits of the
fingerprint's key beside the ``uint32`` row id), and a ``uint32`` directory with fewer slots
than entries says where each bucket of entries starts. The tokens themselves live in a
:class:`TokenSource` (the store, a memory-mapped :class:`TokenFile`, or the in-memory
:class:`MemoryTokens` default). A fingerprint hit is only a candidate: every hit is
confirmed against the full token, so a false match is impossible.

Changes go to a small sorted delta (adds) and a tombstone list (removed base positions) that
are merged into the directory once they pass a threshold. Pure: no I/O except
:meth:`TokenIndex.save` / :meth:`TokenIndex.load` and :class:`TokenFile`.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

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
from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = [
    "FingerprintMode",
    "MemoryTokens",
    "PackedTokenSource",
    "TokenFile",
    "TokenIndex",
    "TokenSource",
]

FingerprintMode = Literal["hash", "prefix"]
RowIds = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_MAX_ROW = 2**32 - 1
_INDEX_MAGIC = b"CMIX"
_TOKENS_MAGIC = b"CMTK"
_FORMAT_VERSION = 2
# magic, format version, mode, key bits, directory bits, pad, count, salt, data checksum;
# then a header checksum filling the 64 bytes.
_INDEX_HEAD = struct.Struct("<4sHBBB3xQ16s16s")
_INDEX_HEAD_V1 = struct.Struct("<4sHBxQ16s16s")  # format 1: no key or directory bits
_TOKENS_VERSION = 1
_INDEX_HEADER_BYTES = 64
_TOKENS_HEAD = struct.Struct("<4sHxxQQ")
_TOKENS_HEADER_BYTES = 64
_MODES: tuple[FingerprintMode, ...] = ("hash", "prefix")
_REM_BITS = 32  # key bits kept in an entry beside the directory's bits
_S32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)


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


@runtime_checkable
class PackedTokenSource(TokenSource, Protocol):
    """A :class:`TokenSource` that also confirms tokens packed into a matrix, without objects.

    The index packs every query batch once (to fingerprint it) and hands the candidates' rows
    of that matrix here, so a vectorised source never rebuilds Python ``bytes``.
    """

    def confirm_packed(self, matrix: npt.NDArray[np.uint8], lens: I64, row_ids: RowIds) -> Bools:
        """Like :meth:`TokenSource.confirm`, for tokens given as zero-padded rows.

        Args:
            matrix: ``(k, width)`` ``uint8``, C-contiguous, ``width`` a multiple of 8 and at
                least every token's length; bytes past a token's length are zero.
            lens: the length of every token.
            row_ids: aligned with the rows of ``matrix``.
        """
        ...


_ALL_TRUE = {1: (np.uint8, 1), 2: (np.uint16, 0x0101), 4: (np.uint32, 0x01010101)}
_ALL_TRUE[8] = (np.uint64, 0x0101010101010101)


def _words_equal(a: U64, b: U64) -> Bools:
    """Row-wise equality of two ``(k, w)`` word matrices, every word always compared.

    No early exit, so timing does not depend on where the first difference is. For the
    usual widths (8-64 byte tokens) the ``w`` booleans of a row are read as one integer,
    which beats ``.all(axis=1)`` on short rows.
    """
    eq = a == b
    w = eq.shape[1]
    if w in _ALL_TRUE:
        dtype, full = _ALL_TRUE[w]
        same: Bools = eq.view(dtype).reshape(-1) == full
        return same
    out: Bools = eq.all(axis=1)
    return out


def _same_rows(
    held: npt.NDArray[np.uint8],
    held_lens: npt.NDArray[np.signedinteger[Any]],
    matrix: npt.NDArray[np.uint8],
    lens: I64,
) -> Bools:
    """Row-wise equality of two zero-padded token matrices (widths multiples of 8).

    Zero padding makes a token equal to another exactly when the lengths and the first
    ``min(widths)`` bytes agree (bytes past the narrower width are zero on both sides or the
    lengths differ).
    """
    cols = min(held.shape[1], matrix.shape[1]) // 8
    a = held.view("<u8")[:, :cols]
    b = np.ascontiguousarray(matrix).view("<u8")[:, :cols]
    same = _words_equal(a, b)
    same &= held_lens == lens
    return same


class MemoryTokens:
    """In-memory row id -> token map: the default source for small indexes and tests.

    Rows are kept in a zero-padded matrix indexed by row id (plus a length per row), so a
    batch is confirmed with one gather and one row-wise comparison. Very sparse row ids or
    very long tokens (which would make that matrix wasteful) switch it to a plain dict.
    """

    _DENSE_SLACK = 4  # the matrix may hold up to this many slots per stored token...
    _DENSE_FLOOR = 4096  # ...or this many, whichever is more
    _DENSE_MAX_WIDTH = 256

    def __init__(self) -> None:
        self._mat = np.zeros((0, 8), dtype=np.uint8)
        self._lens = np.zeros(0, dtype=np.int32)  # 0: the row holds no token
        self._count = 0
        self._dict: dict[int, bytes] | None = None

    def __len__(self) -> int:
        return self._count if self._dict is None else len(self._dict)

    def put_many(self, row_ids: RowIds, tokens: Sequence[bytes]) -> None:
        """Record the token of each row (replacing what the row held)."""
        rows = np.asarray(row_ids).astype(np.int64)
        if rows.shape != (len(tokens),):
            raise InvalidInput("row_ids must be one id per token")
        if not rows.size:
            return
        table = self._dict
        if table is None:
            mat, lens = pack_tokens(tokens)
            top = int(rows.max()) + 1
            slots = max(self._DENSE_FLOOR, self._DENSE_SLACK * (self._count + rows.size))
            if top <= slots and mat.shape[1] <= self._DENSE_MAX_WIDTH:
                # The last occurrence of a row wins, as in a dict update.
                _, first = np.unique(rows[::-1], return_index=True)
                pick = rows.size - 1 - first
                self._put_dense(rows[pick], mat[pick], lens[pick], top)
                return
            table = self._to_dict()
        table.update(zip(rows.tolist(), (bytes(t) for t in tokens), strict=True))

    def _put_dense(self, rows: I64, mat: npt.NDArray[np.uint8], lens: I64, top: int) -> None:
        cap, width = self._mat.shape
        if top > cap or mat.shape[1] > width:
            grown = np.zeros((max(top, 2 * cap), max(width, mat.shape[1])), dtype=np.uint8)
            grown[:cap, :width] = self._mat
            glens = np.zeros(grown.shape[0], dtype=np.int32)
            glens[:cap] = self._lens
            self._mat, self._lens = grown, glens
        self._count += int((self._lens[rows] == 0).sum())
        self._mat[rows] = 0
        self._mat[rows, : mat.shape[1]] = mat
        self._lens[rows] = lens

    def _to_dict(self) -> dict[int, bytes]:
        live = np.flatnonzero(self._lens)
        table = {
            r: self._mat[r, :n].tobytes()
            for r, n in zip(live.tolist(), self._lens[live].tolist(), strict=True)
        }
        self._dict = table
        self._mat = np.zeros((0, 8), dtype=np.uint8)
        self._lens = np.zeros(0, dtype=np.int32)
        self._count = 0
        return table

    def drop_many(self, row_ids: RowIds) -> None:
        """Forget the given rows; unknown rows are ignored."""
        if self._dict is not None:
            for r in np.asarray(row_ids).tolist():
                self._dict.pop(r, None)
            return
        rows = np.unique(np.asarray(row_ids).astype(np.int64))
        rows = rows[(rows >= 0) & (rows < self._lens.shape[0])]
        self._count -= int((self._lens[rows] != 0).sum())
        self._lens[rows] = 0
        self._mat[rows] = 0

    def confirm(self, tokens: Sequence[bytes], row_ids: RowIds) -> Bools:
        """Compare in constant time per pair (see :meth:`TokenSource.confirm`)."""
        if self._dict is None:
            mat, lens = pack_tokens(tokens)
            return self.confirm_packed(mat, lens, row_ids)
        get = self._dict.get
        out = np.zeros(len(tokens), dtype=np.bool_)
        for i, (t, r) in enumerate(zip(tokens, row_ids.tolist(), strict=True)):
            held = get(r)
            out[i] = held is not None and hmac.compare_digest(held, bytes(t))
        return out

    def confirm_packed(self, matrix: npt.NDArray[np.uint8], lens: I64, row_ids: RowIds) -> Bools:
        """Vectorised comparison of whole rows (see :class:`PackedTokenSource`)."""
        if self._dict is not None:
            tokens = [row[:n].tobytes() for row, n in zip(matrix, lens.tolist(), strict=True)]
            return self.confirm(tokens, row_ids)
        rows = row_ids.astype(np.intp)
        if rows.size and int(rows.max()) >= self._lens.shape[0]:
            inside = rows < self._lens.shape[0]
            out = np.zeros(rows.shape[0], dtype=np.bool_)
            out[inside] = self.confirm_packed(matrix[inside], lens[inside], row_ids[inside])
            return out
        return _same_rows(self._mat.take(rows, axis=0), self._lens.take(rows), matrix, lens)


class TokenFile:
    """Fixed-width tokens in a memory-mapped file, row ``i`` at offset ``i * width``.

    Suits OPRF/HMAC tokens (all one length); the page cache, not the heap, holds them.
    """

    def __init__(self, matrix: npt.NDArray[np.uint8]) -> None:
        self._matrix = matrix
        self.width = int(matrix.shape[1])
        # Whole-word comparison when rows are 8-byte multiples (32 B HMAC, 64 B OPRF).
        aligned = self.width % 8 == 0 and matrix.flags.c_contiguous
        self._words = matrix.view("<u8") if aligned else None

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
        head = _TOKENS_HEAD.pack(_TOKENS_MAGIC, _TOKENS_VERSION, matrix.shape[0], matrix.shape[1])
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
        if magic != _TOKENS_MAGIC or version != _TOKENS_VERSION or width < 1:
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
        mat, lens = pack_tokens(tokens)
        return self.confirm_packed(mat, lens, row_ids)

    def confirm_packed(self, matrix: npt.NDArray[np.uint8], lens: I64, row_ids: RowIds) -> Bools:
        """Vectorised comparison of whole rows (see :class:`PackedTokenSource`)."""
        k = lens.shape[0]
        width = self.width
        if not k or matrix.shape[1] < width:
            # Every query token is shorter than the file's tokens: none can match.
            return np.zeros(k, dtype=np.bool_)
        rows = row_ids.astype(np.intp)
        if int(lens.min()) == int(lens.max()) == width and int(rows.max()) < len(self):
            # The usual batch: every candidate has the file's width and a row inside it.
            if self._words is not None:
                query = np.ascontiguousarray(matrix).view("<u8")[:, : width // 8]
                return _words_equal(self._words.take(rows, axis=0), query)
            held = self._matrix.take(rows, axis=0)
            every: Bools = (held == matrix[:, :width]).all(axis=1)
            return every
        out = np.zeros(k, dtype=np.bool_)
        idx = np.flatnonzero((lens == width) & (rows < len(self)))
        if idx.size:
            out[idx] = self.confirm_packed(matrix.take(idx, axis=0), lens[idx], row_ids[idx])
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


def _dir_bits_for(n: int) -> int:
    """Directory bits: the largest d with ``2**d < n``, so offsets cost < 4 bytes per entry.

    Buckets then hold 1-2 entries on average (Poisson); a lookup reads all of its bucket.
    """
    return max(0, (n - 1).bit_length() - 1) if n > 1 else 0


class _Base:
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
        self._rem_mask = None if rem_bits == _REM_BITS else np.uint64((1 << rem_bits) - 1)

    @classmethod
    def empty(cls) -> _Base:
        return cls(np.zeros(2, dtype=np.uint32), np.zeros(0, dtype=np.uint64), 64, 0)

    @classmethod
    def from_sorted(cls, keys: U64, rows: RowIds, key_bits: int) -> _Base:
        """Lay out entries whose ``key_bits``-bit keys are sorted (ascending)."""
        n = keys.shape[0]
        d = _dir_bits_for(n)
        if key_bits - d > _REM_BITS:
            # Keep what fits: d directory bits + 32 remainder bits. Bits once dropped are gone
            # (only a rebuild from the tokens restores them); that only costs false candidates,
            # n / 2**key_bits per query, never a false match.
            keys = keys >> np.uint64(key_bits - d - _REM_BITS)
            key_bits = d + _REM_BITS
        shift = np.uint64(key_bits - d)
        offsets = np.zeros((1 << d) + 1, dtype=np.uint32)
        if n:
            counts = np.bincount((keys >> shift).astype(np.intp), minlength=1 << d)
            np.cumsum(counts, out=offsets[1:])
        entries = keys & np.uint64((1 << (key_bits - d)) - 1)
        entries |= rows.astype(np.uint64) << _S32
        return cls(offsets, entries, key_bits, d)

    def merged(self, tomb: I64, dkeys: U64, drows: RowIds) -> _Base | None:
        """This directory without the entries at ``tomb`` and with sorted ``dkeys`` added.

        The common merge keeps the directory's bits (the entry count stays between the same
        powers of two): then entries are deleted and inserted in place and the offsets are
        shifted, a few linear passes, with no key rebuilt and no sort. Returns None when the
        directory must change (the caller lays everything out anew).
        """
        n = self.entries.shape[0]
        d, key_bits = self.dir_bits, self.key_bits
        rem_bits = key_bits - d
        if not n or rem_bits > _REM_BITS or _dir_bits_for(n - tomb.size + dkeys.size) != d:
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
        return _Base(offsets, entries, key_bits, d)

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
        self._base = _Base.empty()
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
        index._base = _Base.from_sorted(fps[order], rows[order], 64)
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
            dq, dpos = _candidates(self._dfp, batch.fps)
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
        self._base = _Base.from_sorted(keys, rows, base.key_bits)
        self._dfp = np.zeros(0, dtype=np.uint64)
        self._drows = np.zeros(0, dtype=np.uint32)
        self._tomb = np.zeros(0, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the (compacted) index: a 64-byte header, the directory, then the entries.

        The token source is not written: it is the store's, or a :class:`TokenFile`.
        """
        self.compact()
        base = self._base
        offsets = np.ascontiguousarray(base.offsets, dtype="<u4")
        entries = np.ascontiguousarray(base.entries, dtype="<u8")
        digest = blake2b(digest_size=16)
        digest.update(offsets.data)
        digest.update(entries.data)
        head = _INDEX_HEAD.pack(
            _INDEX_MAGIC,
            _FORMAT_VERSION,
            _MODES.index(self.mode),
            base.key_bits,
            base.dir_bits,
            entries.shape[0],
            self.salt,
            digest.digest(),
        )
        head += blake2b(head, digest_size=_INDEX_HEADER_BYTES - len(head)).digest()
        with open(path, "wb") as f:
            f.write(head)
            f.write(offsets.tobytes())
            f.write(bytes(_pad8(offsets.nbytes)))
            f.write(entries.tobytes())

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
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(_INDEX_HEADER_BYTES)
        if len(head) != _INDEX_HEADER_BYTES:
            raise MalformedMessage("index file too short")
        magic, version = struct.unpack_from("<4sH", head)
        if magic != _INDEX_MAGIC or version not in (1, _FORMAT_VERSION):
            raise MalformedMessage("not a contactmatch index of a known version")
        layout = _INDEX_HEAD_V1 if version == 1 else _INDEX_HEAD
        body, check = head[: layout.size], head[layout.size :]
        expect = blake2b(body, digest_size=len(check)).digest()
        if not hmac.compare_digest(check, expect):
            raise MalformedMessage("index header checksum mismatch")
        if version == 1:
            return cls._load_v1(path, body, size, source=source, verify=verify)
        _, _, mode, key_bits, d, count, salt, data_sum = _INDEX_HEAD.unpack(body)
        # An empty directory keeps all 64 key bits (nothing has been cut yet).
        fits = key_bits - d <= _REM_BITS or count == 0
        if mode >= len(_MODES) or not (d <= 31 and d <= key_bits <= 64 and fits):
            raise MalformedMessage("not a contactmatch index of a known version")
        n_off = (1 << d) + 1
        at = _INDEX_HEADER_BYTES + 4 * n_off + _pad8(4 * n_off)
        if size != at + 8 * count:
            raise MalformedMessage("index file length does not match its header")
        offsets: npt.NDArray[np.generic]
        entries: npt.NDArray[np.generic]
        if mmap:
            offsets = np.memmap(path, "<u4", "r", offset=_INDEX_HEADER_BYTES, shape=(n_off,))
            entries = (
                np.memmap(path, "<u8", "r", offset=at, shape=(count,))
                if count
                else np.zeros(0, dtype="<u8")
            )
        else:
            raw = Path(path).read_bytes()
            offsets = np.frombuffer(raw, "<u4", n_off, _INDEX_HEADER_BYTES)
            entries = np.frombuffer(raw, "<u8", count, at)
        if int(offsets[0]) != 0 or int(offsets[-1]) != count:
            raise MalformedMessage("index directory does not match its header")
        if verify:
            digest = blake2b(digest_size=16)
            digest.update(np.ascontiguousarray(offsets).data)
            digest.update(np.ascontiguousarray(entries).data)
            if not hmac.compare_digest(digest.digest(), data_sum):
                raise MalformedMessage("index data checksum mismatch")
        index = cls(salt=salt, fingerprint=_MODES[mode], source=source)
        # Plain ndarray views of the mapping: np.memmap's subclass hooks cost more than the
        # gathers themselves on small lookups.
        index._base = _Base(
            offsets.view(np.ndarray).astype(np.uint32, copy=False),
            entries.view(np.ndarray).astype(np.uint64, copy=False),
            key_bits,
            d,
        )
        return index

    @classmethod
    def _load_v1(
        cls,
        path: str | os.PathLike[str],
        body: bytes,
        size: int,
        *,
        source: TokenSource,
        verify: bool,
    ) -> TokenIndex:
        """Read a format-1 file (sorted ``uint64`` fingerprints, then ``uint32`` row ids)."""
        _, _, mode, count, salt, data_sum = _INDEX_HEAD_V1.unpack(body)
        if mode >= len(_MODES):
            raise MalformedMessage("not a contactmatch index of a known version")
        if size != _INDEX_HEADER_BYTES + 12 * count:
            raise MalformedMessage("index file length does not match its header")
        raw = Path(path).read_bytes()
        fp = np.frombuffer(raw, "<u8", count, _INDEX_HEADER_BYTES)
        rows = np.frombuffer(raw, "<u4", count, _INDEX_HEADER_BYTES + 8 * count)
        if verify:
            digest = blake2b(digest_size=16)
            digest.update(fp.data)
            digest.update(rows.data)
            if not hmac.compare_digest(digest.digest(), data_sum):
                raise MalformedMessage("index data checksum mismatch")
        index = cls(salt=salt, fingerprint=_MODES[mode], source=source)
        keys = fp.astype(np.uint64)
        if count > 1 and bool((keys[1:] < keys[:-1]).any()):
            raise MalformedMessage("index fingerprints are not sorted")
        index._base = _Base.from_sorted(keys, rows.astype(np.uint32), 64)
        return index


def _pad8(nbytes: int) -> int:
    return -nbytes % 8


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
