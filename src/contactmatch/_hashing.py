"""Vectorised token packing and a salted 64-bit hash shared by the index and the filters.

Private: the public modules decide what the hash is used for (fingerprints, filter values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from contactmatch.errors import InvalidInput

__all__ = ["SALT_BYTES", "hash64", "pack_tokens", "prefix64", "scale"]

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
        The matrix and the length of every token.

    Raises:
        InvalidInput: a token is not bytes-like or is empty.
    """
    n = len(tokens)
    try:
        lens = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    except TypeError as exc:
        raise InvalidInput("tokens must be bytes") from exc
    if n == 0:
        return np.zeros((0, 8), dtype=np.uint8), lens
    lo, hi = int(lens.min()), int(lens.max())
    if lo < 1:
        raise InvalidInput("tokens must be at least one byte long")
    width = -(-hi // 8) * 8
    try:
        if lo == hi == width:
            joined = b"".join(tokens)
        else:
            joined = b"".join([bytes(t).ljust(width, b"\0") for t in tokens])
    except TypeError as exc:
        raise InvalidInput("tokens must be bytes") from exc
    if isinstance(tokens[0], str) or len(joined) != n * width:
        raise InvalidInput("tokens must be bytes")
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
    words = mat.view("<u8").astype(np.uint64, copy=False)
    s0, s1 = np.frombuffer(salt, dtype="<u8").astype(np.uint64)
    h = lens.astype(np.uint64) * _M_LEN
    h ^= s0
    nwords = (lens + 7) // 8
    uniform = bool((nwords == words.shape[1]).all())
    for j in range(words.shape[1]):
        step = h ^ words[:, j]
        step *= _M_WORD
        step ^= step >> _S29
        step += s1
        # Words past a token's own length must not change its hash, so the value of a token
        # never depends on the longest token in the same batch.
        h = step if uniform else np.where(nwords > j, step, h)
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
    if lens.size and int(lens.min()) < 8:
        raise InvalidInput("prefix fingerprints need tokens of at least 8 bytes")
    return np.ascontiguousarray(mat[:, :8]).view("<u8").reshape(-1).astype(np.uint64, copy=False)


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
