"""What every published filter offers: the :class:`Filter` protocol and the filter kinds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Filter", "FilterKind"]

#: The filter kinds :func:`~contactmatch.filters.build_filter` makes.
FilterKind = Literal["gcs", "bloom"]


@runtime_checkable
class Filter(Protocol):
    """A versioned filter of registered tokens that clients test locally and patch by delta.

    :class:`~contactmatch.filters.golomb.GolombFilter` (published by servers) and
    :class:`~contactmatch.filters.bloom.BloomFilter` (the baseline) both satisfy it; code
    that only tests, patches or republishes a filter takes a ``Filter``, not either class.
    """

    #: Names the key the tokens were made under, so a client can tell a rotated key's filter.
    key_id: str
    #: The version these contents are; every change and every applied delta moves it.
    version: int

    def __len__(self) -> int:
        """Entries held."""
        ...

    @property
    def fpr(self) -> float:
        """The false-positive rate per query."""
        ...

    @property
    def checksum(self) -> bytes:
        """The trailing checksum of :meth:`to_bytes`: equal checksums, equal filters."""
        ...

    @property
    def bits_per_entry(self) -> float:
        """Serialised size in bits divided by the number of entries."""
        ...

    def contains_many(self, tokens: Sequence[bytes]) -> npt.NDArray[np.bool_]:
        """Whether each token may be registered (no false negatives)."""
        ...

    def add_many(self, tokens: Sequence[bytes]) -> None:
        """Add tokens (a new version unless empty)."""
        ...

    def remove_many(self, tokens: Sequence[bytes]) -> None:
        """Remove tokens that were added."""
        ...

    def to_bytes(self) -> bytes:
        """The serialised filter, checksum last."""
        ...

    def delta(self, since_version: int) -> bytes:
        """A patch taking a client at ``since_version`` to this version."""
        ...

    def apply_delta(self, data: bytes) -> None:
        """Apply a server patch, checksum-proved to land on the server's filter."""
        ...
