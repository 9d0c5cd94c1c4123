"""Redis adapter for one Redis (primary + replicas, Sentinel): every change is one Lua script.

The key layout is in the package docstring (:mod:`contactmatch.stores.redis`). Each mutating
script also numbers its feed entries (``INCRBY {P:g}:seq``), appends them to the list
``{P:g}:feed`` as ``<seq>|<at>|<user id>`` and moves the key census ``{P:g}:census``, so the
change, its feed entries and the census are one atomic step, and Redis runs scripts one at a
time: numbering order is commit order.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions

from contactmatch.errors import (
    Conflict,
    InvalidInput,
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
    UnknownUser,
)
from contactmatch.stores import wants_cluster
from contactmatch.stores.base import BaseStore
from contactmatch.stores.census import census_deltas, census_from
from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
    check_name,
)
from contactmatch.stores.redis import _lua as lua

__all__ = ["CHUNK", "SCHEMA_VERSION", "RedisStore", "split_url", "wants_cluster"]

SCHEMA_VERSION = 3
CHUNK = 1000  # records per script call: long scripts block every other client
DISC_CODES = {
    Discoverability.EVERYONE: b"0",
    Discoverability.CONTACTS: b"1",
    Discoverability.NOBODY: b"2",
}
DISC_NAMES = {v: k for k, v in DISC_CODES.items()}
USER_FIELDS = ("tok", "kid", "ct", "disc", "cat", "uat")

_V1_USERS = (
    "redis: this prefix holds registrations from key layout v1, whose numbers have no "
    "per-user key and cannot be crypto-shredded; export and re-register them, then use an "
    "empty prefix"
)


def _text(v: Any) -> str:
    """redis-py returns bytes (no decode_responses); ids and names are ASCII."""
    return v.decode() if isinstance(v, bytes) else str(v)


def split_url(url: str, prefix: str | None) -> tuple[str, str]:
    """Remove our ``prefix`` and ``cluster`` query options from the URL; return (url, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == "prefix"]
    rest = [(k, v) for k, v in query if k not in ("prefix", "cluster")]
    chosen = prefix if prefix is not None else (ours[-1] if ours else "cm")
    # Braces and colons would break the hash tags; the name rule excludes braces.
    check_name(chosen, "key prefix")
    return urlunsplit(parts._replace(query=urlencode(rest))), chosen


def _new_id(adapter: str) -> str:
    """A fresh store identity (128 random bits), written once with ``SET NX``."""
    return f"{adapter}-{secrets.token_hex(16)}"


def _census_rows(raw: dict[Any, Any]) -> Iterator[tuple[int, str, int]]:
    """``(kind, key id, count)`` from a census hash (fields ``'<kind>:<key id>'``)."""
    for field, n in raw.items():
        kind, _, kid = _text(field).partition(":")
        yield int(kind), kid, int(n)


class RedisStore(BaseStore):
    """Redis :class:`~contactmatch.stores.roles.RegistryStore`; thread- and process-safe."""

    name = "redis"
    #: Whether this handle talks to a Redis Cluster (per-slot steps instead of scripts).
    cluster = False

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0) -> None:
        """Connect and check (or record) the key layout version under the prefix.

        Args:
            url: a redis-py URL, optionally with ``?prefix=name`` (default ``cm``).
            prefix: overrides the URL's prefix; tests use one per test.
            timeout: socket connect/read timeout in seconds.

        Raises:
            InvalidInput: the URL names a cluster (``?cluster=1``) but this is the single-Redis
                class; :func:`~contactmatch.stores.open_store` routes such URLs to
                :class:`RedisClusterStore`.
            StoreUnavailable: the server cannot be reached.
            SchemaVersionError: the keys were written by a newer contactmatch.
        """
        if wants_cluster(url) and not self.cluster:
            # Talking to one node of a cluster as if it were a whole Redis would fail later
            # and obscurely (MOVED, CROSSSLOT); say which class or function opens it.
            raise InvalidInput(
                "redis: a cluster URL needs RedisClusterStore (or open_store, which picks it)"
            )
        clean, self.prefix = split_url(url, prefix)
        self._g = "{" + self.prefix + ":g}"
        self._timeout = timeout
        self._id: str | None = None
        with self._mapped("open"):
            self._r: Any = self._connect(clean, timeout)
            try:
                self._check_layout()
            except BaseException:
                self._r.close()
                raise
        reg = self._r.register_script
        self._put = reg(lua.PUT)
        self._disc = reg(lua.DISC)
        self._rekey = reg(lua.REKEY)
        self._delete = reg(lua.DELETE)
        self._contacts = reg(lua.CONTACTS)
        self._purge_one = reg(lua.PURGE_ONE)
        self._take_script = reg(lua.TAKE)
        self._scripts = {src: reg(src) for src in lua.SINGLE_SLOT}

    def _connect(self, url: str, timeout: float) -> Any:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _check_layout(self) -> None:
        g = self._g
        if self._r.set(g + ":schema", SCHEMA_VERSION, nx=True):
            self._create_layout()
        stored = int(_text(self._r.get(g + ":schema") or 0))
        if stored > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"key layout v{stored} is newer than this library (v{SCHEMA_VERSION})"
            )
        if stored < SCHEMA_VERSION:
            self._upgrade(stored)

    def _create_layout(self) -> None:
        """Service-wide keys a new prefix starts with (each also created on first use)."""
        self._r.set(self._g + ":id", _new_id(self.name), nx=True)

    def _upgrade(self, stored: int) -> None:
        """Bring an older layout up to date, one client at a time (a lock key in ``{P:g}``).

        Other clients opening meanwhile wait for it (up to the connection timeout). Stop
        writers of an older contactmatch first: they do not keep the feed or the census.
        """
        g = self._g
        deadline = time.monotonic() + max(self._timeout, 1.0)
        while not self._r.set(g + ":migrating", 1, nx=True, ex=3600):
            if int(_text(self._r.get(g + ":schema") or 0)) >= SCHEMA_VERSION:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable("redis: another client is upgrading the key layout")
            time.sleep(0.05)
        try:
            stored = int(_text(self._r.get(g + ":schema") or 0))
            if stored == 1:
                self._upgrade_from_v1()
            if stored <= 2:
                self._upgrade_from_v2()
            self._r.set(g + ":schema", SCHEMA_VERSION)
        finally:
            self._r.delete(g + ":migrating")

    def _upgrade_from_v1(self) -> None:
        """Layout v1 -> v2: drop the filter log and the rate state keyed by user id.

        Refused if any user is registered (their numbers have no per-user key). With no
        user, the only ``{P:u:...}`` keys left are v1 rate buckets and seen sets; a one-time
        ``SCAN`` finds them.
        """
        g = self._g
        if self._r.zcard(g + ":ids"):
            raise StoreError(_V1_USERS)
        for v in self._r.zrange(g + ":fv", 0, -1):
            self._r.delete(f"{g}:f:{_text(v)}")
        for key in (":log", ":seq", ":fv"):
            self._r.delete(g + key)
        for key in self._r.scan_iter(match="{" + self.prefix + ":u:*", count=1000):
            self._r.delete(key)

    def _upgrade_from_v2(self) -> None:
        """Layout v2 -> v3: the change feed starts empty; the identity and key census are made.

        The census is counted from the users once (one pass over the id index, pipelined).
        """
        self._create_layout()
        counts = census_deltas((kid, wk) for _uid, kid, wk in self._all_keys())
        census = self._g + ":census"
        self._r.delete(census)
        if counts:
            self._r.hset(census, mapping={f"{k}:{i}": n for (k, i), n in counts.items()})

    def _all_keys(self) -> Iterator[tuple[str, str, bytes]]:
        """(user id, key id, wrapped key) of every registered user, a page at a time."""
        after = "-"
        while ids := self._r.zrangebylex(self._g + ":ids", after, "+", 0, CHUNK):
            pipe = self._r.pipeline(transaction=False)
            for raw in ids:
                uk = self._ukey(_text(raw))
                pipe.hget(uk, "kid")
                pipe.get(uk + ":k")
            out = pipe.execute()
            for raw, kid, wk in zip(ids, out[::2], out[1::2], strict=True):
                if kid is not None and wk is not None:
                    yield _text(raw), _text(kid), bytes(wk)
            after = "(" + _text(ids[-1])

    def _ukey(self, user_id: str) -> str:
        return "{" + self.prefix + ":u:" + user_id + "}"

    def _rkey(self, subject: str) -> str:
        """The hash tag of a rate subject's keys (its buckets and seen set share a slot)."""
        return "{" + self.prefix + ":r:" + subject + "}"

    def _eval_batch(self, src: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script for many single-slot key sets, pipelined; results aligned."""
        if not calls:
            return []
        script, pipe = self._scripts[src], self._r.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return list(pipe.execute())

    def _translate(self, exc: Exception, op: str) -> StoreError:
        if isinstance(exc, redis.exceptions.ResponseError):
            msg = str(exc)
            if msg.startswith("CONFLICT"):
                return Conflict(f"redis: {op}: {msg.removeprefix('CONFLICT ')}")
            if msg.startswith("UNKNOWN"):
                return UnknownUser(f"no registered user {msg.removeprefix('UNKNOWN ')!r}")
        if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return StoreUnavailable(f"redis: {op}: server unavailable ({type(exc).__name__})")
        return super()._translate(exc, op)

    def _record(self, user_id: str, vals: Sequence[Any], wrapped: Any) -> UserRecord | None:
        # Hash and key are written and deleted in one step (one slot); a hash without its key
        # cannot be opened and reads as absent.
        if vals[0] is None or wrapped is None:
            return None
        return UserRecord(
            user_id=user_id,
            token=vals[0],
            key_id=vals[1].decode(),
            number_ct=vals[2],
            wrapped_key=wrapped,
            discoverability=DISC_NAMES[vals[3]],
            created_at=float(vals[4]),
            updated_at=float(vals[5]),
        )

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        at = self._feed_time()
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            args: list[Any] = [self.prefix, at, len(chunk)]
            for u in chunk:
                args += (
                    u.user_id,
                    u.token.hex(),
                    u.token,
                    u.key_id,
                    u.number_ct,
                    u.wrapped_key,
                    DISC_CODES[u.discoverability],
                    repr(u.created_at),
                    repr(u.updated_at),
                )
            self._put(args=args)
        if mark is not None:  # after the writes: a crash in between re-runs an upsert
            self._set_checkpoint(mark, "done")

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        pipe = self._r.pipeline(transaction=False)
        for u in user_ids:
            uk = self._ukey(u)
            pipe.hmget(uk, USER_FIELDS)
            pipe.get(uk + ":k")
        out = pipe.execute()
        return [self._record(u, out[2 * i], out[2 * i + 1]) for i, u in enumerate(user_ids)]

    def _mget(self, keys: list[str]) -> list[Any]:
        return list(self._r.mget(keys))

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        p = self.prefix
        uids = self._mget(["{" + p + ":t:" + t.hex() + "}" for t in tokens])
        found = [(t, u.decode()) for t, u in zip(tokens, uids, strict=True) if u is not None]
        recs = dict(zip([t for t, _ in found], self._get_users([u for _, u in found]), strict=True))
        # A user may re-register between the two reads: only a matching token counts.
        return [
            r if (r := recs.get(t)) is not None and hmac.compare_digest(r.token, t) else None
            for t in tokens
        ]

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        args: list[Any] = [self.prefix, repr(now), self._feed_time(), len(changes)]
        for uid, d in changes.items():
            args += (uid, DISC_CODES[d])
        self._disc(args=args)

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        done = 0
        for i in range(0, len(updates), CHUNK):
            chunk = updates[i : i + CHUNK]
            args: list[Any] = [self.prefix, repr(now), self._feed_time(), len(chunk)]
            for u in chunk:
                ct = b"" if u.number_ct is None else u.number_ct
                wk = b"" if u.wrapped_key is None else u.wrapped_key
                args += (u.user_id, u.old_token, u.new_token, u.new_token.hex(), u.key_id, ct, wk)
            done += int(self._rekey(args=args))
        return done

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        # An id whose hash is gone (a delete in flight; on a cluster, a crashed step) is
        # skipped, and paging goes on: an empty page would tell callers (rotation, index
        # loading) that the scan is over.
        out: list[UserRecord] = []
        lo = "-" if after is None else "(" + after
        while len(out) < limit:
            raw = self._r.zrangebylex(self._g + ":ids", lo, "+", 0, limit - len(out))
            if not raw:
                break
            ids = [i.decode() for i in raw]
            out.extend(r for r in self._get_users(ids) if r is not None)
            lo = "(" + ids[-1]
        return out

    def _count_users(self) -> int:
        return int(self._r.zcard(self._g + ":ids"))

    def _delete_account(self, user_id: str) -> bool:
        return bool(self._delete(args=[self.prefix, user_id, self._feed_time()]))

    # contacts -----------------------------------------------------------------------------

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        return bool(
            self._contacts(args=[self.prefix, owner_id, key_id, *(t.hex() for t in tokens)])
        )

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        pipe = self._r.pipeline(transaction=False)
        for t in tokens:
            pipe.smembers("{" + self.prefix + ":o:" + t.hex() + "}")
        return [[o.decode() for o in s] for s in pipe.execute()]

    def _purge_contacts(self, keep_key_id: str) -> int:
        # Owner by owner (each its own atomic script, pipelined a page at a time) so a purge
        # never blocks Redis for long.
        dropped, after = 0, "-"
        while True:
            ids = self._r.zrangebylex(self._g + ":ids", after, "+", 0, CHUNK)
            if not ids:
                return dropped
            pipe = self._r.pipeline(transaction=False)
            for uid in ids:
                self._purge_one(args=[self.prefix, uid, keep_key_id], client=pipe)
            dropped += sum(int(n) for n in pipe.execute())
            after = "(" + ids[-1].decode()

    # rate limits --------------------------------------------------------------------------

    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        allowed, retry = self._take_script(
            keys=[self._rkey(subject) + ":b:" + quota],
            args=[repr(cost), repr(capacity), repr(refill), repr(now)],
        )
        r = float(retry)
        return TakeResult(bool(allowed), math.inf if math.isinf(r) else r)

    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        scores = self._r.zmscore(self._rkey(subject) + ":s", fingerprints)
        return sum(s is None or float(s) <= cutoff for s in scores)

    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        # Listed in the index first: a set the index does not know would never expire, while
        # an index entry without a set (a client dying in between) is dropped by the sweep.
        self._r.zadd(self._g + ":seen", {subject: now}, gt=True)
        res = self._eval_batch(
            lua.SEEN_ADD, [([self._rkey(subject) + ":s"], [repr(now), *fingerprints])]
        )
        return int(res[0])

    def _reset_seen(self, subject: str) -> None:
        self._r.delete(self._rkey(subject) + ":s")
        self._r.zrem(self._g + ":seen", subject)

    def _expire_rate_state(self, now: float, cutoff: float) -> int:  # noqa: ARG002 - see doc
        """Prune every indexed seen set; buckets expire by themselves (``PEXPIRE``)."""
        index, removed, page = self._g + ":seen", 0, []
        for member, _score in self._r.zscan_iter(index, count=CHUNK):
            page.append(_text(member))
            if len(page) >= CHUNK:
                removed += self._expire_seen(page, cutoff)
                page = []
        return removed + (self._expire_seen(page, cutoff) if page else 0)

    def _expire_seen(self, subjects: list[str], cutoff: float) -> int:
        res = self._eval_batch(
            lua.SEEN_EXPIRE, [([self._rkey(s) + ":s"], [repr(cutoff)]) for s in subjects]
        )
        empty = [s for s, (_gone, left) in zip(subjects, res, strict=True) if int(left) == 0]
        if empty:
            self._eval_batch(lua.SEEN_UNINDEX, [([self._g + ":seen"], [repr(cutoff), *empty])])
        return sum(int(gone) for gone, _left in res)

    # maintenance --------------------------------------------------------------------------

    def _vacuum(self, *, keys_only: bool) -> dict[str, int]:  # noqa: ARG002 - no scope
        """Nothing to do: a deleted or trimmed key leaves no dead row for a later read.

        Redis frees a key's memory when it is deleted; what remains are RDB/AOF files and
        replicas' backlogs, which expire on their own schedule (``docs/storage.md``, Erasure).
        """
        return {}

    # stats and checkpoints ----------------------------------------------------------------

    def _incr_stats(self, deltas: dict[str, int]) -> None:
        pipe = self._r.pipeline(transaction=True)
        for k, v in deltas.items():
            pipe.hincrby(self._g + ":stats", k, v)
        pipe.execute()

    def _get_stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._r.hgetall(self._g + ":stats").items()}

    def _get_checkpoint(self, name: str) -> str | None:
        v = self._r.hget(self._g + ":cp", name)
        return None if v is None else v.decode()

    def _set_checkpoint(self, name: str, value: str | None) -> None:
        if value is None:
            self._r.hdel(self._g + ":cp", name)
        else:
            self._r.hset(self._g + ":cp", name, value)

    # change feed and identity -----------------------------------------------------------

    def _feed_keys(self) -> list[str]:
        g = self._g
        return [g + ":seq", g + ":floor", g + ":feed"]

    def _feed_head(self) -> int:
        return int(self._r.get(self._g + ":seq") or 0)

    def _changes(self, after: int, limit: int) -> FeedPage:
        head, floor, items = self._eval_one(lua.FEED_READ, self._feed_keys(), [after, limit])
        entries = [(int(q), u) for q, _at, u in (_text(i).split("|", 2) for i in items)]
        h, f = int(head), int(floor)
        return FeedPage(entries=entries, head=h, complete=f <= after <= h)

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        """Find the cut a page at a time (no long script), then trim in one script.

        Entries appended meanwhile are younger and numbered higher: they never move the cut.
        """
        cut = before_seq
        if older_than is not None:
            young = self._first_young(older_than, cut)
            if young is not None:
                cut = young if cut is None else min(cut, young)
        if cut is None:
            cut = self._feed_head() + 1
        return int(self._eval_one(lua.FEED_TRIM, self._feed_keys()[1:], [cut]))

    def _first_young(self, older_than: float, below: int | None) -> int | None:
        """The seq of the oldest entry stamped at or after ``older_than`` (below ``below``).

        Pages by sequence number, not list index, so a concurrent trim cannot make it skip.
        """
        after = 0
        while True:
            _h, _f, page = self._eval_one(lua.FEED_READ, self._feed_keys(), [after, CHUNK])
            if not page:
                return None
            for item in page:
                seq_text, at, _uid = _text(item).split("|", 2)
                seq = int(seq_text)
                if below is not None and seq >= below:
                    return None
                if int(at) >= older_than:
                    return seq
                after = seq

    def _eval_one(self, src: str, keys: list[str], args: list[Any]) -> Any:
        """One single-slot script (the cluster routes it to the slot's primary)."""
        return self._eval_batch(src, [(keys, args)])[0]

    def _store_id(self) -> str:
        if self._id is None:
            key = self._g + ":id"
            # Created with the layout; created here too if a client raced the creation.
            self._r.set(key, _new_id(self.name), nx=True)
            self._id = _text(self._r.get(key))
        return self._id

    def _key_census(self) -> KeyCensus:
        raw = self._r.hgetall(self._g + ":census")
        return census_from(_census_rows(raw))

    def _close(self) -> None:
        self._r.close()
