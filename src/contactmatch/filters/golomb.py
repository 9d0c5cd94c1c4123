"""The Golomb-compressed set: the compact published filter.

The sorted multiset of token hashes scaled to ``[0, capacity / fpr)``, Rice-coded. It needs
about ``log2(1/fpr) + 1.5`` bits per entry, so it is within 5% of the ``log2(1/fpr)`` lower
bound once ``fpr <= 2**-32`` (see docs/index-and-filters.md for the measured curve and why
not binary fuse).
"""

from __future__ import annotations

import hmac
import math
import os
import struct
from collections.abc import Sequence
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt

from contactmatch import _gcs
from contactmatch._hashing import SALT_BYTES, hash64, scale
from contactmatch.errors import InvalidInput, MalformedMessage
from contactmatch.filters._format import (
    FORMAT_VERSION,
    GCS_MAGIC,
    Versioned,
    label,
    seal,
    take_label,
    unseal,
)

__all__ = ["GolombFilter"]

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

# Universe bound: values must fit a uint64 (a wrapped running sum is caught in _gcs.decode).
_MAX_BOUND: Final = 2**64 - 1
# magic, format, rice k, reserved, version, entries, bound, salt, unary stream length
_GCS_HEAD = struct.Struct("<4sHBBQQQ16sQ")


class GolombFilter(Versioned):
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
        label(key_id)
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
            GCS_MAGIC,
            FORMAT_VERSION,
            k,
            0,
            self.version,
            len(self),
            self.bound,
            self.salt,
            len(unary),
        )
        data = seal(head + label(self.key_id) + unary + cols + bits)
        self._encoded = (self.version, data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> GolombFilter:
        """Decode :meth:`to_bytes` output. Raises MalformedMessage for anything else."""
        fields, payload = unseal(data, GCS_MAGIC, _GCS_HEAD)
        _, _, k, reserved, version, n, bound, salt, unary_len = fields
        if reserved != 0 or k > _gcs.MAX_K or not 1 <= bound <= _MAX_BOUND:
            raise MalformedMessage("filter parameters out of range")
        key_id, payload = take_label(payload)
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
        fields, payload = unseal(data, GCS_MAGIC, _GCS_HEAD)
        _, _, _k, _reserved, version, _n, bound, salt, _unary = fields
        key_id, _ = take_label(payload)
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
