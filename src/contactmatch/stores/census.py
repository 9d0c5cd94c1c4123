"""The key census: how many registrations each OPRF key id and each data-key id covers.

Every adapter moves the census in the same transaction (or atomic step) as the rows it counts,
so it stays exact and costs a few rows whatever the number of users; the service compares it
with the keys it holds at start-up (``docs/storage.md``, Key census). These helpers turn a
batch of ``(key id, wrapped key)`` pairs into counter deltas and counter rows back into a
:class:`~contactmatch.stores.records.KeyCensus`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from contactmatch.stores.records import KeyCensus, is_key_id

__all__ = ["CENSUS_DATA", "CENSUS_OPRF", "census_deltas", "census_from", "wrapped_key_id"]

_WRAP_VERSION = 2  # contactmatch.atrest.BLOB_VERSION


def wrapped_key_id(wrapped: bytes) -> str:
    """The data-key id in a wrapped user key's header, or ``""`` if the header does not parse.

    Mirrors the layout of :mod:`contactmatch.atrest` (``0x02 | len | key id | ...``) without
    importing it: stores treat the blob as opaque except for this census of key ids.
    """
    if len(wrapped) < 2 or wrapped[0] != _WRAP_VERSION:
        return ""
    n = wrapped[1]
    kid = wrapped[2 : 2 + n]
    if len(kid) != n or not kid.isascii():
        return ""
    text = kid.decode("ascii")
    return text if is_key_id(text) else ""


#: Census kinds as the SQL adapters store them: OPRF (token) key ids and data-key ids.
CENSUS_OPRF, CENSUS_DATA = 0, 1


def census_deltas(
    added: Iterable[tuple[str, bytes]], removed: Iterable[tuple[str, bytes]] = ()
) -> dict[tuple[int, str], int]:
    """Key-census changes for registrations added and removed, as ``(key id, wrapped key)``.

    Returns ``{(kind, key id): delta}`` without zero deltas (a replacement under the same keys
    changes nothing). Wrapped keys are grouped by their header bytes first, so a batch of a
    million users sharing one data key parses one header, not a million.
    """
    out: Counter[tuple[int, str]] = Counter()
    for pairs, sign in ((added, 1), (removed, -1)):
        kids: Counter[str] = Counter()
        heads: Counter[bytes] = Counter()
        for kid, wk in pairs:
            kids[kid] += 1
            heads[wk[: 2 + wk[1]] if len(wk) > 1 else wk] += 1
        for kid, n in kids.items():
            out[(CENSUS_OPRF, kid)] += sign * n
        for head, n in heads.items():
            out[(CENSUS_DATA, wrapped_key_id(head))] += sign * n
    return {k: n for k, n in out.items() if n}


def census_from(rows: Iterable[tuple[int, str, int]]) -> KeyCensus:
    """A :class:`KeyCensus` from ``(kind, key id, count)`` rows (rows counting 0 left out)."""
    oprf: dict[str, int] = {}
    data: dict[str, int] = {}
    for kind, kid, n in rows:
        if n:
            (oprf if kind == CENSUS_OPRF else data)[kid] = int(n)
    return KeyCensus(oprf=oprf, data=data)
