"""Published filters of registered tokens: a Golomb-compressed set and a Bloom baseline.

A server publishes a filter; a client tests its own tokens locally and asks the server only
about hits. Both filters (:class:`Filter` is what they have in common):

* serialise to a versioned format: magic, format version, parameters, payload, and a trailing
  16-byte BLAKE2b checksum over everything before it;
* carry a ``version`` that every non-empty ``add_many`` / ``remove_many`` bumps, and produce a
  patch from any retained version (``delta``) that a client applies (``apply_delta``)
  to land on exactly the server's filter, proved by comparing checksums;
* raise :class:`~contactmatch.errors.MalformedMessage` for any bytes that fail to decode.

:class:`~contactmatch.filters.golomb.GolombFilter` is the compact one servers publish;
:class:`~contactmatch.filters.bloom.BloomFilter` is the baseline it is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

from contactmatch.errors import InvalidInput, MalformedMessage
from contactmatch.filters._format import BLOOM_MAGIC, DELTA_MAGIC, GCS_MAGIC
from contactmatch.filters.base import Filter, FilterKind
from contactmatch.filters.bloom import BloomFilter
from contactmatch.filters.golomb import GolombFilter

__all__ = [
    "BloomFilter",
    "Filter",
    "FilterKind",
    "GolombFilter",
    "build_filter",
    "is_delta",
    "load_filter",
    "peek_version",
]


def is_delta(data: bytes) -> bool:
    """Whether ``data`` is a delta (:meth:`GolombFilter.delta`) rather than a whole filter."""
    return bytes(data[:4]) == DELTA_MAGIC


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
    if len(data) < 24 or magic not in (GCS_MAGIC, BLOOM_MAGIC, DELTA_MAGIC):
        raise MalformedMessage("not a contactmatch filter")
    first = int.from_bytes(data[8:16], "little")
    if magic == DELTA_MAGIC:
        return int.from_bytes(data[16:24], "little"), first
    return first, None


def load_filter(data: bytes) -> Filter:
    """Decode either filter by its magic. Raises MalformedMessage for anything else."""
    magic = bytes(data[:4]) if isinstance(data, bytes | bytearray | memoryview) else b""
    if magic == GCS_MAGIC:
        return GolombFilter.from_bytes(data)
    if magic == BLOOM_MAGIC:
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
