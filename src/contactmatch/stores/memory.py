"""In-process store for tests, benchmarks and demos: dicts behind one lock, nothing persisted.

The wrapped per-user key stays inside the record here: the narrow key table the other adapters
keep exists so that on-disk residue of a deleted row is undecryptable, and this store has no
disk, no dead rows and no residue.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import replace

from contactmatch.errors import Conflict, UnknownUser
from contactmatch.stores.base import (
    BaseStore,
    Discoverability,
    Rekey,
    TakeResult,
    UserRecord,
    drain_time,
    leak,
    take_decision,
)

__all__ = ["MemoryStore"]


class MemoryStore(BaseStore):
    """Thread-safe in-memory :class:`~contactmatch.stores.base.RegistryStore` (``memory://``)."""

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

    def _store_user(self, old: UserRecord | None, new: UserRecord) -> None:
        if old is not None and old.token != new.token:
            del self._by_token[old.token]
        self._users[new.user_id] = new
        self._by_token[new.token] = new.user_id

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord]) -> None:
        with self._lock:
            by_token, by_id = self._by_token, self._users
            for u in users:
                owner = by_token.get(u.token)
                if owner is not None and owner != u.user_id:
                    raise Conflict("a token in the batch belongs to another user")
            for u in users:
                old = by_id.get(u.user_id)
                if old is None:  # the bulk-load case, kept to two dict writes
                    by_id[u.user_id] = u
                    by_token[u.token] = u.user_id
                else:
                    self._store_user(old, replace(u, created_at=old.created_at))

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

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        with self._lock:
            for u in updates:
                owner = self._by_token.get(u.new_token)
                if owner is not None and owner != u.user_id:
                    raise Conflict("a new token belongs to another user")
            done = 0
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
                done += 1
            return done

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
            self._drop_contacts(user_id)
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

    def _close(self) -> None:
        return None
