"""ristretto255 scalars and elements over the libsodium that ``rbcl`` bundles.

Elements and scalars are 32-byte ``bytes`` in their canonical RFC 9496 encodings. Anything that
arrives from a peer is checked here and rejected with the opaque
:class:`~contactmatch.errors.VerificationFailed`: non-canonical or invalid encodings, the
identity element, wrong lengths and types.

Why direct ctypes calls instead of rbcl's wrappers: rbcl's Python wrappers allocate a ctypes
buffer and run type checks on every call, and its ``crypto_scalarmult_ristretto255`` raises a
bare ``RuntimeError``. The hot loops here (one scalar multiplication per contact) bind the same
libsodium symbols with explicit ``argtypes`` (so pointers are never truncated to ``int``),
write into one preallocated buffer per batch and read libsodium's return code, which already
tells an invalid encoding or the identity apart from a good element: decoding *is* the
multiplication's first step, so validation costs nothing extra. ``CFUNCTYPE`` foreign
functions release the GIL, which is what lets a thread pool use every core.

One gap is closed here: the libsodium rbcl bundles (1.0.18) ignores the most significant bit
of an encoding, so ``x`` and ``x | 2^255`` decode to the same element. RFC 9496 section 4.3.1
requires rejecting the latter (it is not a canonical field element), so every untrusted
element is also checked for that bit (one C-speed pass over a batch).
"""

from __future__ import annotations

import ctypes
import hmac
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import rbcl

from contactmatch.errors import InvalidInput, VerificationFailed

__all__ = [
    "ELEMENT_SIZE",
    "IDENTITY",
    "ORDER",
    "SCALAR_SIZE",
    "add",
    "check_element",
    "check_elements",
    "check_scalar",
    "element_from_uniform_bytes",
    "elements_from_uniform_bytes",
    "is_canonical_scalar",
    "is_valid_element",
    "random_scalar",
    "random_scalars",
    "scalar_add",
    "scalar_invert",
    "scalar_invert_many",
    "scalar_mul",
    "scalar_mult",
    "scalar_mult_base",
    "scalar_mult_each",
    "scalar_mult_many",
    "scalar_mult_unchecked",
    "scalar_reduce",
    "scalar_sub",
    "sum_elements",
]

ELEMENT_SIZE = 32
SCALAR_SIZE = 32
#: Order of the ristretto255 group (RFC 9496 section 4.1).
ORDER = 2**252 + 27742317777372353535851937790883648493
#: Canonical encoding of the identity element: all zeros.
IDENTITY = bytes(ELEMENT_SIZE)
_ZERO_SCALAR = bytes(SCALAR_SIZE)

_lib = rbcl._sodium  # the libsodium rbcl loaded and initialised (sodium_init) at import
_c_int = ctypes.c_int
_ptr = ctypes.c_void_p  # output buffers: a ctypes buffer or an address (int)
_in = ctypes.c_char_p  # inputs: immutable bytes, passed without a copy


def _bind(name: str, *args: Any) -> Any:  # ctypes prototypes are untyped in typeshed
    # A fresh function object per symbol: rbcl's own objects keep their (absent) argtypes.
    proto = ctypes.CFUNCTYPE(_c_int, *args)
    return proto((name, _lib))


_scalarmult = _bind("crypto_scalarmult_ristretto255", _ptr, _in, _in)
_scalarmult_base = _bind("crypto_scalarmult_ristretto255_base", _ptr, _in)
_is_valid_point = _bind("crypto_core_ristretto255_is_valid_point", _in)
_from_hash = _bind("crypto_core_ristretto255_from_hash", _ptr, _in)
_add = _bind("crypto_core_ristretto255_add", _ptr, _in, _in)
_scalar_reduce = _bind("crypto_core_ristretto255_scalar_reduce", _ptr, _in)
_scalar_invert = _bind("crypto_core_ristretto255_scalar_invert", _ptr, _in)
_scalar_add = _bind("crypto_core_ristretto255_scalar_add", _ptr, _in, _in)
_scalar_sub = _bind("crypto_core_ristretto255_scalar_sub", _ptr, _in, _in)
_scalar_mul = _bind("crypto_core_ristretto255_scalar_mul", _ptr, _in, _in)
_scalar_random = _bind("crypto_core_ristretto255_scalar_random", _ptr)
_scalar_reduce_at = _bind("crypto_core_ristretto255_scalar_reduce", _ptr, _ptr)
_from_hash_at = _bind("crypto_core_ristretto255_from_hash", _ptr, _ptr)
_scalar_mul_at = _bind("crypto_core_ristretto255_scalar_mul", _ptr, _ptr, _ptr)
_scalar_invert_at = _bind("crypto_core_ristretto255_scalar_invert", _ptr, _ptr)
_add_at = _bind("crypto_core_ristretto255_add", _ptr, _ptr, _ptr)
_randombytes_buf = ctypes.CFUNCTYPE(None, _ptr, ctypes.c_size_t)(("randombytes_buf", _lib))


def _buffer() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(32)


def _need32(*values: bytes) -> None:
    # libsodium reads exactly 32 bytes through each pointer: anything shorter would be read
    # out of bounds, so shapes are checked before every call that is not already checked.
    for v in values:
        if type(v) is not bytes or len(v) != 32:
            raise InvalidInput("ristretto255 scalars and elements are 32-byte bytes objects")


# --- scalars -----------------------------------------------------------------------------------


def is_canonical_scalar(s: object) -> bool:
    """Whether ``s`` is 32 bytes encoding an integer below the group order (zero allowed)."""
    return (
        type(s) is bytes
        and len(s) == SCALAR_SIZE
        # The outcome is public (every real key passes); the comparison only ever looks at
        # the top bits, which are far below ORDER's for any reduced scalar.
        and int.from_bytes(s, "little") < ORDER
    )


def check_scalar(s: object, *, what: str = "scalar") -> bytes:
    """Return ``s`` if it is a canonical, non-zero scalar.

    Args:
        s: the candidate scalar.
        what: how to name it in the error message (never its value).

    Returns:
        ``s`` itself, typed as bytes.

    Raises:
        InvalidInput: wrong type or length, not reduced modulo the order, or zero.
    """
    if not is_canonical_scalar(s):
        raise InvalidInput(f"{what} must be a canonical 32-byte ristretto255 scalar")
    assert isinstance(s, bytes)
    if hmac.compare_digest(s, _ZERO_SCALAR):
        raise InvalidInput(f"{what} must not be zero")
    return s


def random_scalar() -> bytes:
    """Draw a uniformly random non-zero scalar from libsodium's CSPRNG."""
    buf = _buffer()
    while True:
        _scalar_random(buf)
        s = buf.raw
        # Zero has probability 2^-252; looping keeps the invariant exact.
        if not hmac.compare_digest(s, _ZERO_SCALAR):
            return s


def random_scalars(n: int) -> list[bytes]:
    """Draw ``n`` uniformly random non-zero scalars in one CSPRNG call.

    Each is 64 random bytes reduced modulo the order (the wide reduction of RFC 9496
    section 4.4; bias below 2^-250), all in libsodium: one ``randombytes_buf`` and ``n``
    constant-time reductions over addresses into one buffer.
    """
    wide = ctypes.create_string_buffer(64 * n)
    _randombytes_buf(wide, 64 * n)
    out = ctypes.create_string_buffer(SCALAR_SIZE * n)
    src, dst = ctypes.addressof(wide), ctypes.addressof(out)
    for _ in map(_scalar_reduce_at, range(dst, dst + 32 * n, 32), range(src, src + 64 * n, 64)):
        pass
    ctypes.memset(wide, 0, 64 * n)  # don't leave blind material in freed memory
    scalars = _split(out.raw)
    ctypes.memset(out, 0, SCALAR_SIZE * n)
    # A zero scalar has probability 2^-252 per draw; replace rather than assume.
    return [random_scalar() if hmac.compare_digest(s, _ZERO_SCALAR) else s for s in scalars]


def scalar_reduce(wide: bytes) -> bytes:
    """Reduce 64 little-endian bytes modulo the group order (RFC 9496 HashToScalar step)."""
    if type(wide) is not bytes or len(wide) != 64:
        raise InvalidInput("scalar_reduce needs exactly 64 bytes")
    buf = _buffer()
    _scalar_reduce(buf, wide)
    return buf.raw


def scalar_invert(s: bytes) -> bytes:
    """Multiplicative inverse modulo the group order of a canonical non-zero scalar."""
    check_scalar(s)
    buf = _buffer()
    _scalar_invert(buf, s)
    return buf.raw


def scalar_invert_many(scalars: Sequence[bytes]) -> list[bytes]:
    """Inverses of canonical non-zero scalars with one inversion (Montgomery's batch trick).

    An inversion is an exponentiation costing about as much as 40 multiplications, so a batch
    of ``n`` takes one inversion and ``3(n-1)`` multiplications instead of ``n`` inversions.
    Every step is a constant-time libsodium call.

    Raises:
        InvalidInput: a scalar is malformed, non-canonical or zero.
    """
    for s in scalars:
        check_scalar(s)
    n = len(scalars)
    if not n:
        return []
    # Everything lives in three buffers addressed by offset: one C call per step, no
    # per-step Python objects. src: the scalars; pre[i] = s_0 * ... * s_i; out: inverses.
    src = ctypes.create_string_buffer(b"".join(scalars), SCALAR_SIZE * n)
    pre = ctypes.create_string_buffer(SCALAR_SIZE * n)
    out = ctypes.create_string_buffer(SCALAR_SIZE * n)
    a_src, a_pre, a_out = map(ctypes.addressof, (src, pre, out))
    ctypes.memmove(a_pre, a_src, SCALAR_SIZE)
    for i in range(1, n):
        _scalar_mul_at(a_pre + 32 * i, a_pre + 32 * (i - 1), a_src + 32 * i)
    acc = ctypes.create_string_buffer(SCALAR_SIZE)
    a_acc = ctypes.addressof(acc)
    _scalar_invert_at(a_acc, a_pre + 32 * (n - 1))  # (s_0 * ... * s_{n-1})^-1
    for i in range(n - 1, 0, -1):
        _scalar_mul_at(a_out + 32 * i, a_acc, a_pre + 32 * (i - 1))  # s_i^-1
        _scalar_mul_at(a_acc, a_acc, a_src + 32 * i)  # (s_0 * ... * s_{i-1})^-1
    ctypes.memmove(a_out, a_acc, SCALAR_SIZE)
    result = _split(out.raw)
    for buf in (src, pre, out, acc):
        ctypes.memset(buf, 0, len(buf))  # blinds are secrets: leave no copies in freed memory
    return result


def scalar_add(s: bytes, t: bytes) -> bytes:
    """``s + t`` modulo the order, for canonical scalars."""
    _need32(s, t)
    buf = _buffer()
    _scalar_add(buf, s, t)
    return buf.raw


def scalar_sub(s: bytes, t: bytes) -> bytes:
    """``s - t`` modulo the order, for canonical scalars."""
    _need32(s, t)
    buf = _buffer()
    _scalar_sub(buf, s, t)
    return buf.raw


def scalar_mul(s: bytes, t: bytes) -> bytes:
    """``s * t`` modulo the order, for canonical scalars."""
    _need32(s, t)
    buf = _buffer()
    _scalar_mul(buf, s, t)
    return buf.raw


# --- elements ----------------------------------------------------------------------------------


def is_valid_element(p: object) -> bool:
    """Whether ``p`` is the canonical encoding of a ristretto255 element other than the identity."""
    return (
        type(p) is bytes
        and len(p) == ELEMENT_SIZE
        and not p[31] & 0x80  # libsodium 1.0.18 ignores this bit; RFC 9496 rejects it
        and _is_valid_point(p) == 1
        and not hmac.compare_digest(p, IDENTITY)
    )


def check_element(p: object) -> bytes:
    """Return ``p`` if :func:`is_valid_element`, else raise :class:`VerificationFailed`."""
    if not is_valid_element(p):
        raise VerificationFailed
    assert isinstance(p, bytes)
    return p


def check_elements(elements: Sequence[object]) -> None:
    """Cheap batch pre-check of untrusted elements; raise VerificationFailed on any failure.

    Checks, in C-speed passes over the batch, that every item is a 32-byte ``bytes`` whose most
    significant bit is clear (the one canonicity rule libsodium 1.0.18 skips). The rest of the
    encoding is validated by the scalar multiplication that consumes each element.
    """
    if not elements:
        return
    if set(map(type, elements)) != {bytes} or set(map(len, elements)) != {ELEMENT_SIZE}:  # type: ignore[arg-type]
        raise VerificationFailed
    if max(b"".join(elements)[ELEMENT_SIZE - 1 :: ELEMENT_SIZE]) & 0x80:  # type: ignore[arg-type]
        raise VerificationFailed


def element_from_uniform_bytes(uniform: bytes) -> bytes:
    """Map 64 uniform bytes to an element (RFC 9496 section 4.3.4, one-way map)."""
    if type(uniform) is not bytes or len(uniform) != 64:
        raise InvalidInput("element_from_uniform_bytes needs exactly 64 bytes")
    buf = _buffer()
    _from_hash(buf, uniform)
    return buf.raw


def elements_from_uniform_bytes(uniforms: Sequence[bytes]) -> list[bytes]:
    """:func:`element_from_uniform_bytes` over a batch, into one buffer.

    Raises:
        InvalidInput: an item is not 64 bytes.
    """
    n = len(uniforms)
    if n and (set(map(type, uniforms)) != {bytes} or set(map(len, uniforms)) != {64}):
        raise InvalidInput("element_from_uniform_bytes needs exactly 64 bytes")
    joined = b"".join(uniforms)
    out = ctypes.create_string_buffer(ELEMENT_SIZE * n)
    dst = ctypes.addressof(out)
    src = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
    for _ in map(_from_hash_at, range(dst, dst + 32 * n, 32), range(src, src + 64 * n, 64)):
        pass
    return _split(out.raw)


def scalar_mult(s: bytes, p: bytes) -> bytes:
    """``s * p`` for a non-zero scalar and an untrusted element.

    Raises:
        VerificationFailed: ``p`` is not a valid non-identity element (checked by libsodium's
            decode inside the multiplication, which also refuses an identity result).
    """
    if type(p) is not bytes or len(p) != ELEMENT_SIZE or p[31] & 0x80:
        raise VerificationFailed
    _need32(s)
    buf = _buffer()
    if _scalarmult(buf, s, p) != 0:
        raise VerificationFailed
    return buf.raw


def scalar_mult_unchecked(s: bytes, p: bytes) -> bytes:
    """``s * p`` for an element already known to decode; zero scalars and identity allowed.

    libsodium reports an identity result with -1 but has written its (all-zero) encoding to
    the output, which is exactly the value wanted here.
    """
    _need32(s, p)
    buf = _buffer()
    _scalarmult(buf, s, p)
    return buf.raw


def scalar_mult_base(s: bytes) -> bytes:
    """``s * G``; a zero scalar gives the identity encoding (all zeros)."""
    _need32(s)
    buf = _buffer()
    _scalarmult_base(buf, s)
    return buf.raw


def add(p: bytes, q: bytes) -> bytes:
    """``p + q`` for elements already known to decode (identity allowed)."""
    _need32(p, q)
    buf = _buffer()
    if _add(buf, p, q) != 0:
        raise VerificationFailed
    return buf.raw


def sum_elements(elements: Sequence[bytes]) -> bytes:
    """The sum of elements already known to decode (identity allowed), in one buffer pass.

    Raises:
        VerificationFailed: an element fails to decode or has the wrong shape.
    """
    n = len(elements)
    if n == 0:
        return IDENTITY
    check_elements(elements)
    joined = b"".join(elements)
    acc = ctypes.create_string_buffer(joined[:ELEMENT_SIZE], ELEMENT_SIZE)
    a_acc = ctypes.addressof(acc)
    src = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
    addresses = range(src + ELEMENT_SIZE, src + ELEMENT_SIZE * n, ELEMENT_SIZE)
    if any(map(_add_at, repeat(a_acc, n - 1), repeat(a_acc, n - 1), addresses)):
        raise VerificationFailed
    return acc.raw


def _split(raw: bytes) -> list[bytes]:
    return [raw[i : i + ELEMENT_SIZE] for i in range(0, len(raw), ELEMENT_SIZE)]


def scalar_mult_many(s: bytes, elements: Sequence[bytes]) -> list[bytes]:
    """``[s * p for p in elements]`` for one non-zero scalar, validating every element.

    The hot path of the server: one C call per element, mapped over preallocated output
    offsets, no per-element Python frame or buffer.

    Raises:
        VerificationFailed: an element is not ``bytes`` of 32, fails to decode, or is the
            identity.
    """
    n = len(elements)
    _need32(s)
    check_elements(elements)
    out = ctypes.create_string_buffer(n * ELEMENT_SIZE)
    base = ctypes.addressof(out)
    rcs = map(
        _scalarmult, range(base, base + n * ELEMENT_SIZE, ELEMENT_SIZE), repeat(s, n), elements
    )
    if any(rcs):
        raise VerificationFailed
    return _split(out.raw)


def scalar_mult_each(scalars: Sequence[bytes], elements: Sequence[bytes]) -> list[bytes]:
    """``[s_i * p_i]`` for aligned non-zero scalars and untrusted elements (client unblinding).

    Raises:
        VerificationFailed: an element is malformed, fails to decode, or is the identity.
    """
    n = len(elements)
    if len(scalars) != n:
        raise InvalidInput("scalars and elements must have the same length")
    if n and (set(map(type, scalars)) != {bytes} or set(map(len, scalars)) != {SCALAR_SIZE}):
        raise InvalidInput("scalars must be 32-byte bytes objects")
    check_elements(elements)
    out = ctypes.create_string_buffer(n * ELEMENT_SIZE)
    base = ctypes.addressof(out)
    if any(map(_scalarmult, range(base, base + n * ELEMENT_SIZE, ELEMENT_SIZE), scalars, elements)):
        raise VerificationFailed
    return _split(out.raw)
