"""Vectorised token packing and a salted 64-bit hash shared by the index and the filters.

Private: the public modules decide what the hash is used for (fingerprints, filter values).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import countOf

import numpy as np
import numpy.typing as npt

from contactmatch.errors import InvalidInput

__all__ = [
    "SALT_BYTES",
    "hash64",
    "hash64_packed",
    "pack_tokens",
    "prefix64",
    "prefix64_packed",
    "scale",
]

SALT_BYTES = 16

U64 = npt.NDArray[np.uint64]

# Odd multipliers from splitmix64 / murmur3's fmix64: well-studied avalanche constants.
_M_WORD = np.uint64(0x9E3779B97F4A7C15)
_M_LEN = np.uint64(0xD6E8FEB86659FD93)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_S29 = np.uint64(29)


def pack_tokens(tokens: Sequence[bytes]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Pack tokens into a zero-padded ``(n, width)`` byte matrix, width a multiple of 8.

    Args:
        tokens: byte strings, each at least one byte long.

    Returns:
        The matrix (C-contiguous, so ``matrix.view("<u8")`` gives the 8-byte words) and the
        length of every token.

    Raises:
        InvalidInput: a token is not bytes-like or is empty.
    """
    n = len(tokens)
    if n == 0:
        return np.zeros((0, 8), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    try:
        first = len(tokens[0])
        # The common batch has one width (OPRF, HMAC): counting that width is one C pass
        # with no array built, about half the cost of collecting every length.
        if countOf(map(len, tokens), first) == n:
            lens = np.full(n, first, dtype=np.int64)
        else:
            lens = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    except TypeError as exc:
        raise InvalidInput("tokens must be bytes") from exc
    lo, hi = int(lens.min()), int(lens.max())
    if lo < 1:
        raise InvalidInput("tokens must be at least one byte long")
    width = -(-hi // 8) * 8
    try:
        # One width (OPRF, HMAC): join as is and pad columns in one copy if needed, rather
        # than one ljust per token.
        joined = b"".join(tokens if lo == hi else [bytes(t).ljust(width, b"\0") for t in tokens])
    except TypeError as exc:
        raise InvalidInput("tokens must be bytes") from exc
    if isinstance(tokens[0], str) or len(joined) != n * (hi if lo == hi else width):
        raise InvalidInput("tokens must be bytes")
    if lo == hi != width:
        mat = np.zeros((n, width), dtype=np.uint8)
        mat[:, :hi] = np.frombuffer(joined, dtype=np.uint8).reshape(n, hi)
        return mat, lens
    return np.frombuffer(joined, dtype=np.uint8).reshape(n, width), lens


def _fmix(h: U64) -> U64:
    h ^= h >> _S33
    h *= _F1
    h ^= h >> _S33
    h *= _F2
    h ^= h >> _S33
    return h


def hash64(tokens: Sequence[bytes], salt: bytes) -> U64:
    """Salted 64-bit hash of every token (all bytes and the length), vectorised.

    Not a cryptographic PRF: it only routes tokens (index fingerprints, filter positions). The
    salt makes the value differ from the token's own bytes and puts the starting state out of
    reach of anyone without it, so colliding inputs cannot be chosen in advance.

    Args:
        tokens: byte strings of any length >= 1.
        salt: ``SALT_BYTES`` bytes.

    Returns:
        One ``uint64`` per token.

    Raises:
        InvalidInput: a token is empty or not bytes, or the salt has the wrong length.
    """
    if len(salt) != SALT_BYTES:
        raise InvalidInput(f"salt must be {SALT_BYTES} bytes")
    mat, lens = pack_tokens(tokens)
    return hash64_packed(mat, lens, salt)


def hash64_packed(mat: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64], salt: bytes) -> U64:
    """:func:`hash64` of tokens already packed by :func:`pack_tokens`."""
    words = mat.view("<u8").astype(np.uint64, copy=False)
    s0, s1 = np.frombuffer(salt, dtype="<u8").astype(np.uint64)
    h = lens.astype(np.uint64) * _M_LEN
    h ^= s0
    nwords = (lens + 7) // 8
    uniform = bool((nwords == words.shape[1]).all())
    step = np.empty_like(h)
    tmp = np.empty_like(h)
    for j in range(words.shape[1]):
        # In place: a 1,000-token batch costs numpy call overheads, not arithmetic.
        np.bitwise_xor(h, words[:, j], out=step)
        step *= _M_WORD
        np.right_shift(step, _S29, out=tmp)
        step ^= tmp
        step += s1
        # Words past a token's own length must not change its hash, so the value of a token
        # never depends on the longest token in the same batch.
        if uniform:
            h, step = step, h
        else:
            h = np.where(nwords > j, step, h)
    h ^= h >> _S32
    return _fmix(h)


def prefix64(tokens: Sequence[bytes]) -> U64:
    """The first eight bytes of every token as a little-endian ``uint64``.

    Args:
        tokens: byte strings of at least 8 bytes.

    Returns:
        One ``uint64`` per token.

    Raises:
        InvalidInput: a token is shorter than 8 bytes or is not bytes.
    """
    mat, lens = pack_tokens(tokens)
    return prefix64_packed(mat, lens)


def prefix64_packed(mat: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64]) -> U64:
    """:func:`prefix64` of tokens already packed by :func:`pack_tokens`."""
    if lens.size and int(lens.min()) < 8:
        raise InvalidInput("prefix fingerprints need tokens of at least 8 bytes")
    # Column 0 of the word view: a strided view, no copy of the tokens.
    col: U64 = mat.view("<u8")[:, 0].astype(np.uint64, copy=False)
    return col


_M32 = np.uint64(0xFFFFFFFF)


def scale(h: U64, bound: int) -> U64:
    """Map uniform 64-bit values onto ``[0, bound)``: the high half of ``h * bound``.

    Numpy has no 128-bit product, so it is assembled from 32-bit halves (Lemire's reduction,
    without a division and without the bias of ``h % bound``).
    """
    b = np.uint64(bound)
    b_lo, b_hi = b & _M32, b >> _S32
    a_lo, a_hi = h & _M32, h >> _S32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    mid = (p0 >> _S32) + (p1 & _M32) + (p2 & _M32)
    out = a_hi * b_hi
    out += p1 >> _S32
    out += p2 >> _S32
    out += mid >> _S32
    return out
