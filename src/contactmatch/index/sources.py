"""Where an index confirms its hits: the :class:`TokenSource` protocol and two sources.

A fingerprint hit is only a candidate; the source holds the full tokens by row id and says
whether each candidate is really registered. :class:`MemoryTokens` is the in-memory default;
:class:`TokenFile` maps fixed-width tokens from a file, so the page cache holds them. Every
comparison is constant-time per pair (no early exit on the first differing byte).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from contactmatch._hashing import pack_tokens
from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = ["MemoryTokens", "PackedTokenSource", "TokenFile", "TokenSource"]

RowIds = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_TOKENS_MAGIC: Final = b"CMTK"
_TOKENS_VERSION: Final = 1
_TOKENS_HEAD = struct.Struct("<4sHxxQQ")
_TOKENS_HEADER_BYTES: Final = 64


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
