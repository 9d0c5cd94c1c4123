"""Versioned, length-checked binary wire messages, plus a JSON form for the HTTP API.

Every message is ``b"CMW" | version (u8) | type (u8) | body``. The body is a fixed sequence of
fields; lists carry their count *and* item width, and the decoder checks that the declared
sizes add up to exactly the bytes received, so a hostile message cannot make us allocate more
than it sent, and trailing garbage is an error rather than silently ignored. Anything that
fails to decode raises :class:`~contactmatch.errors.MalformedMessage` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, TypeVar, overload

from contactmatch._json import load_json
from contactmatch.errors import MalformedMessage
from contactmatch.schemes._codec import MAX_ITEMS, MAX_STR
from contactmatch.schemes._codec import Reader as _Reader
from contactmatch.schemes._codec import Writer as _Writer

__all__ = [
    "MAX_ITEMS",
    "MAX_MESSAGE_BYTES",
    "PIR_MAX_BATCH",
    "WIRE_VERSION",
    "BucketRequest",
    "BucketResponse",
    "ContactsUpload",
    "EvalRequest",
    "EvalResponse",
    "LookupRequest",
    "LookupResponse",
    "Message",
    "PirRequest",
    "PirResponse",
    "ServiceResponse",
    "decode",
    "decode_json",
]

MAGIC = b"CMW"
WIRE_VERSION = 2  # 2: ServiceResponse.filter_version is a u64 content digest
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The most PIR queries one request may carry, whatever the server allows.
PIR_MAX_BATCH = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every wire message; subclasses declare ``TYPE`` and their field codecs."""

    TYPE: ClassVar[int] = 0
    NAME: ClassVar[str] = ""

    def _write(self, w: _Writer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader) -> Self:  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate(self) -> None:
        """Field-level checks shared by both encodings; raise MalformedMessage."""

    def encode(self) -> bytes:
        """The binary form (what the byte counts of benchmarks measure)."""
        self._validate()
        w = _Writer()
        w.parts.append(MAGIC + bytes((WIRE_VERSION, self.TYPE)))
        self._write(w)
        out = b"".join(w.parts)
        if len(out) > MAX_MESSAGE_BYTES:
            raise MalformedMessage("message exceeds the maximum size")
        return out

    def to_json(self) -> str:
        """The JSON form for the HTTP API: bytes as base64, lists as lists."""
        body: dict[str, Any] = {"v": WIRE_VERSION, "type": self.NAME}
        for f in fields(self):
            body[f.name] = _to_jsonable(getattr(self, f.name))
        return json.dumps(body, separators=(",", ":"))

    def __repr__(self) -> str:
        # Tokens, elements and user ids are never shown; sizes are enough to debug.
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list | tuple):
                parts.append(f"{f.name}=<{len(v)} items>")
            elif isinstance(v, bytes):
                parts.append(f"{f.name}=<{len(v)} bytes>")
            else:
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _to_jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, list | tuple):
        return [_to_jsonable(x) for x in v]
    return v


def _b64(v: Any) -> bytes:
    if not isinstance(v, str):
        raise MalformedMessage("expected a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage("a field is not valid base64") from exc


def _check_items(name: str, items: Sequence[bytes], *, max_len: int = 0xFFFF) -> None:
    if len(items) > MAX_ITEMS:
        raise MalformedMessage(f"{name}: more than {MAX_ITEMS} items")
    for b in items:
        if not isinstance(b, bytes) or not 0 < len(b) <= max_len:
            raise MalformedMessage(f"{name}: every item must be 1..{max_len} bytes")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EvalRequest(Message):
    """Round 1 of a keyed scheme: blinded elements (OPRF) or numbers (hmac) to evaluate."""

    TYPE: ClassVar[int] = 1
    NAME: ClassVar[str] = "eval_request"
    scheme: str
    elements: list[bytes]

    def _validate(self) -> None:
        _check_items("elements", self.elements)

    def _write(self, w: _Writer) -> None:
        w.text(self.scheme)
        w.items(self.elements)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(scheme=r.text(), elements=r.items())


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EvalResponse(Message):
    """Evaluated elements under the key ``key_id``, with a batched proof in VOPRF mode."""

    TYPE: ClassVar[int] = 2
    NAME: ClassVar[str] = "eval_response"
    key_id: str
    elements: list[bytes]
    proof: bytes = b""

    def _validate(self) -> None:
        _check_items("elements", self.elements)

    def _write(self, w: _Writer) -> None:
        w.text(self.key_id)
        w.items(self.elements)
        w.blob(self.proof)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(key_id=r.text(), elements=r.items(), proof=r.blob())


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class LookupRequest(Message):
    """Tokens the client asks about: all of them (``lookup``) or only filter hits (``filter``)."""

    TYPE: ClassVar[int] = 3
    NAME: ClassVar[str] = "lookup_request"
    scheme: str
    key_id: str
    tokens: list[bytes]

    def _validate(self) -> None:
        _check_items("tokens", self.tokens)

    def _write(self, w: _Writer) -> None:
        w.text(self.scheme)
        w.text(self.key_id)
        w.items(self.tokens)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(scheme=r.text(), key_id=r.text(), tokens=r.items())


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class LookupResponse(Message):
    """Positions (into the request's token list) that are registered, with their user ids."""

    TYPE: ClassVar[int] = 4
    NAME: ClassVar[str] = "lookup_response"
    key_id: str
    positions: list[int]
    user_ids: list[bytes]

    def _validate(self) -> None:
        if len(self.positions) != len(self.user_ids):
            raise MalformedMessage("positions and user_ids differ in length")
        _check_items("user_ids", self.user_ids, max_len=MAX_STR)
        if any(not 0 <= p < MAX_ITEMS for p in self.positions):
            raise MalformedMessage("a position is out of range")

    def _write(self, w: _Writer) -> None:
        w.text(self.key_id)
        w.ints(self.positions)
        w.items(self.user_ids)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        msg = cls(key_id=r.text(), positions=r.ints(), user_ids=r.items())
        msg._validate()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class BucketRequest(Message):
    """k-anonymity: the client reveals only a ``bits``-bit prefix of each of its tokens."""

    TYPE: ClassVar[int] = 5
    NAME: ClassVar[str] = "bucket_request"
    scheme: str
    key_id: str
    bits: int
    prefixes: list[int]

    def _validate(self) -> None:
        if not 0 <= self.bits <= 32:
            raise MalformedMessage("bits must be 0..32")
        if len(self.prefixes) > MAX_ITEMS:
            raise MalformedMessage(f"prefixes: more than {MAX_ITEMS} items")
        if any(not 0 <= p < (1 << self.bits) for p in self.prefixes):
            raise MalformedMessage("a prefix does not fit in the declared bits")

    def _write(self, w: _Writer) -> None:
        w.text(self.scheme)
        w.text(self.key_id)
        w.u8(self.bits)
        w.ints(self.prefixes)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        msg = cls(scheme=r.text(), key_id=r.text(), bits=r.u8(), prefixes=r.ints())
        msg._validate()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class BucketResponse(Message):
    """The requested buckets: per entry a short fingerprint and the user id sealed to the token.

    ``counts[i]`` entries of ``fingerprints``/``sealed`` belong to ``prefixes[i]``, in order.
    Sealing the user id under a key derived from the token means a client learns the ids only
    of numbers it already holds, not of everyone who shares its buckets.
    """

    TYPE: ClassVar[int] = 6
    NAME: ClassVar[str] = "bucket_response"
    key_id: str
    bits: int
    prefixes: list[int]
    counts: list[int]
    fingerprints: list[bytes]
    sealed: list[bytes]

    def _validate(self) -> None:
        if not 0 <= self.bits <= 32:
            raise MalformedMessage("bits must be 0..32")
        if len(self.prefixes) != len(self.counts):
            raise MalformedMessage("prefixes and counts differ in length")
        if sum(self.counts) != len(self.fingerprints) or len(self.fingerprints) != len(self.sealed):
            raise MalformedMessage("bucket entry counts do not add up")
        if any(len(f) != 8 for f in self.fingerprints):
            raise MalformedMessage("fingerprints must be 8 bytes")
        _check_items("sealed", self.sealed)

    def _write(self, w: _Writer) -> None:
        w.text(self.key_id)
        w.u8(self.bits)
        w.ints(self.prefixes)
        w.ints(self.counts)
        w.items(self.fingerprints)
        w.items(self.sealed)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        msg = cls(
            key_id=r.text(),
            bits=r.u8(),
            prefixes=r.ints(),
            counts=r.ints(),
            fingerprints=r.items(),
            sealed=r.items(),
        )
        msg._validate()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ServiceResponse(Message):
    """The discovery service's envelope around a scheme's response.

    ``personal`` entries are users discoverable by *their contacts only* who hold the requester
    in their uploaded book: listed as (fingerprint, sealed user id) like bucket entries, so the
    requester can open only those whose number it holds too. ``filter_version`` tells a filter
    client whether to fetch a delta.
    """

    TYPE: ClassVar[int] = 7
    NAME: ClassVar[str] = "service_response"
    inner: bytes
    filter_version: int
    fingerprints: list[bytes]
    sealed: list[bytes]

    def _validate(self) -> None:
        if len(self.fingerprints) != len(self.sealed):
            raise MalformedMessage("fingerprints and sealed differ in length")
        if any(len(f) != 8 for f in self.fingerprints):
            raise MalformedMessage("fingerprints must be 8 bytes")
        _check_items("sealed", self.sealed)
        # 53 bits: a content digest (registry.publisher) that JSON numbers carry exactly.
        if not 0 <= self.filter_version < 1 << 53:
            raise MalformedMessage("filter_version out of range")

    def _write(self, w: _Writer) -> None:
        w.u32(len(self.inner))
        w.parts.append(self.inner)
        w.u64(self.filter_version)
        w.items(self.fingerprints)
        w.items(self.sealed)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        inner = r.take(r.u32())
        msg = cls(inner=inner, filter_version=r.u64(), fingerprints=r.items(), sealed=r.items())
        msg._validate()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ContactsUpload(Message):
    """Opt-in: the tokens of a user's contacts, kept for "your contact joined" and for
    deciding who may discover a user whose setting is *contacts only*."""

    TYPE: ClassVar[int] = 8
    NAME: ClassVar[str] = "contacts_upload"
    key_id: str
    tokens: list[bytes]

    def _validate(self) -> None:
        _check_items("tokens", self.tokens)

    def _write(self, w: _Writer) -> None:
        w.text(self.key_id)
        w.items(self.tokens)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(key_id=r.text(), tokens=r.items())


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PirRequest(Message):
    """``batch`` PIR queries (``pir``): LWE ciphertexts, one per retrieved column.

    ``queries`` is ``batch × cols`` little-endian u32 words; the client pads every request
    to the same batch, so the server learns neither which columns nor how many were wanted.
    ``version`` is the hint the client holds; the answer brings the delta from it.
    """

    TYPE: ClassVar[int] = 9
    NAME: ClassVar[str] = "pir_request"
    scheme: str
    key_id: str
    version: int
    batch: int
    queries: bytes

    def _validate(self) -> None:
        if not 0 <= self.version < 1 << 64:
            raise MalformedMessage("version is out of range")
        if not 1 <= self.batch <= PIR_MAX_BATCH:
            raise MalformedMessage(f"batch must be 1..{PIR_MAX_BATCH}")
        if not self.queries or len(self.queries) % (4 * self.batch):
            raise MalformedMessage("queries are not batch rows of u32 words")

    def _write(self, w: _Writer) -> None:
        w.text(self.scheme)
        w.text(self.key_id)
        w.u64(self.version)
        w.u32(self.batch)
        w.wide(self.queries)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        msg = cls(
            scheme=r.text(), key_id=r.text(), version=r.u64(), batch=r.u32(), queries=r.wide()
        )
        msg._validate()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PirResponse(Message):
    """Answers to a :class:`PirRequest`: ``batch × rows`` little-endian u32 words.

    ``version`` is the database answered; ``delta`` takes the client's hint from the version
    it named to this one (empty when they are the same).
    """

    TYPE: ClassVar[int] = 10
    NAME: ClassVar[str] = "pir_response"
    key_id: str
    version: int
    delta: bytes
    batch: int
    answers: bytes

    def _validate(self) -> None:
        if not 0 <= self.version < 1 << 64:
            raise MalformedMessage("version is out of range")
        if not 1 <= self.batch <= PIR_MAX_BATCH:
            raise MalformedMessage(f"batch must be 1..{PIR_MAX_BATCH}")
        if not self.answers or len(self.answers) % (4 * self.batch):
            raise MalformedMessage("answers are not batch rows of u32 words")

    def _write(self, w: _Writer) -> None:
        w.text(self.key_id)
        w.u64(self.version)
        w.wide(self.delta)
        w.u32(self.batch)
        w.wide(self.answers)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        msg = cls(key_id=r.text(), version=r.u64(), delta=r.wide(), batch=r.u32(), answers=r.wide())
        msg._validate()
        return msg


_TYPES: dict[int, type[Message]] = {
    m.TYPE: m
    for m in (
        EvalRequest,
        EvalResponse,
        LookupRequest,
        LookupResponse,
        BucketRequest,
        BucketResponse,
        ServiceResponse,
        ContactsUpload,
        PirRequest,
        PirResponse,
    )
}
_BY_NAME: dict[str, type[Message]] = {m.NAME: m for m in _TYPES.values()}
_M = TypeVar("_M", bound=Message)
_INT_TOPS: dict[str, int] = {"bits": 1 << 8, "filter_version": 1 << 64, "version": 1 << 64}


@overload
def decode(data: bytes) -> Message: ...
@overload
def decode(data: bytes, expect: type[_M]) -> _M: ...
@overload
def decode(data: bytes, expect: type[Message] | None) -> Message: ...


def decode(data: bytes, expect: type[Message] | None = None) -> Message:
    """Decode one binary message; ``expect`` restricts the accepted type (and types the result).

    Raises:
        MalformedMessage: wrong magic, unknown version or type, bad lengths, trailing bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("a wire message must be bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("message exceeds the maximum size")
    if len(data) < 5 or data[:3] != MAGIC:
        raise MalformedMessage("not a contactmatch wire message")
    if data[3] != WIRE_VERSION:
        raise MalformedMessage(f"unsupported wire version {data[3]}")
    cls = _TYPES.get(data[4])
    if cls is None:
        raise MalformedMessage(f"unknown message type {data[4]}")
    if expect is not None and cls is not expect:
        raise MalformedMessage(f"expected {expect.NAME}, got {cls.NAME}")
    r = _Reader(data[5:])
    msg = cls._read(r)
    r.done()
    return msg


@overload
def decode_json(text: str | bytes) -> Message: ...
@overload
def decode_json(text: str | bytes, expect: type[_M]) -> _M: ...
@overload
def decode_json(text: str | bytes, expect: type[Message] | None) -> Message: ...


def decode_json(text: str | bytes, expect: type[Message] | None = None) -> Message:
    """Decode the JSON form; same checks as :func:`decode`.

    The text goes through the strict loader (:func:`contactmatch._json.load_json`): deep
    nesting, huge integers, lone surrogates and the like fail here, as MalformedMessage, not
    later as a crash.

    Raises:
        MalformedMessage: for anything whatsoever that is not a valid message of ``expect``.
    """
    body = load_json(text, error=MalformedMessage)
    if not isinstance(body, dict):
        raise MalformedMessage("message must be a JSON object")
    version = body.get("v")
    # type(): True == 1 and 1.0 == 1, but neither is the version number.
    if type(version) is not int or version != WIRE_VERSION:
        raise MalformedMessage("unsupported wire version")
    name = body.get("type")
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None:
        raise MalformedMessage("unknown message type")
    if expect is not None and cls is not expect:
        raise MalformedMessage(f"expected {expect.NAME}, got {cls.NAME}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in body:
            raise MalformedMessage(f"missing field {f.name!r}")
        v = body[f.name]
        kind = str(f.type)
        if kind == "list[bytes]":
            if not isinstance(v, list):
                raise MalformedMessage(f"{f.name} must be a list")
            v = [_b64(x) for x in v]
        elif kind == "list[int]":
            if not isinstance(v, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in v
            ):
                raise MalformedMessage(f"{f.name} must be a list of u32 integers")
        elif kind == "bytes":
            v = _b64(v)
        elif kind == "int":
            # The binary width of each int field: bits is a u8, filter_version a u64 (a
            # content digest, which _validate keeps below 2**53), any other a u32.
            top = _INT_TOPS.get(f.name, 1 << 32)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < top:
                raise MalformedMessage(f"{f.name} is out of range")
        elif kind == "str" and (not isinstance(v, str) or len(v.encode()) > MAX_STR):
            raise MalformedMessage(f"{f.name} must be a short string")
        kwargs[f.name] = v
    msg = cls(**kwargs)
    msg._validate()
    return msg
