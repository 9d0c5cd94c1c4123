"""The registry of one token function: registered users in numpy columns, no object per user.

A table answers the three membership methods from the same rows:

* **lookup** screens tokens by their salted 64-bit hash (:meth:`RegistryTable.lookup_candidates`);
  the caller confirms the few candidates against the store, which returns the full token and
  the user id in one batched read. The table holds neither tokens nor user ids, so a false
  match is impossible by construction, not by care.
* **bucket** lists ``(fingerprint, sealed user id)`` of every row under a prefix
  (:meth:`RegistryTable.bucket`), as the bucket method and its clients define them.
* **filter** values are ``scale(h, bound)`` of the sorted hashes (:meth:`RegistryTable.
  filter_values`): any capacity, no tokens, and the same bytes in every process that holds the
  same membership, because the salt is derived from the key id.

State is an immutable :class:`~contactmatch.registry._columns.Base` (built in memory or mapped
from a snapshot file) plus a small :class:`~contactmatch.registry._overlay.Overlay` of changes,
so applying a change costs in proportion to the change, not to the registry. Readers take one
reference to the current state and never lock; writers are serialised by one lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contactmatch._hashing import SALT_BYTES, hash64, scale
from contactmatch.errors import InvalidInput
from contactmatch.registry._columns import (
    Base,
    base_from_rows,
    bucket_order,
    empty_base,
    merge,
)
from contactmatch.registry._derive import (
    check_key_id,
    derive,
    filter_salt,
    user_hashes,
)
from contactmatch.registry._ops import cancel, expand_ranges, is_member
from contactmatch.registry._overlay import Overlay
from contactmatch.registry.answers import BucketAnswer, HashDelta

__all__ = ["BucketAnswer", "HashDelta", "RegistryTable"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


@dataclass(frozen=True, slots=True)
class _State:
    base: Base
    overlay: Overlay


class RegistryTable:
    """Registered users of one token function, in numpy columns (see the module docstring).

    Build with :meth:`build` (or :meth:`empty`), or load from a snapshot with
    :func:`contactmatch.registry.snapshot.load`. Thread-safe: queries never block.

    Attributes:
        compact_at: fraction of the base rows the overlay may reach before :meth:`apply`
            folds it into a new in-memory base (``None``: never). The default bounds the
            overlay of a table nobody rebases; but compacting a mapped table moves its rows
            into anonymous memory (about 56 bytes a row), so a server sharing snapshots
            between processes rebases with :func:`~contactmatch.registry.snapshot.persist`
            (write a snapshot, map it back) before this bound, or sets ``None``.
        compact_min: the overlay is never compacted below this many changes.
    """

    def __init__(self, base: Base, *, key_id: str, user_salt: bytes) -> None:
        """Wrap a base (use :meth:`build`, :meth:`empty` or ``snapshot.load``)."""
        if len(user_salt) != SALT_BYTES:
            raise InvalidInput(f"user_salt must be {SALT_BYTES} bytes")
        self._key_id = check_key_id(key_id)
        self._salt = filter_salt(key_id)
        self._user_salt = bytes(user_salt)
        self._state = _State(base, Overlay.empty())
        self._write = threading.Lock()
        self.compact_at: float | None = 0.125
        self.compact_min = 65_536

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def empty(cls, *, key_id: str) -> RegistryTable:
        """A table with no users."""
        return cls(empty_base(), key_id=key_id, user_salt=os.urandom(SALT_BYTES))

    @classmethod
    def build(
        cls, user_ids: Sequence[str], tokens: Sequence[bytes], *, key_id: str
    ) -> RegistryTable:
        """A table of these users, each holding the aligned token.

        Args:
            user_ids: distinct user ids (1..247 bytes of UTF-8).
            tokens: distinct tokens of the token function, aligned with ``user_ids``.
            key_id: the key the tokens were made under; it names the filter salt and is
                checked again when a snapshot is loaded.

        Raises:
            InvalidInput: lengths differ, a user id or token is malformed or repeated.
        """
        return cls._build(user_ids, tokens, key_id=key_id, user_salt=os.urandom(SALT_BYTES))

    @classmethod
    def _build(
        cls, user_ids: Sequence[str], tokens: Sequence[bytes], *, key_id: str, user_salt: bytes
    ) -> RegistryTable:
        """:meth:`build` with the user-hash salt injected (tests, vectors)."""
        salt = filter_salt(key_id)
        for _ in range(8):
            rows = derive(user_ids, tokens, salt=salt, user_salt=user_salt)
            rows = rows.take(bucket_order(rows))
            uh = np.sort(rows.uh)
            if not bool((uh[1:] == uh[:-1]).any()):
                break
            if len(set(user_ids)) != len(user_ids):
                raise InvalidInput("a user id appears twice")
            # Two distinct ids share a 64-bit hash (about N**2 / 2**65): draw another salt.
            user_salt = os.urandom(SALT_BYTES)
        else:  # pragma: no cover - eight collisions in a row means a broken hash
            raise InvalidInput("user id hashes keep colliding")
        same = (rows.bk[1:] == rows.bk[:-1]) & (rows.fplo[1:] == rows.fplo[:-1])
        if bool((same & (rows.h[1:] == rows.h[:-1])).any()):
            raise InvalidInput("a token appears twice")
        return cls(base_from_rows(rows), key_id=key_id, user_salt=user_salt)

    # --- properties ---------------------------------------------------------------------------
    @property
    def key_id(self) -> str:
        """The key the tokens were made under."""
        return self._key_id

    @property
    def salt(self) -> bytes:
        """The filter salt (derived from the key id; published with every filter)."""
        return self._salt

    @property
    def user_salt(self) -> bytes:
        """The salt of the user id hash (kept in snapshots; never published)."""
        return self._user_salt

    def __len__(self) -> int:
        s = self._state
        return s.base.n - int(s.overlay.dead_rows.shape[0]) + len(s.overlay.rows)

    @property
    def user_count(self) -> int:
        """Registered (discoverable) users."""
        return len(self)

    @property
    def overlay_size(self) -> int:
        """Changes not yet compacted into the base (rows added plus base rows removed)."""
        return self._state.overlay.size

    @property
    def nbytes(self) -> int:
        """Bytes of every column, mapped or not, plus the overlay."""
        s = self._state
        return s.base.nbytes + s.overlay.nbytes

    @property
    def base(self) -> Base:
        """The immutable base (what a snapshot stores after :meth:`compact`)."""
        return self._state.base

    # --- queries ------------------------------------------------------------------------------
    def hashes(self, tokens: Sequence[bytes]) -> U64:
        """The salted 64-bit hash (``h``) of every token, as rows and filters use it.

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        return hash64(tokens, self._salt)

    def lookup_candidates(self, tokens: Sequence[bytes]) -> Bools:
        """Whether each token may be registered: every registered token is a candidate.

        A non-registered token is a candidate only if its 64-bit hash equals a registered
        one's (about ``N / 2**64``, or chosen by a client who knows the salt): the caller
        confirms candidates against the store, which is what makes a false match impossible.

        Raises:
            InvalidInput: a token is empty or not bytes.
        """
        q = self.hashes(tokens)
        s = self._state
        base, ov = s.base, s.overlay
        n = base.n
        found = np.zeros(q.shape[0], dtype=np.bool_)
        if n:
            lo = base.lower_bound(q)
            found = base.h[np.minimum(lo, n - 1)] == q
            if ov.dead_hpos.shape[0] and found.any():
                # A found value may be a removed row, and an equal value (a 64-bit collision)
                # next to it a live one: count the live rows of the equal run.
                idx = np.flatnonzero(found)
                lo, qi = lo[idx], q[idx]
                hi = lo + 1
                longer = (hi < n) & (base.h[np.minimum(hi, n - 1)] == qi)
                if longer.any():
                    hi[longer] = np.searchsorted(base.h, qi[longer], side="right")
                dead = ov.dead_hpos
                found[idx] = hi - lo > np.searchsorted(dead, hi) - np.searchsorted(dead, lo)
        if ov.hs.shape[0]:
            pos = np.minimum(np.searchsorted(ov.hs, q), ov.hs.shape[0] - 1)
            found |= ov.hs[pos] == q
        return found

    def filter_values(self, bound: int) -> U64:
        """The sorted values of the filter of every registered token with this bound.

        Equal to ``np.sort(scale(hash64(tokens, salt), bound))``, which is what
        :meth:`GolombFilter.build` stores: ``scale`` is monotonic, so sorted hashes scale to
        sorted values and no token is needed.
        """
        return scale(self.sorted_hashes(), bound)

    def sorted_hashes(self) -> U64:
        """Every registered token's ``h``, sorted (a new array)."""
        s = self._state
        h = s.base.h
        if s.overlay.dead_hpos.shape[0]:
            h = np.delete(h, s.overlay.dead_hpos)
        add = s.overlay.hs
        out: U64 = np.insert(h, np.searchsorted(h, add), add) if add.shape[0] else np.array(h)
        return out

    def has_users(self, user_ids: Sequence[str]) -> Bools:
        """Whether each user id has a row (a 64-bit keyed hash match; see :meth:`apply`)."""
        uh = user_hashes(user_ids, self._user_salt)
        s = self._state
        _, owner = self._base_rows_of_users(s, uh)
        out = np.zeros(uh.shape[0], dtype=np.bool_)
        out[owner] = True
        ov = s.overlay
        out |= np.searchsorted(ov.uhs, uh, side="right") > np.searchsorted(ov.uhs, uh)
        return out

    def bucket(self, prefixes: Sequence[int], bits: int) -> BucketAnswer:
        """The ``(fingerprint, sealed user id)`` of every registered token under each prefix.

        Args:
            prefixes: ``bits``-bit bucket prefixes (repeats are answered again).
            bits: prefix length, 0..32 (0: one bucket of everyone).

        Returns:
            The answer, vectorised; :meth:`BucketAnswer.entries` gives the per-prefix lists
            :meth:`TokenTable.bucket` returns, in canonical order.

        Raises:
            InvalidInput: ``bits`` is out of range or a prefix does not fit in ``bits`` bits.
        """
        if not isinstance(bits, int) or not 0 <= bits <= 32:
            raise InvalidInput("bits must be 0..32")
        try:
            p = np.asarray(prefixes, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput("prefixes must be integers") from exc
        if p.shape[0] and (int(p.min()) < 0 or int(p.max()) >= 1 << bits):
            raise InvalidInput("a prefix does not fit in the bucket bits")
        s = self._state
        base, ov = s.base, s.overlay
        b_lo, b_hi = _ranges(base.bk, p, bits)
        brows, bgrp = expand_ranges(b_lo, b_hi)
        if ov.dead_rows.shape[0]:
            alive = ~is_member(ov.dead_rows, brows)
            brows, bgrp = brows[alive], bgrp[alive]
        o_lo, o_hi = _ranges(ov.rows.bk, p, bits)
        orows, ogrp = expand_ranges(o_lo, o_hi)
        counts = np.bincount(bgrp, minlength=p.shape[0]) + np.bincount(ogrp, minlength=p.shape[0])
        no = orows.shape[0]
        past = np.int64(base.sealed.shape[0])
        bk, fplo = base.bk[brows], base.fplo[brows]
        starts, ends = base.offsets(brows), base.offsets(brows + 1)
        from_base: Bools | None = None
        if no:
            # Place each added row before the base row it sorts before, within its prefix:
            # keys (prefix index, base row) are ascending in both lists, so one binary search
            # merges them. Added rows' sealed bytes live in a second address space, past the
            # end of the base's.
            width = np.int64(base.n + 1)
            at = np.searchsorted(bgrp * width + brows, ogrp * width + ov.inspos[orows])
            at += np.arange(no, dtype=np.int64)
            from_base = np.ones(brows.shape[0] + no, dtype=np.bool_)
            from_base[at] = False
            r = ov.rows
            bk = _mix(from_base, at, bk, r.bk[orows])
            fplo = _mix(from_base, at, fplo, r.fplo[orows])
            starts = _mix(from_base, at, starts, r.soff[orows] + past)
            ends = _mix(from_base, at, ends, r.soff[orows + 1] + past)
        words = np.empty((bk.shape[0], 2), dtype=">u4")
        words[:, 0] = bk & _M32
        words[:, 1] = fplo
        fps = words.view(np.uint8).reshape(-1, 8)
        sealed, offsets = _gather_sealed(base, ov, starts, ends, from_base)
        return BucketAnswer(
            counts=counts, fingerprints=fps, sealed=sealed, offsets=offsets, keys=bk >> _S32
        )

    # --- changes ------------------------------------------------------------------------------
    def apply(self, upserts: Sequence[tuple[str, bytes]], removals: Sequence[str]) -> HashDelta:
        """Register or re-register users, and unregister others, in one step.

        An upsert replaces the user's row (a changed number is an upsert with the new
        token); a token held by another user moves to the upserting user and the other user
        loses their row (:meth:`TokenTable.add`'s rule). Removing an unknown user is a no-op.

        Users are found by a 64-bit keyed hash of their id: two distinct ids that collide
        (about ``N / 2**64`` per new id) would be taken for one user.

        Args:
            upserts: ``(user id, token)`` pairs, each user id and token at most once.
            removals: user ids, none of them also in ``upserts``.

        Returns:
            The ``h`` values that left and joined the registry (for filter patches).

        Raises:
            InvalidInput: a malformed or repeated user id or token (nothing is changed).
        """
        uids = [u for u, _ in upserts]
        toks = [t for _, t in upserts]
        removals = list(removals)
        if len(set(uids).union(removals)) != len(uids) + len(removals):
            raise InvalidInput("a user id appears twice in one batch")
        new = derive(uids, toks, salt=self._salt, user_salt=self._user_salt)
        if len(new):
            key = np.lexsort((new.h, new.fplo, new.bk))
            bk, fplo, h = new.bk[key], new.fplo[key], new.h[key]
            if bool(((bk[1:] == bk[:-1]) & (fplo[1:] == fplo[:-1]) & (h[1:] == h[:-1])).any()):
                raise InvalidInput("a token appears twice in one batch")
        gone_uh = np.concatenate([new.uh, user_hashes(removals, self._user_salt)])
        with self._write:
            s = self._state
            base, ov = s.base, s.overlay
            b_user, _ = self._base_rows_of_users(s, gone_uh)
            b_tok = self._base_rows_of_tokens(s, new.h, new.bk, new.fplo)
            b_gone = np.unique(np.concatenate([b_user, b_tok]))
            o_gone = np.unique(
                np.concatenate(
                    [ov.rows_of_users(gone_uh), ov.rows_of_tokens(new.h, new.bk, new.fplo)]
                )
            )
            b_hpos = base.hpos[b_gone].astype(np.int64)
            removed = np.concatenate([base.h[b_hpos], ov.rows.h[o_gone]])
            ov = ov.without(o_gone).with_dead(b_gone, b_hpos).plus(new, base)
            state = _State(base, ov)
            limit = self.compact_at
            if limit is not None and ov.size > max(self.compact_min, limit * base.n):
                state = _State(merge(base, ov.dead_rows, ov.rows, ov.inspos), Overlay.empty())
            self._state = state
        added, gone = cancel(new.h, removed)
        # ``bk`` packs the 32-bit bucket key above four fingerprint bytes.
        bk = np.concatenate([new.bk, base.bk[b_gone], s.overlay.rows.bk[o_gone]])
        return HashDelta(added=added, removed=gone, buckets=bk.astype(np.uint64) >> _S32)

    def compact(self) -> RegistryTable:
        """A new table of the same rows with the overlay folded into an in-memory base."""
        out = RegistryTable(self.compacted_base(), key_id=self._key_id, user_salt=self._user_salt)
        out.compact_at, out.compact_min = self.compact_at, self.compact_min
        return out

    def compacted_base(self) -> Base:
        """The rows of one consistent state as a base (the current one if nothing changed):
        what a snapshot stores."""
        s = self._state
        ov = s.overlay
        return merge(s.base, ov.dead_rows, ov.rows, ov.inspos) if ov.size else s.base

    # --- internals ------------------------------------------------------------------------------
    @staticmethod
    def _base_rows_of_users(s: _State, uh: U64) -> tuple[I64, I64]:
        """Live base rows whose user hash is one of ``uh``, and which query each answers."""
        base = s.base
        lo = np.searchsorted(base.uh, uh, side="left")
        hi = np.searchsorted(base.uh, uh, side="right")
        idx, owner = expand_ranges(lo, hi)
        rows = base.urow[idx].astype(np.int64)
        if s.overlay.dead_rows.shape[0]:
            alive = ~is_member(s.overlay.dead_rows, rows)
            rows, owner = rows[alive], owner[alive]
        return rows, owner

    @staticmethod
    def _base_rows_of_tokens(s: _State, h: U64, bk: U64, fplo: npt.NDArray[np.uint32]) -> I64:
        """Live base rows holding one of these tokens (equal ``bk``, ``fplo`` and ``h``)."""
        base = s.base
        lo = np.searchsorted(base.bk, bk, side="left")
        hi = np.searchsorted(base.bk, bk, side="right")
        idx, owner = expand_ranges(lo, hi)
        same = (base.fplo[idx] == fplo[owner]) & (base.h[base.hpos[idx]] == h[owner])
        rows: I64 = idx[same]
        if s.overlay.dead_rows.shape[0]:
            rows = rows[~is_member(s.overlay.dead_rows, rows)]
        return rows


def _ranges(bk: U64, p: I64, bits: int) -> tuple[I64, I64]:
    """Row ranges ``[lo, hi)`` of ``bk`` (sorted) under each ``bits``-bit prefix."""
    n = bk.shape[0]
    if bits == 0:
        return np.zeros(p.shape[0], np.int64), np.full(p.shape[0], n, np.int64)
    shift = np.uint64(64 - bits)
    start = p.astype(np.uint64) << shift
    lo = np.searchsorted(bk, start, side="left").astype(np.int64)
    top = p + 1 == 1 << bits
    # The last prefix ends at 2**64, which no uint64 holds: its range runs to the end.
    nxt = np.where(top, 0, p + 1).astype(np.uint64) << shift
    hi = np.where(top, n, np.searchsorted(bk, nxt, side="left")).astype(np.int64)
    return lo, hi


def _mix(from_base: Bools, at: I64, base_vals: npt.NDArray[Any], ov_vals: npt.NDArray[Any]) -> Any:
    """Base values where ``from_base``, overlay values at ``at``."""
    out = np.empty(from_base.shape[0], dtype=base_vals.dtype)
    out[from_base] = base_vals
    out[at] = ov_vals
    return out


def _gather_sealed(
    base: Base, ov: Overlay, starts: I64, ends: I64, from_base: Bools | None
) -> tuple[bytes, I64]:
    """The sealed ids of the answer's rows, concatenated, and their ``len + 1`` offsets.

    Rows of a bucket are neighbours in the base, so their sealed ids are one run of bytes:
    the answer is cut into runs (one per prefix, plus one per added or removed row in it) and
    joined, a Python step per run rather than per row. Offsets from ``len(base.sealed)`` on
    address the overlay's bytes.
    """
    total = starts.shape[0]
    offsets = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    if not total:
        return b"", offsets
    # A run ends where the next row's bytes do not follow on, or come from the other space.
    breaks = starts[1:] != ends[:-1]
    if from_base is not None:
        breaks |= from_base[1:] != from_base[:-1]
    cut = np.flatnonzero(breaks) + 1
    byte_lo = starts[np.concatenate([[0], cut])].tolist()
    byte_hi = ends[np.concatenate([cut, [total]]) - 1].tolist()
    base_mv = base.sealed.data
    ov_mv = ov.rows.sealed.data
    edge = int(base.sealed.shape[0])
    parts = [
        base_mv[a:b] if a < edge else ov_mv[a - edge : b - edge]
        for a, b in zip(byte_lo, byte_hi, strict=True)
    ]
    return b"".join(parts), offsets
