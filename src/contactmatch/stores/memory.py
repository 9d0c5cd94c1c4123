"""In-process store for tests, benchmarks and demos: dicts behind one lock, nothing persisted."""

from __future__ import annotations

import hmac
import threading
from dataclasses import replace

from contactmatch.errors import Conflict, UnknownUser
from contactmatch.stores.base import (
    FINGERPRINT_LEN,
    BaseStore,
    Discoverability,
    FilterDelta,
    FilterVersion,
    Rekey,
    TakeResult,
    UserRecord,
    fingerprint,
    leak,
    net_delta,
    take_decision,
)

__all__ = ["MemoryStore"]

_LogEntry = tuple[int, bool, bytes | None, bytes]


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
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._seen: dict[str, set[bytes]] = {}
        self._filters: dict[int, FilterVersion] = {}
        self._log: dict[int, _LogEntry] = {}
        self._seq = 0
        self._adds: dict[bytes, int] = {}
        self._stats: dict[str, int] = {}
        self._checkpoints: dict[str, str] = {}

    # membership log: the same rules the SQL triggers implement ----------------------------

    def _log_add(self, token: bytes) -> None:
        self._seq += 1
        # Same entry shape as the inlined bulk path in _put_users.
        self._log[self._seq] = (self._seq, True, token, fingerprint(token))
        self._adds[token] = self._seq

    def _log_remove(self, token: bytes) -> None:
        # Drop the entries that carried the full token; keep only its fingerprint.
        seq = self._adds.pop(token, None)
        if seq is not None:
            self._log.pop(seq, None)
        self._seq += 1
        self._log[self._seq] = (self._seq, False, None, fingerprint(token))

    def _membership(self, old: UserRecord | None, new: UserRecord | None) -> None:
        was = old is not None and old.discoverability is Discoverability.EVERYONE
        now = new is not None and new.discoverability is Discoverability.EVERYONE
        if was and old is not None and (not now or new is None or new.token != old.token):
            self._log_remove(old.token)
        if now and new is not None and (not was or old is None or new.token != old.token):
            self._log_add(new.token)

    def _store_user(self, old: UserRecord | None, new: UserRecord) -> None:
        if old is not None and old.token != new.token:
            del self._by_token[old.token]
        self._users[new.user_id] = new
        self._by_token[new.token] = new.user_id
        self._membership(old, new)

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord]) -> None:
        everyone = Discoverability.EVERYONE
        with self._lock:
            by_token, by_id, log, adds = self._by_token, self._users, self._log, self._adds
            for u in users:
                owner = by_token.get(u.token)
                if owner is not None and owner != u.user_id:
                    raise Conflict("a token in the batch belongs to another user")
            for u in users:
                old = by_id.get(u.user_id)
                if old is None:  # the bulk-load case, kept to a few dict writes
                    by_id[u.user_id] = u
                    by_token[u.token] = u.user_id
                    if u.discoverability is everyone:
                        self._seq = seq = self._seq + 1
                        log[seq] = (seq, True, u.token, u.token[:FINGERPRINT_LEN])
                        adds[u.token] = seq
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
                new = replace(old, token=u.new_token, key_id=u.key_id, number_ct=ct, updated_at=now)
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
            self._membership(old, None)
            self._drop_contacts(user_id)
            for key in [k for k in self._buckets if k[0] == user_id]:
                del self._buckets[key]
            self._seen.pop(user_id, None)
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
            level, updated = self._buckets.get((subject, quota), (0.0, now))
            level = leak(level, updated, now, refill)
            allowed, retry, level = take_decision(level, cost, capacity, refill)
            self._buckets[(subject, quota)] = (level, max(now, updated))
            return TakeResult(allowed, retry)

    def _count_unseen(self, subject: str, fingerprints: list[bytes]) -> int:
        with self._lock:
            seen = self._seen.get(subject, set())
            return sum(f not in seen for f in fingerprints)

    def _add_seen(self, subject: str, fingerprints: list[bytes]) -> int:
        with self._lock:
            seen = self._seen.setdefault(subject, set())
            before = len(seen)
            seen.update(fingerprints)
            return len(seen) - before

    def _reset_seen(self, subject: str) -> None:
        with self._lock:
            self._seen.pop(subject, None)

    # filter -------------------------------------------------------------------------------

    def _put_filter(self, version: int, key_id: str, blob: bytes, now: float) -> FilterVersion:
        with self._lock:
            if self._filters and version <= max(self._filters):
                raise Conflict("filter version is not above the latest one")
            fv = FilterVersion(
                version=version, key_id=key_id, blob=blob, log_seq=self._seq, created_at=now
            )
            self._filters[version] = fv
            return fv

    def _get_filter(self, version: int | None) -> FilterVersion | None:
        with self._lock:
            if version is None:
                return self._filters[max(self._filters)] if self._filters else None
            return self._filters.get(version)

    def _filter_delta(self, since: int, until: int | None) -> FilterDelta | None:
        with self._lock:
            if until is None and self._filters:
                until = max(self._filters)
            lo, hi = self._filters.get(since), self._filters.get(until or 0)
            if lo is None or hi is None:
                return None
            entries = [e for s, e in self._log.items() if lo.log_seq < s <= hi.log_seq]
            return net_delta(since, hi.version, entries)

    def _compact_filters(self, keep_from: int) -> None:
        with self._lock:
            keep = self._filters.get(keep_from)
            if keep is None:
                return
            for v in [v for v in self._filters if v < keep_from]:
                del self._filters[v]
            for s in [s for s in self._log if s <= keep.log_seq]:
                _s, _add, token, _fp = self._log.pop(s)
                if token is not None:
                    self._adds.pop(token, None)

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
