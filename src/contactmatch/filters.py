"""Published filters of registered tokens: a Bloom baseline and a Golomb-compressed set.

A server publishes a filter; a client tests its own tokens locally and asks the server only
about hits. Both filters:

* serialise to a versioned format: magic, format version, parameters, payload, and a trailing
  16-byte BLAKE2b checksum over everything before it;
* carry a ``version`` that every non-empty ``add_many`` / ``remove_many`` bumps, and produce a
  patch from any retained version (:meth:`delta`) that a client applies (:meth:`apply_delta`)
  to land on exactly the server's filter, proved by comparing checksums;
* raise :class:`~contactmatch.errors.MalformedMessage` for any bytes that fail to decode.

:class:`GolombFilter` is the compact one: the sorted multiset of token hashes scaled to
``[0, capacity / fpr)``, Rice-coded. It needs about ``log2(1/fpr) + 1.5`` bits per entry, so
it is within 5% of the ``log2(1/fpr)`` lower bound once ``fpr <= 2**-32`` (see
docs/index-and-filters.md for the measured curve and why not binary fuse).
"""

from __future__ import annotations

import hmac
import math
import os
import struct
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import pybloom_live
from bitarray import bitarray

from contactmatch import _gcs
from contactmatch._hashing import SALT_BYTES, hash64, pack_tokens, scale
from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = [
    "BloomFilter",
    "FilterKind",
    "GolombFilter",
    "build_filter",
    "is_delta",
    "load_filter",
    "peek_version",
]

FilterKind = Literal["gcs", "bloom"]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

FORMAT_VERSION = 1
CHECKSUM_BYTES = 16
# Universe bound: values must fit a uint64 (a wrapped running sum is caught in _gcs.decode).
_MAX_BOUND = 2**64 - 1
_GCS_MAGIC = b"CMGC"
_BLOOM_MAGIC = b"CMBL"
_DELTA_MAGIC = b"CMFD"
# magic, format, rice k, reserved, version, entries, bound, salt, unary stream length
_GCS_HEAD = struct.Struct("<4sHBBQQQ16sQ")
# magic, format, reserved, version, capacity, error rate, count, slices, bits per slice
_BLOOM_HEAD = struct.Struct("<4sHHQQdQIQ")
# magic, format, filter kind, reserved, from version, to version, target checksum,
# count of the first list, count of the second list, extra (Bloom: token count)
_DELTA_HEAD = struct.Struct("<4sHBBQQ16sQQQ")


def _seal(body: bytes) -> bytes:
    return body + blake2b(body, digest_size=CHECKSUM_BYTES).digest()


def _label(key_id: str) -> bytes:
    raw = key_id.encode()
    if len(raw) > 255:
        raise InvalidInput("key_id must be at most 255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


def _take_label(payload: bytes) -> tuple[str, bytes]:
    """Split the length-prefixed key id off the front of a payload."""
    if not payload or len(payload) < 1 + payload[0]:
        raise MalformedMessage("filter key id is truncated")
    try:
        key_id = payload[1 : 1 + payload[0]].decode()
    except UnicodeDecodeError as exc:
        raise MalformedMessage("filter key id is not UTF-8") from exc
    return key_id, payload[1 + payload[0] :]


def _unseal(data: bytes, magic: bytes, head: struct.Struct) -> tuple[tuple[Any, ...], bytes]:
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


def _u64s(payload: bytes, start: int, count: int) -> U64:
    return np.frombuffer(payload, dtype="<u8", count=count, offset=start).astype(np.uint64)


def _bloom_sizing(capacity: int, rate: float) -> tuple[int, int]:
    """Slices and bits per slice exactly as pybloom-live derives them (its hashes depend on it).

    Raises:
        OverflowError: the rate is so small that the sizes are not finite.
    """
    slices = math.ceil(math.log(1.0 / rate, 2))
    per_slice = math.ceil(capacity * abs(math.log(rate)) / (slices * math.log(2) ** 2))
    return slices, per_slice


class _Versioned:
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
            _DELTA_MAGIC,
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
        return _seal(head + first.astype("<u8").tobytes() + second.astype("<u8").tobytes())

    def _parse_delta(self, data: bytes) -> tuple[int, bytes, U64, U64, int]:
        fields, payload = _unseal(data, _DELTA_MAGIC, _DELTA_HEAD)
        _, _, kind, reserved, since, to, target, n1, n2, extra = fields
        if kind != self.KIND or reserved != 0 or not isinstance(target, bytes):
            raise MalformedMessage("delta is for another kind of filter")
        # No order between ``since`` and ``to``: a server may name versions by content.
        if len(payload) != 8 * (n1 + n2):
            raise MalformedMessage("delta length does not match its header")
        if since != self.version:
            raise InvalidInput("delta starts at a different version than this filter")
        return to, target, _u64s(payload, 0, n1), _u64s(payload, 8 * n1, n2), extra


class GolombFilter(_Versioned):
    """Golomb-compressed set of salted token hashes: the compact published filter."""

    KIND: ClassVar[int] = 1

    def __init__(
        self,
        *,
        bound: int,
        salt: bytes,
        values: U64 | None = None,
        version: int = 0,
        key_id: str = "",
        history_limit: int = 1024,
    ) -> None:
        """Wrap a sorted multiset of hash values (use :meth:`build` or :meth:`from_bytes`).

        Args:
            bound: hash values lie in ``[0, bound)``; fpr is about ``entries / bound``.
            salt: 16 bytes mixed into the token hash, published with the filter.
            values: the sorted values.
            version: the filter version these values are.
            key_id: names the key the tokens were made under, so clients can tell a filter of
                a rotated key (at most 255 bytes of UTF-8; published, so never a secret).
            history_limit: how many versions of changes to keep for :meth:`delta`.

        Raises:
            InvalidInput: a parameter is out of range.
        """
        if not 1 <= bound <= _MAX_BOUND:
            raise InvalidInput("filter bound out of range")
        if len(salt) != SALT_BYTES:
            raise InvalidInput(f"salt must be {SALT_BYTES} bytes")
        _label(key_id)
        self.bound = int(bound)
        self.salt = bytes(salt)
        self.key_id = key_id
        self._values: U64 = np.zeros(0, dtype=np.uint64) if values is None else values
        self.version = int(version)
        self._base_version = self.version
        self.history_limit = history_limit
        self._history: list[tuple[int, U64, U64]] = []
        self._encoded: tuple[int, bytes] | None = None

    @classmethod
    def build(
        cls,
        tokens: Sequence[bytes],
        *,
        fpr: float = 2.0**-32,
        capacity: int | None = None,
        salt: bytes | None = None,
        version: int = 0,
        key_id: str = "",
    ) -> GolombFilter:
        """Build from registered tokens.

        Args:
            tokens: the registered tokens (any length >= 1).
            fpr: false-positive rate per query at ``capacity`` entries.
            capacity: entries the rate is sized for (default: ``len(tokens)``); growing past
                it raises the rate proportionally.
            salt: 16 bytes; drawn at random when omitted.
            version: the version number to start from (the server's own counter).
            key_id: see :class:`GolombFilter`.

        Returns:
            The filter.

        Raises:
            InvalidInput: bad tokens, ``fpr`` not in (0, 1) or ``capacity / fpr >= 2**64``.
        """
        if not 0.0 < fpr < 1.0 or math.isnan(fpr):
            raise InvalidInput("fpr must be in (0, 1)")
        cap = max(len(tokens) if capacity is None else capacity, 1)
        # Compared as a float first: a tiny fpr makes the quotient infinite.
        if not cap / fpr < _MAX_BOUND:
            raise InvalidInput("capacity / fpr must stay below 2**64")
        bound = math.ceil(cap / fpr)
        if bound > _MAX_BOUND:
            raise InvalidInput("capacity / fpr must stay below 2**64")
        out = cls(
            bound=bound,
            salt=os.urandom(SALT_BYTES) if salt is None else salt,
            version=version,
            key_id=key_id,
        )
        out._values = np.sort(out._hash(tokens))
        return out

    def _hash(self, tokens: Sequence[bytes]) -> U64:
        return scale(hash64(tokens, self.salt), self.bound)

    def __len__(self) -> int:
        return int(self._values.shape[0])

    @property
    def fpr(self) -> float:
        """The false-positive rate per query now: distinct values over the universe."""
        distinct = int(np.count_nonzero(np.diff(self._values))) + 1 if len(self) else 0
        return distinct / self.bound

    @property
    def bits_per_entry(self) -> float:
        """Serialised size in bits divided by the number of entries."""
        return 8 * len(self.to_bytes()) / max(len(self), 1)

    def contains_many(self, tokens: Sequence[bytes]) -> Bools:
        """Whether each token may be registered (no false negatives; fpr false positives)."""
        q = self._hash(tokens)
        if not len(self):
            return np.zeros(q.shape[0], dtype=np.bool_)
        pos = np.minimum(np.searchsorted(self._values, q), len(self) - 1)
        hit: Bools = self._values[pos] == q
        return hit

    def add_many(self, tokens: Sequence[bytes]) -> None:
        """Add tokens (a new version unless empty). Raises InvalidInput for bad tokens."""
        added = np.sort(self._hash(tokens))
        if added.size:
            self._values = np.insert(self._values, np.searchsorted(self._values, added), added)
            self._record(added, np.zeros(0, dtype=np.uint64))

    def remove_many(self, tokens: Sequence[bytes]) -> None:
        """Remove tokens that were added; values not present are ignored.

        Only remove registered tokens: an unregistered token that collides with a registered
        one would take its value out.
        """
        removed = self._remove_values(np.sort(self._hash(tokens)))
        if removed.size:
            self._record(np.zeros(0, dtype=np.uint64), removed)

    def _remove_values(self, drop: U64) -> U64:
        """Remove one occurrence per given value (as far as present); return what went."""
        if not drop.size or not len(self):
            return np.zeros(0, dtype=np.uint64)
        uniq, want = np.unique(drop, return_counts=True)
        left = np.searchsorted(self._values, uniq, side="left")
        have = np.searchsorted(self._values, uniq, side="right") - left
        take = np.minimum(want, have)
        starts = np.repeat(left, take)
        within = np.arange(starts.shape[0]) - np.repeat(np.cumsum(take) - take, take)
        self._values = np.delete(self._values, starts + within)
        return np.repeat(uniq, take)

    def _record(self, added: U64, removed: U64) -> None:
        self.version += 1
        self._history.append((self.version, added, removed))
        while len(self._history) > self.history_limit:
            self._base_version = self._history.pop(0)[0]

    def to_bytes(self) -> bytes:
        """Serialise (header, Rice-coded streams, checksum); cached per version."""
        if self._encoded is not None and self._encoded[0] == self.version:
            return self._encoded[1]
        k = _gcs.choose_k(self._values)
        unary, cols, bits = _gcs.encode(self._values, k)
        head = _GCS_HEAD.pack(
            _GCS_MAGIC,
            FORMAT_VERSION,
            k,
            0,
            self.version,
            len(self),
            self.bound,
            self.salt,
            len(unary),
        )
        data = _seal(head + _label(self.key_id) + unary + cols + bits)
        self._encoded = (self.version, data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> GolombFilter:
        """Decode :meth:`to_bytes` output. Raises MalformedMessage for anything else."""
        fields, payload = _unseal(data, _GCS_MAGIC, _GCS_HEAD)
        _, _, k, reserved, version, n, bound, salt, unary_len = fields
        if reserved != 0 or k > _gcs.MAX_K or not 1 <= bound <= _MAX_BOUND:
            raise MalformedMessage("filter parameters out of range")
        key_id, payload = _take_label(payload)
        kb, kr = divmod(k, 8)
        if len(payload) != unary_len + n * kb + -(-(n * kr) // 8):
            raise MalformedMessage("filter length does not match its header")
        cols_at = unary_len + n * kb
        values = _gcs.decode(
            n,
            bound,
            k,
            unary_b=payload[:unary_len],
            cols_b=payload[unary_len:cols_at],
            bits_b=payload[cols_at:],
        )
        return cls(bound=bound, salt=salt, values=values, version=version, key_id=key_id)

    def delta(self, since_version: int) -> bytes:
        """A patch taking a client at ``since_version`` to this filter's version.

        Raises:
            InvalidInput: the history no longer reaches back to ``since_version``.
        """
        self._check_since(since_version)
        adds = [a for v, a, _ in self._history if v > since_version]
        rems = [r for v, _, r in self._history if v > since_version]
        empty = np.zeros(0, dtype=np.uint64)
        add = np.concatenate([empty, *adds])
        rem = np.concatenate([empty, *rems])
        # Net multiset change: a value added then removed (or the reverse) cancels out.
        both = np.concatenate([add, rem])
        sign = np.concatenate([np.ones(add.shape[0], np.int64), -np.ones(rem.shape[0], np.int64)])
        uniq, inv = np.unique(both, return_inverse=True)
        net = np.bincount(inv.reshape(-1), weights=sign, minlength=uniq.shape[0]).astype(np.int64)
        net_add = np.repeat(uniq, np.maximum(net, 0))
        net_rem = np.repeat(uniq, np.maximum(-net, 0))
        return self._frame_delta(since_version, net_add, net_rem, 0)

    @classmethod
    def encoded_only(cls, data: bytes) -> GolombFilter:
        """A filter that keeps only its serialised form (a publisher's cache): it answers
        :meth:`to_bytes`, :attr:`checksum` and :meth:`delta_from`, not membership queries.

        Raises:
            MalformedMessage: ``data`` is not a whole Golomb filter.
        """
        fields, payload = _unseal(data, _GCS_MAGIC, _GCS_HEAD)
        _, _, _k, _reserved, version, _n, bound, salt, _unary = fields
        key_id, _ = _take_label(payload)
        out = cls(bound=bound, salt=salt, version=version, key_id=key_id)
        out._encoded = (out.version, bytes(data))
        return out

    def delta_from(self, since_version: int, added: U64, removed: U64) -> bytes:
        """A patch from ``since_version`` whose net change the caller knows (a server that
        keeps its history outside the filter, e.g. as feed positions); the client proves it
        landed on this filter by its checksum.

        Args:
            since_version: the version the client holds.
            added: filter values (already scaled to this filter's bound) to add.
            removed: filter values to remove.
        """
        return self._frame_delta(
            since_version, np.asarray(added, np.uint64), np.asarray(removed, np.uint64), 0
        )

    def apply_delta(self, data: bytes) -> None:
        """Apply a server patch; afterwards this filter equals the server's, checksum-proved.

        Raises:
            MalformedMessage: the patch does not decode or does not reproduce the server's
                filter (the filter is then left unchanged).
            InvalidInput: the patch starts at another version.
        """
        to, target, add, rem, _ = self._parse_delta(data)
        if (add.size and int(add.max()) >= self.bound) or (
            rem.size and int(rem.max()) >= self.bound
        ):
            raise MalformedMessage("delta value out of range")
        saved = (self._values, self.version, self._encoded)
        gone = self._remove_values(np.sort(rem))
        add = np.sort(add)
        self._values = np.insert(self._values, np.searchsorted(self._values, add), add)
        self.version = to
        if gone.shape[0] != rem.shape[0] or not hmac.compare_digest(self.checksum, target):
            self._values, self.version, self._encoded = saved
            raise MalformedMessage("delta does not reproduce the server's filter")
        self._history.clear()
        self._base_version = self.version


class BloomFilter(_Versioned):
    """A pybloom-live Bloom filter (the well-known baseline) with versions and deltas.

    A server-built filter also keeps a byte counter per bit, so it can remove tokens (a bit
    clears when its last token goes); filters decoded from bytes are read-only copies that
    follow the server through :meth:`apply_delta`.
    """

    KIND: ClassVar[int] = 2

    def __init__(
        self,
        capacity: int,
        fpr: float = 1e-3,
        *,
        version: int = 0,
        key_id: str = "",
        history_limit: int = 1024,
    ) -> None:
        """An empty filter sized for ``capacity`` tokens at ``fpr`` (see GolombFilter.build).

        Raises:
            InvalidInput: ``capacity < 1`` or ``fpr`` not in (0, 1).
        """
        if capacity < 1 or not 0.0 < fpr < 1.0 or math.isnan(fpr):
            raise InvalidInput("capacity must be >= 1 and fpr in (0, 1)")
        _label(key_id)
        try:
            _bloom_sizing(capacity, fpr)
        except (OverflowError, ValueError, ZeroDivisionError) as exc:
            raise InvalidInput("fpr is too small for a Bloom filter") from exc
        self.key_id = key_id
        self._bf = pybloom_live.BloomFilter(capacity=capacity, error_rate=fpr)
        self._counts: npt.NDArray[np.uint8] | None = np.zeros(self._bf.num_bits, dtype=np.uint8)
        self.version = self._base_version = int(version)
        self.history_limit = history_limit
        self._history: list[tuple[int, U64]] = []
        self._encoded: tuple[int, bytes] | None = None

    @classmethod
    def build(
        cls,
        tokens: Sequence[bytes],
        *,
        fpr: float = 1e-3,
        capacity: int | None = None,
        version: int = 0,
        key_id: str = "",
    ) -> BloomFilter:
        """Build from registered tokens (sized for ``capacity``, default ``len(tokens)``)."""
        cap = max(len(tokens) if capacity is None else capacity, 1)
        out = cls(cap, fpr, version=version, key_id=key_id)
        out._change(tokens, +1, record=False)
        return out

    def __len__(self) -> int:
        return int(self._bf.count)

    @property
    def fpr(self) -> float:
        """The false-positive rate the filter was sized for (at capacity)."""
        return float(self._bf.error_rate)

    @property
    def num_bits(self) -> int:
        """Size of the bit array."""
        return int(self._bf.num_bits)

    @property
    def bits_per_entry(self) -> float:
        """Serialised size in bits divided by the number of entries."""
        return 8 * len(self.to_bytes()) / max(len(self), 1)

    def _positions(self, tokens: Sequence[bytes]) -> U64:
        pack_tokens(tokens)  # validate
        per = self._bf.bits_per_slice
        out = [
            i * per + h for t in tokens for i, h in enumerate(self._bf.make_hashes(bytes(t).hex()))
        ]
        return np.asarray(out, dtype=np.uint64)

    def contains_many(self, tokens: Sequence[bytes]) -> Bools:
        """Whether each token may be registered (no false negatives)."""
        pack_tokens(tokens)
        bf = self._bf
        out: Bools = np.fromiter((bytes(t).hex() in bf for t in tokens), np.bool_, len(tokens))
        return out

    def add_many(self, tokens: Sequence[bytes]) -> None:
        """Add tokens (a new version unless empty). Raises InvalidInput if read-only."""
        self._change(tokens, +1, record=True)

    def remove_many(self, tokens: Sequence[bytes]) -> None:
        """Remove tokens that were added (only those!). Raises InvalidInput if read-only."""
        self._change(tokens, -1, record=True)

    def _change(self, tokens: Sequence[bytes], sign: int, *, record: bool) -> None:
        if self._counts is None:
            raise InvalidInput("a filter decoded from bytes is read-only; apply deltas instead")
        if not len(tokens):
            pack_tokens(tokens)
            return
        step = np.bincount(self._positions(tokens).astype(np.intp))
        touched = np.flatnonzero(step)
        old = self._counts[touched].astype(np.int64)
        if sign > 0:
            # Saturated counters never go down again: a bit may stay set, never clear wrongly.
            new = np.minimum(old + step[touched], 255)
        else:
            new = np.where(old < 255, np.maximum(old - step[touched], 0), old)
        self._counts[touched] = new.astype(np.uint8)
        # On a server filter a bit is set exactly when its counter is non-zero.
        flips = touched[(old > 0) != (new > 0)].astype(np.uint64)
        self._flip(flips)
        self._bf.count = max(0, self._bf.count + sign * len(tokens))
        if record:
            self.version += 1
            self._history.append((self.version, flips))
            while len(self._history) > self.history_limit:
                self._base_version = self._history.pop(0)[0]

    def _flip(self, positions: U64) -> None:
        if not positions.size:
            return
        ba = self._bf.bitarray
        if positions.shape[0] < 4096:
            for p in positions.tolist():
                ba[p] = not ba[p]
            return
        arr = np.frombuffer(self._bf.bitarray.tobytes(), dtype=np.uint8).copy()
        np.bitwise_xor.at(
            arr,
            (positions >> np.uint64(3)).astype(np.intp),
            (1 << (positions & np.uint64(7))).astype(np.uint8),
        )
        fresh = bitarray(endian="little")
        fresh.frombytes(arr.tobytes())
        del fresh[self._bf.num_bits :]
        self._bf.bitarray = fresh

    def to_bytes(self) -> bytes:
        """Serialise (header with pybloom-live parameters, bit array, checksum)."""
        if self._encoded is not None and self._encoded[0] == self.version:
            return self._encoded[1]
        bf = self._bf
        head = _BLOOM_HEAD.pack(
            _BLOOM_MAGIC,
            FORMAT_VERSION,
            0,
            self.version,
            bf.capacity,
            bf.error_rate,
            bf.count,
            bf.num_slices,
            bf.bits_per_slice,
        )
        data = _seal(head + _label(self.key_id) + bf.bitarray.tobytes())
        self._encoded = (self.version, data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Decode :meth:`to_bytes` output (read-only). Raises MalformedMessage otherwise."""
        fields, payload = _unseal(data, _BLOOM_MAGIC, _BLOOM_HEAD)
        _, _, reserved, version, capacity, rate, count, slices, per_slice = fields
        if reserved != 0 or capacity < 1 or not 0.0 < rate < 1.0:
            raise MalformedMessage("filter parameters out of range")
        key_id, payload = _take_label(payload)
        # Recompute pybloom-live's sizing before allocating: the hash functions depend on it.
        try:
            want_slices, want_per = _bloom_sizing(capacity, rate)
        except (OverflowError, ValueError, ZeroDivisionError) as exc:
            raise MalformedMessage("filter parameters out of range") from exc
        if (slices, per_slice) != (want_slices, want_per):
            raise MalformedMessage("filter parameters are inconsistent")
        num_bits = slices * per_slice
        if len(payload) != -(-num_bits // 8):
            raise MalformedMessage("filter length does not match its header")
        tail = num_bits % 8
        if tail and payload[-1] >> tail:
            raise MalformedMessage("filter padding bits are not zero")
        out = cls.__new__(cls)
        bf = pybloom_live.BloomFilter.__new__(pybloom_live.BloomFilter)
        bf._setup(rate, slices, per_slice, capacity, count)
        ba = bitarray(endian="little")
        ba.frombytes(payload)
        del ba[num_bits:]
        bf.bitarray = ba
        out._bf = bf
        out.key_id = key_id
        out._counts = None
        out.version = out._base_version = version
        out.history_limit = 0
        out._history = []
        out._encoded = None
        return out

    def delta(self, since_version: int) -> bytes:
        """A patch of bit flips taking a client at ``since_version`` to this version.

        Raises:
            InvalidInput: the history no longer reaches back to ``since_version``.
        """
        self._check_since(since_version)
        empty = np.zeros(0, dtype=np.uint64)
        flips = np.concatenate([empty, *(f for v, f in self._history if v > since_version)])
        uniq, times = np.unique(flips, return_counts=True)
        # A bit flipped an even number of times since then is back where it was.
        return self._frame_delta(since_version, uniq[times % 2 == 1], empty, len(self))

    def apply_delta(self, data: bytes) -> None:
        """Apply a server patch; the result is checksum-proved equal to the server's filter.

        Raises:
            MalformedMessage: the patch does not decode or does not reproduce the server's
                filter (the filter is then left unchanged).
            InvalidInput: the patch starts at another version.
        """
        to, target, flips, second, count = self._parse_delta(data)
        if second.size or (flips.size and int(flips.max()) >= self.num_bits):
            raise MalformedMessage("delta bit position out of range")
        if np.unique(flips).shape[0] != flips.shape[0]:
            raise MalformedMessage("delta repeats a bit position")
        saved = (
            self._bf.bitarray.copy(),
            self._bf.count,
            self.version,
            self._encoded,
            self._counts,
        )
        self._flip(flips)
        self._bf.count = count
        self.version = to
        self._counts = None
        if not hmac.compare_digest(self.checksum, target):
            ba, self._bf.count, self.version, self._encoded, self._counts = saved
            self._bf.bitarray = ba
            raise MalformedMessage("delta does not reproduce the server's filter")
        self._history.clear()
        self._base_version = self.version


def is_delta(data: bytes) -> bool:
    """Whether ``data`` is a delta (:meth:`GolombFilter.delta`) rather than a whole filter."""
    return bytes(data[:4]) == _DELTA_MAGIC


def peek_version(data: bytes) -> tuple[int, int | None]:
    """The version a filter blob brings a client to, and a delta's base version, read from
    the fixed header without decoding the payload (servers answer this per request).

    Every header here starts ``magic (4) | format (2) | kind, reserved (2) | u64``: the
    version of a whole filter, or the base version of a delta, whose target follows.

    Returns:
        ``(version, None)`` for a whole filter, ``(to_version, since)`` for a delta.

    Raises:
        MalformedMessage: the blob is too short or not a contactmatch filter.
    """
    magic = bytes(data[:4])
    if len(data) < 24 or magic not in (_GCS_MAGIC, _BLOOM_MAGIC, _DELTA_MAGIC):
        raise MalformedMessage("not a contactmatch filter")
    first = int.from_bytes(data[8:16], "little")
    if magic == _DELTA_MAGIC:
        return int.from_bytes(data[16:24], "little"), first
    return first, None


def load_filter(data: bytes) -> GolombFilter | BloomFilter:
    """Decode either filter by its magic. Raises MalformedMessage for anything else."""
    magic = bytes(data[:4]) if isinstance(data, bytes | bytearray | memoryview) else b""
    if magic == _GCS_MAGIC:
        return GolombFilter.from_bytes(data)
    if magic == _BLOOM_MAGIC:
        return BloomFilter.from_bytes(data)
    raise MalformedMessage("not a contactmatch filter")


def build_filter(
    tokens: Sequence[bytes],
    *,
    fpr: float = 2.0**-32,
    kind: FilterKind = "gcs",
    version: int = 0,
    key_id: str = "",
) -> bytes:
    """Build and serialise a filter of registered tokens in one call.

    Args:
        tokens: the registered tokens.
        fpr: false-positive rate per query.
        kind: ``"gcs"`` (compact, the default) or ``"bloom"`` (pybloom-live baseline).
        version: the version number written into the filter.
        key_id: names the key the tokens were made under (published).

    Returns:
        The serialised filter; :func:`load_filter` reads it back.

    Raises:
        InvalidInput: bad tokens or parameters.
    """
    if kind == "gcs":
        return GolombFilter.build(tokens, fpr=fpr, version=version, key_id=key_id).to_bytes()
    if kind == "bloom":
        return BloomFilter.build(tokens, fpr=fpr, version=version, key_id=key_id).to_bytes()
    raise InvalidInput("filter kind must be 'gcs' or 'bloom'")
