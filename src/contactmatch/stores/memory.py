"""In-process store for tests, benchmarks and demos: dicts behind one lock, nothing persisted.

The wrapped per-user key stays inside the record here: the narrow key table the other adapters
keep exists so that on-disk residue of a deleted row is undecryptable, and this store has no
disk, no dead rows and no residue.

The change feed is a list numbered without gaps, appended under the same lock as each change;
the key census is two counters kept with every write (the reference the other adapters' tests
compare with a scan).
"""

from __future__ import annotations

import bisect
import hmac
import secrets
import threading
from dataclasses import replace

from contactmatch.errors import Conflict, UnknownUser
from contactmatch.stores.base import BaseStore
from contactmatch.stores.census import wrapped_key_id
from contactmatch.stores.leaky import drain_time, leak, take_decision
from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
)

__all__ = ["MemoryStore"]


class MemoryStore(BaseStore):
    """Thread-safe in-memory :class:`~contactmatch.stores.roles.RegistryStore` (``memory://``)."""

    name = "memory"

    def __init__(self, url: str = "memory://") -> None:  # noqa: ARG002 - open_store passes it
        """Create an empty store; the URL is accepted for symmetry with the other adapters."""
        self._lock = threading.RLock()
        self._users: dict[str, UserRecord] = {}
        self._by_token: dict[bytes, str] = {}
        self._contacts: dict[str, tuple[str, set[bytes]]] = {}
        self._owners: dict[bytes, set[str]] = {}
        # (subject, quota) -> (level, updated, drained at)
        self._buckets: dict[tuple[str, str], tuple[float, float, float]] = {}
        # subject -> fingerprint -> when last added
        self._seen: dict[str, dict[bytes, float]] = {}
        self._stats: dict[str, int] = {}
        self._checkpoints: dict[str, str] = {}
        # change feed: (seq, user id, at), ascending and gapless; head and compaction floor
        self._feed: list[tuple[int, str, int]] = []
        self._head = 0
        self._floor = 0
        self._oprf: dict[str, int] = {}
        self._data: dict[str, int] = {}
        self._id = "memory-" + secrets.token_hex(16)

    def _count(self, rec: UserRecord, delta: int) -> None:
        """Move the key census by ``delta`` for ``rec``'s OPRF and data key ids."""
        for counts, kid in (
            (self._oprf, rec.key_id),
            (self._data, wrapped_key_id(rec.wrapped_key)),
        ):
            n = counts.get(kid, 0) + delta
            if n:
                counts[kid] = n
            else:
                del counts[kid]

    def _log(self, user_ids: list[str]) -> None:
        """Append one feed entry per user id (called under the lock, with the change)."""
        at, seq = self._feed_time(), self._head
        self._feed.extend((seq + i, uid, at) for i, uid in enumerate(user_ids, 1))
        self._head = seq + len(user_ids)

    def _store_user(self, old: UserRecord | None, new: UserRecord) -> None:
        if old is not None:
            if old.token != new.token:
                del self._by_token[old.token]
            self._count(old, -1)
        self._users[new.user_id] = new
        self._by_token[new.token] = new.user_id
        self._count(new, 1)

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        with self._lock:
            by_token, by_id = self._by_token, self._users
            for u in users:
                owner = by_token.get(u.token)
                if owner is not None and owner != u.user_id:
                    raise Conflict("a token in the batch belongs to another user")
            oprf, data = self._oprf, self._data
            for u in users:
                old = by_id.get(u.user_id)
                if old is None:  # the bulk-load case, kept to plain dict writes
                    by_id[u.user_id] = u
                    by_token[u.token] = u.user_id
                    oprf[u.key_id] = oprf.get(u.key_id, 0) + 1
                    dk = wrapped_key_id(u.wrapped_key)
                    data[dk] = data.get(dk, 0) + 1
                else:
                    self._store_user(old, replace(u, created_at=old.created_at))
            self._log([u.user_id for u in users])
            if mark is not None:
                self._checkpoints[mark] = "done"

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        with self._lock:
            return [self._users.get(u) for u in user_ids]

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        with self._lock:
            out: list[UserRecord | None] = []
            for t in tokens:
                uid = self._by_token.get(t)
                out.append(None if uid is None else self._users[uid])
            return out

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        with self._lock:
            missing = [u for u in changes if u not in self._users]
            if missing:
                raise UnknownUser(f"no registered user {missing[0]!r}")
            for uid, d in changes.items():
                old = self._users[uid]
                self._store_user(old, replace(old, discoverability=d, updated_at=now))
            self._log(list(changes))

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        with self._lock:
            for u in updates:
                owner = self._by_token.get(u.new_token)
                if owner is not None and owner != u.user_id:
                    raise Conflict("a new token belongs to another user")
            done: list[str] = []
            for u in updates:
                old = self._users.get(u.user_id)
                if old is None or not hmac.compare_digest(old.token, u.old_token):
                    continue
                ct = old.number_ct if u.number_ct is None else u.number_ct
                wk = old.wrapped_key if u.wrapped_key is None else u.wrapped_key
                new = replace(
                    old,
                    token=u.new_token,
                    key_id=u.key_id,
                    number_ct=ct,
                    wrapped_key=wk,
                    updated_at=now,
                )
                self._store_user(old, new)
                done.append(u.user_id)
            self._log(done)
            return len(done)

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        with self._lock:
            ids = sorted(u for u in self._users if after is None or u > after)[:limit]
            return [self._users[u] for u in ids]

    def _count_users(self) -> int:
        with self._lock:
            return len(self._users)

    def _delete_account(self, user_id: str) -> bool:
        with self._lock:
            old = self._users.pop(user_id, None)
            if old is None:
                return False
            del self._by_token[old.token]
            self._count(old, -1)
            self._drop_contacts(user_id)
            self._log([user_id])
            return True

    # contacts -----------------------------------------------------------------------------

    def _drop_contacts(self, owner_id: str) -> int:
        _kid, old = self._contacts.pop(owner_id, ("", set()))
        for t in old:
            owners = self._owners[t]
            owners.discard(owner_id)
            if not owners:
                del self._owners[t]
        return len(old)

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        with self._lock:
            if owner_id not in self._users:
                return False
            self._drop_contacts(owner_id)
            if tokens:
                self._contacts[owner_id] = (key_id, set(tokens))
                for t in tokens:
                    self._owners.setdefault(t, set()).add(owner_id)
            return True

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        with self._lock:
            return [list(self._owners.get(t, ())) for t in tokens]

    def _purge_contacts(self, keep_key_id: str) -> int:
        with self._lock:
            stale = [o for o, (kid, _t) in self._contacts.items() if kid != keep_key_id]
            return sum(self._drop_contacts(o) for o in stale)

    # rate limits --------------------------------------------------------------------------

    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        with self._lock:
            level, updated, _ = self._buckets.get((subject, quota), (0.0, now, now))
            level = leak(level, updated, now, refill)
            allowed, retry, level = take_decision(level, cost, capacity, refill)
            updated = max(now, updated)
            self._buckets[(subject, quota)] = (level, updated, drain_time(level, updated, refill))
            return TakeResult(allowed, retry)

    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        with self._lock:
            seen = self._seen.get(subject, {})
            return sum(seen.get(f, cutoff) <= cutoff for f in fingerprints)

    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        with self._lock:
            seen = self._seen.setdefault(subject, {})
            new = 0
            for f in fingerprints:
                was = seen.get(f)
                if was is None:
                    new += 1
                    seen[f] = now
                elif now > was:
                    seen[f] = now
            return new

    def _reset_seen(self, subject: str) -> None:
        with self._lock:
            self._seen.pop(subject, None)

    def _expire_rate_state(self, now: float, cutoff: float) -> int:
        with self._lock:
            drained = [k for k, (_l, _u, d) in self._buckets.items() if d <= now]
            for k in drained:
                del self._buckets[k]
            removed = len(drained)
            for subject in list(self._seen):
                seen = self._seen[subject]
                old = [f for f, t in seen.items() if t <= cutoff]
                for f in old:
                    del seen[f]
                removed += len(old)
                if not seen:
                    del self._seen[subject]
            return removed

    # maintenance --------------------------------------------------------------------------

    def _vacuum(self, *, keys_only: bool) -> dict[str, int]:  # noqa: ARG002 - no scope
        """Nothing to do: a deleted entry is gone from the dicts, and there is no disk."""
        return {}

    # stats and checkpoints ----------------------------------------------------------------

    def _incr_stats(self, deltas: dict[str, int]) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._stats[k] = self._stats.get(k, 0) + v

    def _get_stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def _get_checkpoint(self, name: str) -> str | None:
        with self._lock:
            return self._checkpoints.get(name)

    def _set_checkpoint(self, name: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._checkpoints.pop(name, None)
            else:
                self._checkpoints[name] = value

    # change feed and identity -----------------------------------------------------------

    def _feed_head(self) -> int:
        with self._lock:
            return self._head

    def _changes(self, after: int, limit: int) -> FeedPage:
        with self._lock:
            feed = self._feed
            i = bisect.bisect_right(feed, after, key=lambda e: e[0])
            entries = [(seq, uid) for seq, uid, _at in feed[i : i + limit]]
            ok = self._floor <= after <= self._head
            return FeedPage(entries=entries, head=self._head, complete=ok)

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        with self._lock:
            feed = self._feed
            cut = (
                len(feed)
                if before_seq is None
                else bisect.bisect_left(feed, before_seq, key=lambda e: e[0])
            )
            if older_than is not None:
                young = next((i for i, e in enumerate(feed[:cut]) if e[2] >= older_than), cut)
                cut = min(cut, young)
            if cut:
                self._floor = max(self._floor, feed[cut - 1][0])
                del feed[:cut]
            return cut

    def _store_id(self) -> str:
        return self._id

    def _key_census(self) -> KeyCensus:
        with self._lock:
            return KeyCensus(oprf=dict(self._oprf), data=dict(self._data))

    def _close(self) -> None:
        return None
