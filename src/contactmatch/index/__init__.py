"""The registered-token index: a bucket directory over 64-bit fingerprints, 32-bit row ids.

At most twelve bytes per registered user: each entry is one ``uint64`` (32 more bits of the
fingerprint's key beside the ``uint32`` row id), and a ``uint32`` directory with fewer slots
than entries says where each bucket of entries starts. The tokens themselves live in a
:class:`TokenSource` (the store, a memory-mapped :class:`TokenFile`, or the in-memory
:class:`MemoryTokens` default). A fingerprint hit is only a candidate: every hit is
confirmed against the full token, so a false match is impossible.

The package is split by idea: :mod:`~contactmatch.index.sources` (where tokens are
confirmed), ``_directory`` (the bucket directory), ``_index`` (:class:`TokenIndex`: queries,
updates, merges) and ``_file`` (the on-disk format). Import the names from here.
"""

from __future__ import annotations

from contactmatch.index._file import FingerprintMode
from contactmatch.index._index import TokenIndex
from contactmatch.index.sources import MemoryTokens, PackedTokenSource, TokenFile, TokenSource

__all__ = [
    "FingerprintMode",
    "MemoryTokens",
    "PackedTokenSource",
    "TokenFile",
    "TokenIndex",
    "TokenSource",
]
