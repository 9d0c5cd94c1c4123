"""Golomb-Rice coding of a sorted multiset of hash values, vectorised with numpy.

The gaps between sorted values are split into a quotient (``gap >> k``, unary) and a ``k``-bit
remainder. The two parts are stored as separate streams: the unary stream as bits, the
remainders as ``k // 8`` whole byte columns plus ``k % 8`` packed bits. The size is exactly
that of interleaved Rice codes, but every step is a whole-array numpy operation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from contactmatch.errors import MalformedMessage

__all__ = ["MAX_K", "choose_k", "decode", "encode"]

U64 = npt.NDArray[np.uint64]
MAX_K = 63


def choose_k(values: U64) -> int:
    """The Rice parameter giving the smallest encoding of these sorted values.

    Near the optimum the cost is ``n*(k+1) + sum(gap >> k)`` bits, so the few candidates
    around ``log2(mean gap * ln 2)`` are simply measured on the data.
    """
    n = values.shape[0]
    if n == 0:
        return 0
    gaps = np.diff(values, prepend=np.uint64(0))
    mean = float(values[-1]) / n + 1.0
    guess = int(np.floor(np.log2(max(mean * np.log(2), 1.0))))
    best_k, best_bits = 0, -1
    for k in range(max(0, guess - 2), min(MAX_K, guess + 2) + 1):
        bits = n * (k + 1) + int((gaps >> np.uint64(k)).sum(dtype=np.uint64))
        if best_bits < 0 or bits < best_bits:
            best_k, best_bits = k, bits
    return best_k


def encode(values: U64, k: int) -> tuple[bytes, bytes, bytes]:
    """Rice-code sorted values with parameter ``k``.

    Returns:
        The unary stream, the remainder byte columns and the packed remainder bits.
    """
    n = values.shape[0]
    if n == 0:
        return b"", b"", b""
    gaps = np.diff(values, prepend=np.uint64(0))
    kk = np.uint64(k)
    quot = (gaps >> kk).astype(np.int64)
    ones = np.cumsum(quot + 1) - 1
    unary = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    unary[ones] = 1
    unary_b = np.packbits(unary, bitorder="little").tobytes()
    rem = gaps & np.uint64((1 << k) - 1)
    kb, kr = divmod(k, 8)
    cols = rem.astype("<u8").view(np.uint8).reshape(n, 8)[:, :kb]
    cols_b = np.ascontiguousarray(cols).tobytes()
    bits_b = b""
    if kr:
        top = (rem >> np.uint64(8 * kb)).astype(np.uint8).reshape(n, 1)
        planes = np.unpackbits(top, axis=1, bitorder="little")[:, :kr]
        bits_b = np.packbits(planes.reshape(-1), bitorder="little").tobytes()
    return unary_b, cols_b, bits_b


def decode(n: int, bound: int, k: int, *, unary_b: bytes, cols_b: bytes, bits_b: bytes) -> U64:
    """Decode ``n`` sorted values below ``bound`` coded by :func:`encode`.

    Raises:
        MalformedMessage: the streams are inconsistent with ``n``, ``k`` or ``bound``.
    """
    kb, kr = divmod(k, 8)
    if len(cols_b) != n * kb or len(bits_b) != -(-(n * kr) // 8):
        raise MalformedMessage("filter remainder stream has the wrong length")
    if n == 0:
        if unary_b:
            raise MalformedMessage("filter has data but no entries")
        return np.zeros(0, dtype=np.uint64)
    # Cheap bound before unpacking: every entry needs one set bit in the unary stream.
    if n > 8 * len(unary_b):
        raise MalformedMessage("filter unary stream is too short")
    unary = np.unpackbits(np.frombuffer(unary_b, dtype=np.uint8), bitorder="little")
    ones = np.flatnonzero(unary)
    if ones.shape[0] != n or -(-(int(ones[-1]) + 1) // 8) != len(unary_b):
        raise MalformedMessage("filter unary stream does not match its entry count")
    quot = np.diff(ones, prepend=-1) - 1
    if int(quot.max()) > ((bound - 1) >> k):
        raise MalformedMessage("filter gap out of range")
    rem = np.zeros(n, dtype=np.uint64)
    if kb:
        cols = np.zeros((n, 8), dtype=np.uint8)
        cols[:, :kb] = np.frombuffer(cols_b, dtype=np.uint8).reshape(n, kb)
        rem |= cols.view("<u8").reshape(n).astype(np.uint64)
    if kr:
        planes = np.unpackbits(
            np.frombuffer(bits_b, dtype=np.uint8), count=n * kr, bitorder="little"
        )
        top = np.packbits(planes.reshape(n, kr), axis=1, bitorder="little").reshape(n)
        rem |= top.astype(np.uint64) << np.uint64(8 * kb)
        if -(-(n * kr) // 8) * 8 > n * kr:
            pad = np.unpackbits(np.frombuffer(bits_b[-1:], dtype=np.uint8), bitorder="little")
            if pad[(n * kr) % 8 :].any():
                raise MalformedMessage("filter padding bits are not zero")
    gaps = (quot.astype(np.uint64) << np.uint64(k)) | rem
    values = np.cumsum(gaps, dtype=np.uint64)
    # A wrap-around in the running sum shows up as a decrease; the last value bounds the rest.
    if (n > 1 and bool((values[1:] < values[:-1]).any())) or int(values[-1]) >= bound:
        raise MalformedMessage("filter value out of range")
    return values
