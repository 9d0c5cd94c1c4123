"""Bucket prefixes, fingerprints and sealed user ids: the derivations both sides share.

Bucket answers and personal (contacts-only) entries are lists of ``(fingerprint, sealed user
id)``. Prefixes and fingerprints are taken from a domain-separated SHA-256 of the token rather
than from the token itself, so every token function (including ``plain``, whose tokens are
ASCII digits) spreads uniformly over the buckets. A user id is *sealed* to its token: only a
client that already holds the token can read it, so an answer does not hand out the ids of
strangers who share a bucket, and the seal's check value confirms the full token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from math import floor, log2
from typing import Final

from contactmatch.errors import InvalidInput

__all__ = [
    "BUCKET_DOMAIN",
    "FINGERPRINT_DOMAIN",
    "SEAL_CHECK_BYTES",
    "SEAL_DOMAIN",
    "bits_for",
    "bucket32",
    "bucket_of",
    "fingerprint_of",
    "open_entries",
    "open_sealed",
    "seal_check",
    "seal_entries",
    "seal_user_id",
]

# Domain tags: the registry derives the same values in bulk (registry/_derive.py), so they
# are shared from here rather than copied, and the two can never drift apart.
BUCKET_DOMAIN: Final = b"contactmatch/bucket/v1"
FINGERPRINT_DOMAIN: Final = b"contactmatch/bucket-fp/v1"
SEAL_DOMAIN: Final = b"contactmatch/bucket-seal/v1"
SEAL_CHECK_BYTES: Final = 8


def bits_for(registry_size: int, anonymity: int) -> int:
    """Prefix bits k so that a bucket holds about ``anonymity`` registered users on average.

    k = floor(log2(N / anonymity)), clamped to 0..32: a smaller k gives larger buckets (more
    anonymity, more bytes down); the server republishes k as the registry grows.

    Raises:
        InvalidInput: ``anonymity`` is below 1.
    """
    if anonymity < 1:
        raise InvalidInput("anonymity must be >= 1")
    if registry_size <= anonymity:
        return 0
    return max(0, min(32, floor(log2(registry_size / anonymity))))


def bucket32(token: bytes) -> int:
    """The 32-bit bucket key of a token; a ``bits``-bit prefix is its top bits."""
    return int.from_bytes(hashlib.sha256(BUCKET_DOMAIN + token).digest()[:4], "big")


def bucket_of(token: bytes, bits: int) -> int:
    """The ``bits``-bit bucket prefix of a token."""
    return bucket32(token) >> (32 - bits) if bits else 0


def fingerprint_of(token: bytes) -> bytes:
    """The 8-byte fingerprint an answer lists for a token."""
    return hashlib.sha256(FINGERPRINT_DOMAIN + token).digest()[:8]


def _keystream(token: bytes, n: int) -> bytes:
    return hashlib.shake_256(SEAL_DOMAIN + token).digest(n)


def seal_check(token: bytes) -> bytes:
    """The check value every user id sealed to ``token`` starts with (PIR clients compare
    it against a whole column of slots at once)."""
    return _keystream(token, SEAL_CHECK_BYTES)


def seal_user_id(token: bytes, user_id: str) -> bytes:
    """Encrypt a user id to the token: XOR with a token-derived stream, plus a check value."""
    raw = user_id.encode("utf-8")
    stream = _keystream(token, len(raw) + SEAL_CHECK_BYTES)
    body = bytes(a ^ b for a, b in zip(raw, stream[SEAL_CHECK_BYTES:], strict=False))
    return stream[:SEAL_CHECK_BYTES] + body


def open_sealed(token: bytes, sealed: bytes) -> str | None:
    """The user id sealed to ``token``, or None if it was sealed to another token."""
    if len(sealed) <= SEAL_CHECK_BYTES:
        return None
    stream = _keystream(token, len(sealed))
    if not hmac.compare_digest(stream[:SEAL_CHECK_BYTES], sealed[:SEAL_CHECK_BYTES]):
        return None
    raw = bytes(
        a ^ b for a, b in zip(sealed[SEAL_CHECK_BYTES:], stream[SEAL_CHECK_BYTES:], strict=False)
    )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def seal_entries(
    tokens: Sequence[bytes], user_ids: Sequence[str]
) -> tuple[list[bytes], list[bytes]]:
    """The ``(fingerprints, sealed user ids)`` an answer lists for these registrations."""
    return (
        [fingerprint_of(t) for t in tokens],
        [seal_user_id(t, u) for t, u in zip(tokens, user_ids, strict=True)],
    )


def open_entries(
    tokens: Mapping[str, bytes], fingerprints: Sequence[bytes], sealed: Sequence[bytes]
) -> dict[str, str]:
    """The entries that belong to one of ``tokens``, opened: ``{number: user id}``.

    Only entries whose fingerprint is one of ours are opened: a 1,000-contact book receives
    tens of thousands of strangers' bucket entries, which are skipped unparsed. An entry opens
    only under the token it was sealed to, so a fingerprint collision is never a match.

    Args:
        tokens: the client's token of each of its numbers.
        fingerprints: the entries' fingerprints, aligned with ``sealed``.
        sealed: the entries' sealed user ids.
    """
    wanted: dict[bytes, list[str]] = {}
    for number, tok in tokens.items():
        wanted.setdefault(fingerprint_of(tok), []).append(number)
    out: dict[str, str] = {}
    for fp, box in zip(fingerprints, sealed, strict=True):
        owners = wanted.get(fp)
        if owners is None:
            continue
        for number in owners:
            uid = open_sealed(tokens[number], box)
            if uid is not None:  # the seal check confirms the full token
                out[number] = uid
    return out
