"""The field codec under the wire messages: big-endian integers, short texts, item lists.

Kept apart from the messages (:mod:`contactmatch.schemes.wire`) because it is the part that
must resist hostile input: every read is bounds-checked against the bytes actually received
*before* anything is allocated, and lists declare count and width up front.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from contactmatch.errors import MalformedMessage

__all__ = ["MAX_ITEMS", "MAX_STR", "Reader", "Writer"]

#: A phone book is thousands of numbers; a registry import goes through the store, not here.
MAX_ITEMS: Final = 1 << 20
MAX_STR: Final = 255


class Reader:
    """Reads fields off a message body, refusing any read past the bytes received."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise MalformedMessage("message is truncated")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def text(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("a text field is not UTF-8") from exc

    def blob(self) -> bytes:
        return self.take(self.u16())

    def wide(self) -> bytes:
        """A u32-length-prefixed field (PIR queries and answers run to megabytes)."""
        return self.take(self.u32())

    def items(self) -> list[bytes]:
        count, width = self.u32(), self.u16()
        if count > MAX_ITEMS:
            raise MalformedMessage(f"list has more than {MAX_ITEMS} items")
        if width:
            if count * width > len(self.buf) - self.pos:
                raise MalformedMessage("message is truncated")
            data = self.take(count * width)
            return [data[i : i + width] for i in range(0, count * width, width)]
        # Variable width: each item is u16-length-prefixed; at least 2 bytes each must remain.
        if count * 2 > len(self.buf) - self.pos:
            raise MalformedMessage("message is truncated")
        return [self.take(self.u16()) for _ in range(count)]

    def ints(self) -> list[int]:
        return [int.from_bytes(b, "big") for b in self.items()]

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise MalformedMessage("trailing bytes after message")


class Writer:
    """Appends fields in the layout :class:`Reader` reads back."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u16(self, v: int) -> None:
        self.parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack(">I", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack(">Q", v))

    def text(self, s: str) -> None:
        raw = s.encode("utf-8")
        if len(raw) > MAX_STR:
            raise MalformedMessage(f"a text field is longer than {MAX_STR} bytes")
        self.u8(len(raw))
        self.parts.append(raw)

    def blob(self, b: bytes) -> None:
        if len(b) > 0xFFFF:
            raise MalformedMessage("a field is longer than 65535 bytes")
        self.u16(len(b))
        self.parts.append(b)

    def wide(self, b: bytes) -> None:
        self.u32(len(b))
        self.parts.append(b)

    def items(self, items: Sequence[bytes]) -> None:
        if len(items) > MAX_ITEMS:
            raise MalformedMessage(f"list has more than {MAX_ITEMS} items")
        widths = {len(b) for b in items}
        self.u32(len(items))
        if len(widths) == 1 and 0 < (w := widths.pop()) <= 0xFFFF:
            # Uniform lists (tokens, elements) pay no per-item length: the common case.
            self.u16(w)
            self.parts.append(b"".join(items))
        else:
            self.u16(0)
            for b in items:
                self.blob(b)

    def ints(self, values: Sequence[int], width: int = 4) -> None:
        try:
            self.items([v.to_bytes(width, "big") for v in values])
        except OverflowError as exc:
            raise MalformedMessage("an integer field is out of range") from exc
