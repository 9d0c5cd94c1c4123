"""``expand_message_xmd`` of RFC 9380 (section 5.3.1), instantiated with SHA-512."""

from __future__ import annotations

import hashlib

from contactmatch.errors import InvalidInput

__all__ = ["expand_message_xmd"]

_B_IN_BYTES = 64  # SHA-512 output size
_S_IN_BYTES = 128  # SHA-512 block size
_Z_PAD_STATE = hashlib.sha512(bytes(_S_IN_BYTES))
_MAX_DST = 255


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """Expand ``msg`` into ``len_in_bytes`` uniform bytes under the domain separation tag ``dst``.

    Args:
        msg: the message (any length).
        dst: the domain separation tag, 1 to 255 bytes (RFC 9380 section 3.1; the oversized-DST
            hashing of section 5.3.3 is not needed by RFC 9497 and is refused).
        len_in_bytes: how many bytes to produce, 1 to 255 * 64.

    Returns:
        ``len_in_bytes`` pseudo-random bytes.

    Raises:
        InvalidInput: the DST or the requested length is out of range.
    """
    ell = -(-len_in_bytes // _B_IN_BYTES)
    if not 1 <= len_in_bytes <= 0xFFFF or ell > 255:
        raise InvalidInput("expand_message_xmd: len_in_bytes out of range")
    if not 1 <= len(dst) <= _MAX_DST:
        raise InvalidInput("expand_message_xmd: DST must be 1 to 255 bytes")
    dst_prime = dst + bytes((len(dst),))
    h = _Z_PAD_STATE.copy()  # Z_pad is one whole block: hash it once per process, not per call
    h.update(msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime)
    b_0 = h.digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    for i in range(2, ell + 1):
        # strxor(b_0, b_(i-1)): done on ints because bytes have no xor.
        mixed = (int.from_bytes(b_0, "big") ^ int.from_bytes(b_i, "big")).to_bytes(64, "big")
        b_i = hashlib.sha512(mixed + bytes((i,)) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:len_in_bytes]
