"""Published filters whose versions name their content, in every process and after restarts.

A filter's version is a 53-bit digest of what it holds: the multiset of its registered
tokens' hashes and its bound. Its parameters are functions of that membership alone (the salt
comes from the key id, :func:`~contactmatch.registry._derive.filter_salt`, and the bound from
the registry's size, :func:`capacity_for`), so every process that holds the same membership
publishes byte-identical filters under the same version — whichever feed entries it applied
in which batches, before or after a restart — and two different contents never share a
version (up to a 2**-53 chance). ``published_filter(since=V)``, the HTTP ETag and a client's
``filter_stale`` therefore mean the same thing on every process. A ``since`` this process
never held gets the whole filter; a ``304`` is only ever answered for the same content.

The digest is a sum of a 64-bit mix of each hash, so a change costs in proportion to the
change: add the mixes of what joined, subtract those of what left.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contactmatch._memory import trim
from contactmatch.errors import InvalidInput
from contactmatch.filters import GolombFilter
from contactmatch.registry._ops import cancel
from contactmatch.registry.table import HashDelta, RegistryTable

__all__ = ["FilterPublisher", "capacity_for", "first_step_after"]

U64 = npt.NDArray[np.uint64]
_MIN_CAPACITY = 1024


def capacity_for(users: int) -> int:
    """The entries a filter of ``users`` registered users is sized for.

    A power of two with room to grow (at least 1.5x the users), so it changes only when the
    registry crosses a power of two and every process computes the same one from the same
    membership. A change of capacity changes every value: clients then download it whole.
    """
    need = max(_MIN_CAPACITY, math.ceil(users * 1.5))
    return 1 << (need - 1).bit_length()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(h: U64) -> U64:
    """SplitMix64's finaliser over an array (wrapping uint64 arithmetic)."""
    z = h + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: U64 = z ^ (z >> np.uint64(31))
    return out


def _mix_sum(h: U64) -> int:
    """Sum of the mixed values modulo 2**64 (order-free, so a multiset digest)."""
    if not h.shape[0]:
        return 0
    with np.errstate(over="ignore"):
        return int(_mix(h.astype(np.uint64, copy=False)).sum(dtype=np.uint64))


def content_version(acc: int, bound: int, count: int) -> int:
    """The version of a filter holding a multiset with mix-sum ``acc`` at ``bound``."""
    with np.errstate(over="ignore"):
        parts = np.array([acc, bound, count], dtype=np.uint64)
        a, b, c = (int(x) for x in _mix(parts))
        v = int(_mix(np.array([(a ^ (b * 3) ^ (c * 7)) & (2**64 - 1)], dtype=np.uint64))[0])
    # 53 bits: exact in JSON numbers (JavaScript clients), still 2**-53 per pair of contents.
    return (v >> 11) or 1


class _Versioned(Protocol):
    @property
    def since(self) -> int: ...
    @property
    def version(self) -> int: ...


def first_step_after(steps: Sequence[_Versioned], since: int) -> int | None:
    """Index of the first step that leads away from content ``since``, at the latest time
    this process held it (a content can come back); None if it never held it."""
    for i in range(len(steps) - 1, -1, -1):
        if steps[i].version == since:
            return i + 1
        if steps[i].since == since:
            return i
    return None


@dataclass(frozen=True, slots=True)
class _Step:
    since: int  # the version this step started from
    version: int
    added: U64  # filter values at the current bound
    removed: U64


class FilterPublisher:
    """The filter of one registry at one false-positive rate, with a bounded delta history.

    Args:
        table: the registry whose membership it publishes.
        fpr: false-positive rate at the capacity :func:`capacity_for` gives.
        history: how many changes to keep for deltas.
    """

    def __init__(self, table: RegistryTable, *, fpr: float, history: int = 1024) -> None:
        if not 0.0 < fpr < 1.0:
            raise InvalidInput("fpr must be in (0, 1)")
        self.fpr = fpr
        self._lock = threading.Lock()
        self._steps: deque[_Step] = deque(maxlen=history)
        self._filter: GolombFilter | None = None
        self._table = table
        self._acc = _mix_sum(table.sorted_hashes())
        trim()  # a copy of the hashes and the mixing scratch: 8+ bytes per user, transient
        self._count = len(table)
        self._bound = self._bound_for(self._count)
        # Read on every request (info, discovery answers, conditional GETs): kept, not
        # recomputed; it changes only in advance().
        self._version = content_version(self._acc, self._bound, self._count)

    def _bound_for(self, users: int) -> int:
        return math.ceil(capacity_for(users) / self.fpr)

    @property
    def version(self) -> int:
        """The version of the content published now (a digest of it; never 0)."""
        return self._version

    def advance(self, delta: HashDelta) -> None:
        """Take in a change of the membership (``delta`` from :meth:`RegistryTable.apply`)."""
        if not delta:
            return
        with self._lock:
            before = self.version
            mask = 2**64 - 1
            self._acc = (self._acc + _mix_sum(delta.added) - _mix_sum(delta.removed)) & mask
            self._count += int(delta.added.shape[0]) - int(delta.removed.shape[0])
            bound = self._bound_for(self._count)
            moved = bound != self._bound
            self._bound = bound
            self._version = content_version(self._acc, self._bound, self._count)
            if moved:
                self._steps.clear()  # every value moves: no delta reaches across
            else:
                added, removed = delta.scaled(bound)
                self._steps.append(_Step(before, self._version, np.sort(added), np.sort(removed)))
            self._filter = None

    def rebase(self, table: RegistryTable) -> None:
        """Read the same membership from another table object (see TokenRegistry.rebase)."""
        with self._lock:
            self._table = table

    def _current(self) -> GolombFilter:
        """The current filter, encoded. Only its bytes are kept (about 2.7 bytes per user
        at 2**-20), not its sorted values (8 bytes per user): deltas need its checksum,
        which the bytes carry."""
        f = self._filter
        if f is None:
            built = GolombFilter(
                bound=self._bound,
                salt=self._table.salt,
                values=self._table.filter_values(self._bound),
                version=self.version,
                key_id=self._table.key_id,
            )
            f = GolombFilter.encoded_only(built.to_bytes())
            del built
            trim()  # the values and the encoder's scratch arrays were tens of MB at 10^6
            self._filter = f
        return f

    def published(self, since: int | None = None) -> bytes:
        """The whole filter, or a delta from ``since`` when this process held that content.

        A ``since`` this process never held, or held before its remembered history or a
        change of capacity, gets the whole filter.
        """
        with self._lock:
            f = self._current()
            current = self.version
            if since is None or since == current or not self._steps:
                return f.to_bytes()
            steps = list(self._steps)
            start = first_step_after(steps, since)
            if start is None:
                return f.to_bytes()
            later = steps[start:]
            empty = np.zeros(0, dtype=np.uint64)
            added = np.concatenate([empty, *(st.added for st in later)])
            removed = np.concatenate([empty, *(st.removed for st in later)])
            net_add, net_rem = cancel(np.sort(added), np.sort(removed))
            return f.delta_from(since, net_add, net_rem)
