"""The in-memory table of registered tokens: the plain reference the registry is tested against.

:class:`TokenTable` keeps one Python object per user, so servers use the compact
:class:`~contactmatch.registry.table.RegistryTable` instead; this one stays as the simple,
obviously-correct reference (tests and ``bench_registry`` compare the two). The bucket and
seal derivations it uses live in :mod:`contactmatch.schemes.sealed` and are re-exported here
for the 0.2 import path.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Sequence

import numpy as np

from contactmatch.errors import MalformedMessage
from contactmatch.index import TokenIndex
from contactmatch.schemes.sealed import (
    bits_for,
    bucket32,
    bucket_of,
    fingerprint_of,
    open_sealed,
    seal_user_id,
)

__all__ = [
    "TokenTable",
    "bits_for",
    "bucket_of",
    "fingerprint_of",
    "open_sealed",
    "seal_user_id",
]


class TokenTable:
    """Registered tokens ↔ user ids, with fast batch lookup and bucket queries.

    The vectorised :class:`~contactmatch.index.TokenIndex` screens queries by fingerprint and
    this table, acting as its :class:`~contactmatch.index.TokenSource`, confirms each hit
    against the full token (constant-time), so a false match is impossible. Row ids are
    recycled after removal. Thread-safe: one lock around every read and mutation.
    """

    def __init__(self, *, uniform_tokens: bool = False) -> None:
        self._lock = threading.RLock()
        self._row_of_user: dict[str, int] = {}
        self._tokens: list[bytes | None] = []
        self._users: list[str | None] = []
        # Per row, what a bucket answer lists: computed once at registration, not per request.
        self._entries: list[tuple[bytes, bytes] | None] = []
        self._bucket_keys = np.zeros(0, dtype=np.uint32)
        self._free: list[int] = []
        # Keyed tokens are already uniform: their first 8 bytes make a fine fingerprint and
        # save a hash per query; public ones (plain E.164 bytes) need the salted hash.
        self._index = TokenIndex(fingerprint="prefix" if uniform_tokens else "hash", source=self)
        self._buckets: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._row_of_user)

    # TokenSource protocol, called by the index with the lock held.
    def confirm(self, tokens: Sequence[bytes], row_ids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(tokens), dtype=np.bool_)
        held = self._tokens
        for i, (t, r) in enumerate(zip(tokens, row_ids.tolist(), strict=True)):
            h = held[r] if r < len(held) else None
            out[i] = h is not None and hmac.compare_digest(h, t)
        return out

    def add(self, user_ids: Sequence[str], tokens: Sequence[bytes]) -> list[bytes]:
        """Register (or re-register) users; a token held by another user moves to this one.

        Returns:
            The tokens that left the table on the way (the users' previous tokens), so that a
            published filter can drop them.
        """
        if len(user_ids) != len(tokens):
            raise MalformedMessage("user_ids and tokens differ in length")
        if len(set(user_ids)) != len(user_ids):
            raise MalformedMessage("a user id appears twice in one batch")
        if len(set(tokens)) != len(tokens):
            raise MalformedMessage("a token appears twice in one batch")
        with self._lock:
            gone = self.remove([u for u in user_ids if u in self._row_of_user])
            rows_now = self._index.lookup_many(list(tokens))
            holders = [self._users[r] for r in rows_now.tolist() if r >= 0]
            gone += self.remove([u for u in holders if u is not None])
            rows = []
            for uid, tok in zip(user_ids, tokens, strict=True):
                entry = (fingerprint_of(tok), seal_user_id(tok, uid))
                if self._free:
                    r = self._free.pop()
                    self._tokens[r], self._users[r], self._entries[r] = tok, uid, entry
                else:
                    r = len(self._tokens)
                    self._tokens.append(tok)
                    self._users.append(uid)
                    self._entries.append(entry)
                self._row_of_user[uid] = r
                rows.append(r)
            if len(self._bucket_keys) < len(self._tokens):
                grown = np.zeros(max(len(self._tokens), 2 * len(self._bucket_keys)), np.uint32)
                grown[: len(self._bucket_keys)] = self._bucket_keys
                self._bucket_keys = grown
            self._bucket_keys[rows] = [bucket32(t) for t in tokens]
            self._index.add_many(list(tokens), np.asarray(rows, dtype=np.uint32))
            self._buckets = None
            new = set(tokens)
            return [t for t in gone if t not in new]

    def remove(self, user_ids: Sequence[str]) -> list[bytes]:
        """Unregister users; returns their tokens (for filter deltas)."""
        with self._lock:
            rows = [r for u in user_ids if (r := self._row_of_user.pop(u, None)) is not None]
            gone = [t for r in rows if (t := self._tokens[r]) is not None]
            if gone:
                self._index.remove_many(gone)
                for r in rows:
                    self._tokens[r] = None
                    self._users[r] = None
                    self._entries[r] = None
                    self._free.append(r)
                self._buckets = None
            return gone

    def users(self) -> list[str]:
        """Every registered user id."""
        with self._lock:
            return list(self._row_of_user)

    def token_of(self, user_id: str) -> bytes | None:
        with self._lock:
            r = self._row_of_user.get(user_id)
            return None if r is None else self._tokens[r]

    def tokens(self) -> list[bytes]:
        with self._lock:
            return [t for t in self._tokens if t is not None]

    def lookup(self, tokens: Sequence[bytes]) -> list[str | None]:
        """User id per token, None where unregistered."""
        with self._lock:
            rows = self._index.lookup_many(list(tokens)).tolist() if tokens else []
            return [self._users[r] if r >= 0 else None for r in rows]

    def _bucket_view(self) -> tuple[np.ndarray, np.ndarray]:
        if self._buckets is None:
            live = np.fromiter(
                (t is not None for t in self._tokens), dtype=np.bool_, count=len(self._tokens)
            )
            rows = np.flatnonzero(live)
            keys = self._bucket_keys[rows]
            order = np.argsort(keys, kind="stable")
            self._buckets = (keys[order], rows[order])
        return self._buckets

    def bucket(self, prefixes: Sequence[int], bits: int) -> list[list[tuple[bytes, bytes]]]:
        """Per prefix, the (fingerprint, sealed user id) of every registered token in it."""
        with self._lock:
            keys, rows = self._bucket_view()
            entries = self._entries
            if not bits:
                return [[e for r in rows.tolist() if (e := entries[r]) is not None]] * len(prefixes)
            shift = 32 - bits
            p = np.asarray(prefixes, dtype=np.uint64)
            lo = np.searchsorted(keys, p << shift, side="left").tolist()
            hi = np.searchsorted(keys, (p + 1) << shift, side="left").tolist()
            return [
                [e for r in rows[a:b].tolist() if (e := entries[r]) is not None]
                for a, b in zip(lo, hi, strict=True)
            ]
