"""The Bloom filter baseline (pybloom-live), with versions, deltas and removal.

Kept beside the Golomb set so the published filter is compared against the well-known
structure on the same workload (``bench_filters``); servers publish the Golomb set.
"""

from __future__ import annotations

import hmac
import math
import struct
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import pybloom_live
from bitarray import bitarray

from contactmatch._hashing import pack_tokens
from contactmatch.errors import InvalidInput, MalformedMessage
from contactmatch.filters._format import (
    BLOOM_MAGIC,
    FORMAT_VERSION,
    Versioned,
    label,
    seal,
    take_label,
    unseal,
)

__all__ = ["BloomFilter"]

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

# magic, format, reserved, version, capacity, error rate, count, slices, bits per slice
_BLOOM_HEAD = struct.Struct("<4sHHQQdQIQ")


def _bloom_sizing(capacity: int, rate: float) -> tuple[int, int]:
    """Slices and bits per slice exactly as pybloom-live derives them (its hashes depend on it).

    Raises:
        OverflowError: the rate is so small that the sizes are not finite.
    """
    slices = math.ceil(math.log(1.0 / rate, 2))
    per_slice = math.ceil(capacity * abs(math.log(rate)) / (slices * math.log(2) ** 2))
    return slices, per_slice


class BloomFilter(Versioned):
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
        label(key_id)
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
            BLOOM_MAGIC,
            FORMAT_VERSION,
            0,
            self.version,
            bf.capacity,
            bf.error_rate,
            bf.count,
            bf.num_slices,
            bf.bits_per_slice,
        )
        data = seal(head + label(self.key_id) + bf.bitarray.tobytes())
        self._encoded = (self.version, data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Decode :meth:`to_bytes` output (read-only). Raises MalformedMessage otherwise."""
        fields, payload = unseal(data, BLOOM_MAGIC, _BLOOM_HEAD)
        _, _, reserved, version, capacity, rate, count, slices, per_slice = fields
        if reserved != 0 or capacity < 1 or not 0.0 < rate < 1.0:
            raise MalformedMessage("filter parameters out of range")
        key_id, payload = take_label(payload)
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
