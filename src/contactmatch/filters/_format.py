"""The framing both filters share: checksummed headers, key-id labels and delta patches.

Every serialised filter or delta is ``header | payload | 16-byte BLAKE2b`` over everything
before the checksum; :func:`unseal` checks length, checksum, magic and format version before
any field is trusted, so a corrupt or hostile blob fails here as MalformedMessage.
"""

from __future__ import annotations

import hmac
import struct
from hashlib import blake2b
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = [
    "BLOOM_MAGIC",
    "CHECKSUM_BYTES",
    "DELTA_MAGIC",
    "FORMAT_VERSION",
    "GCS_MAGIC",
    "Versioned",
    "label",
    "seal",
    "take_label",
    "u64s",
    "unseal",
]

U64 = npt.NDArray[np.uint64]

FORMAT_VERSION: Final = 1
CHECKSUM_BYTES: Final = 16
GCS_MAGIC: Final = b"CMGC"
BLOOM_MAGIC: Final = b"CMBL"
DELTA_MAGIC: Final = b"CMFD"
# magic, format, filter kind, reserved, from version, to version, target checksum,
# count of the first list, count of the second list, extra (Bloom: token count)
_DELTA_HEAD = struct.Struct("<4sHBBQQ16sQQQ")


def seal(body: bytes) -> bytes:
    """``body`` with its checksum appended: the wire form of every filter and delta."""
    return body + blake2b(body, digest_size=CHECKSUM_BYTES).digest()


def label(key_id: str) -> bytes:
    """The length-prefixed key id a filter carries (published, so never a secret).

    Raises:
        InvalidInput: the key id is longer than 255 bytes of UTF-8.
    """
    raw = key_id.encode()
    if len(raw) > 255:
        raise InvalidInput("key_id must be at most 255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


def take_label(payload: bytes) -> tuple[str, bytes]:
    """Split the length-prefixed key id off the front of a payload."""
    if not payload or len(payload) < 1 + payload[0]:
        raise MalformedMessage("filter key id is truncated")
    try:
        key_id = payload[1 : 1 + payload[0]].decode()
    except UnicodeDecodeError as exc:
        raise MalformedMessage("filter key id is not UTF-8") from exc
    return key_id, payload[1 + payload[0] :]


def unseal(data: bytes, magic: bytes, head: struct.Struct) -> tuple[tuple[Any, ...], bytes]:
    """Check length, checksum, magic and format version; return header fields and payload."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("message must be bytes")
    data = bytes(data)
    if len(data) < head.size + CHECKSUM_BYTES:
        raise MalformedMessage("message too short")
    body, check = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if not hmac.compare_digest(blake2b(body, digest_size=CHECKSUM_BYTES).digest(), check):
        raise MalformedMessage("message checksum mismatch")
    fields = head.unpack_from(body)
    if fields[0] != magic:
        raise MalformedMessage("unexpected message type")
    if fields[1] != FORMAT_VERSION:
        raise MalformedMessage("unsupported message format version")
    return fields, body[head.size :]


def u64s(payload: bytes, start: int, count: int) -> U64:
    """``count`` little-endian uint64 values of ``payload`` from byte ``start``."""
    return np.frombuffer(payload, dtype="<u8", count=count, offset=start).astype(np.uint64)


class Versioned:
    """Shared version bookkeeping and patch framing of both filters."""

    KIND: ClassVar[int]
    version: int
    _base_version: int

    def to_bytes(self) -> bytes:
        raise NotImplementedError

    @property
    def checksum(self) -> bytes:
        """The trailing checksum of :meth:`to_bytes`: equal checksums, equal filters."""
        return self.to_bytes()[-CHECKSUM_BYTES:]

    def _check_since(self, since_version: int) -> None:
        if not self._base_version <= since_version <= self.version:
            raise InvalidInput(
                f"no delta from version {since_version}: history covers "
                f"{self._base_version}..{self.version}; download the full filter"
            )

    def _frame_delta(self, since: int, first: U64, second: U64, extra: int) -> bytes:
        head = _DELTA_HEAD.pack(
            DELTA_MAGIC,
            FORMAT_VERSION,
            self.KIND,
            0,
            since,
            self.version,
            self.checksum,
            first.shape[0],
            second.shape[0],
            extra,
        )
        return seal(head + first.astype("<u8").tobytes() + second.astype("<u8").tobytes())

    def _parse_delta(self, data: bytes) -> tuple[int, bytes, U64, U64, int]:
        fields, payload = unseal(data, DELTA_MAGIC, _DELTA_HEAD)
        _, _, kind, reserved, since, to, target, n1, n2, extra = fields
        if kind != self.KIND or reserved != 0 or not isinstance(target, bytes):
            raise MalformedMessage("delta is for another kind of filter")
        # No order between ``since`` and ``to``: a server may name versions by content.
        if len(payload) != 8 * (n1 + n2):
            raise MalformedMessage("delta length does not match its header")
        if since != self.version:
            raise InvalidInput("delta starts at a different version than this filter")
        return to, target, u64s(payload, 0, n1), u64s(payload, 8 * n1, n2), extra
