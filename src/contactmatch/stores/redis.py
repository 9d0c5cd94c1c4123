"""Redis adapter (``redis://host:port/db?prefix=p``) on redis-py.

Key layout (``P`` is the prefix, default ``cm``). Account state: everything about one user lives
under the hash tag ``{P:u:<user id>}`` so it shares one Cluster slot: ``{P:u:<id>}``
(registration hash), ``...:c`` (uploaded contact tokens, hex), ``...:k`` (the wrapped per-user
key, a key of its own, deleted with the account). Indexes are one key per token,
``{P:t:<hex>}`` (token -> user id) and ``{P:o:<hex>}`` (token -> owners who uploaded it), so
they spread over slots. Rate state, keyed by subject (``n:<hash>``, ``g:eval``; never a user
id): ``{P:r:<subject>}:b:<quota>`` (one leaky bucket, expiring when it has drained) and
``{P:r:<subject>}:s`` (seen set: a sorted set scored by when each fingerprint was added).
Service-wide state sits under ``{P:g}``: ``:ids`` (user ids, for paging), ``:seen`` (subjects
with a seen set, scored by their latest add, so ``expire_rate_state`` finds them), ``:stats``,
``:cp`` (checkpoints), ``:schema``.

Every multi-key change is one Lua script, hence atomic on a single Redis (primary + replicas,
Sentinel). On a Redis Cluster (``redis+cluster://host:port/?prefix=p`` or ``redis://...?cluster=1``)
:class:`RedisClusterStore` splits each script into per-slot steps, each atomic in its slot and
idempotent, run in an order that leaves only states the reads tolerate if a client dies between
two steps; see the class docstring and ``docs/storage.md`` (Redis Cluster).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.cluster
import redis.exceptions

from contactmatch.errors import (
    Conflict,
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
    UnknownUser,
)
from contactmatch.stores.base import (
    BaseStore,
    Discoverability,
    Rekey,
    TakeResult,
    UserRecord,
    check_name,
)

__all__ = ["SCHEMA_VERSION", "RedisClusterStore", "RedisStore"]

SCHEMA_VERSION = 2
CHUNK = 1000  # records per script call: long scripts block every other client
DISC_CODES = {
    Discoverability.EVERYONE: b"0",
    Discoverability.CONTACTS: b"1",
    Discoverability.NOBODY: b"2",
}
DISC_NAMES = {v: k for k, v in DISC_CODES.items()}
USER_FIELDS = ("tok", "kid", "ct", "disc", "cat", "uat")

# Shared Lua helpers: key names.
_LUA_LIB = r"""
local P = ARGV[1]
local G = '{' .. P .. ':g}'
local function ukey(uid) return '{' .. P .. ':u:' .. uid .. '}' end
local function tkey(hex) return '{' .. P .. ':t:' .. hex .. '}' end
local function okey(hex) return '{' .. P .. ':o:' .. hex .. '}' end
"""

# ARGV: P, n, then per user: uid, hex, tok, kid, ct, wk, disc, cat, uat
_PUT = (
    _LUA_LIB
    + r"""
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local o = 2 + i * 9
  local owner = redis.call('GET', tkey(ARGV[o + 2]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a token in the batch belongs to another user')
  end
end
for i = 0, n - 1 do
  local o = 2 + i * 9
  local uid, hex, tok, cat = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 8]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'cat', 'hex')
  if old[1] then
    cat = old[2]
    if old[1] ~= tok then redis.call('DEL', tkey(old[3])) end
  else
    redis.call('ZADD', G .. ':ids', 0, uid)
  end
  redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 4], 'ct', ARGV[o + 5],
             'disc', ARGV[o + 7], 'cat', cat, 'uat', ARGV[o + 9])
  redis.call('SET', uk .. ':k', ARGV[o + 6])
  redis.call('SET', tkey(hex), uid)
end
return n
"""
)

# ARGV: P, now, n, then per user: uid, disc
_DISC = (
    _LUA_LIB
    + r"""
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local uid = ARGV[4 + 2 * i]
  if redis.call('EXISTS', ukey(uid)) == 0 then
    return redis.error_reply('UNKNOWN ' .. uid)
  end
end
for i = 0, n - 1 do
  redis.call('HSET', ukey(ARGV[4 + 2 * i]), 'disc', ARGV[5 + 2 * i], 'uat', ARGV[2])
end
return n
"""
)

# ARGV: P, now, n, then per update: uid, old, new, hex, kid, ct, wk ('' keeps the old ones)
_REKEY = (
    _LUA_LIB
    + r"""
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local o = 3 + i * 7
  local owner = redis.call('GET', tkey(ARGV[o + 4]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a new token belongs to another user')
  end
end
local done = 0
for i = 0, n - 1 do
  local o = 3 + i * 7
  local uid, tok, hex = ARGV[o + 1], ARGV[o + 3], ARGV[o + 4]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'hex')
  if old[1] and old[1] == ARGV[o + 2] then
    redis.call('DEL', tkey(old[2]))
    redis.call('SET', tkey(hex), uid)
    redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 5], 'uat', ARGV[2])
    if ARGV[o + 6] ~= '' then redis.call('HSET', uk, 'ct', ARGV[o + 6]) end
    if ARGV[o + 7] ~= '' then redis.call('SET', uk .. ':k', ARGV[o + 7]) end
    done = done + 1
  end
end
return done
"""
)

_DROP_CONTACTS = r"""
local function drop_contacts(uk, uid)
  local olds = redis.call('SMEMBERS', uk .. ':c')
  for _, h in ipairs(olds) do redis.call('SREM', okey(h), uid) end
  redis.call('DEL', uk .. ':c')
  redis.call('HDEL', uk, 'ckid')
  return #olds
end
"""

# ARGV: P, uid
_DELETE = (
    _LUA_LIB
    + _DROP_CONTACTS
    + r"""
local uid = ARGV[2]
local uk = ukey(uid)
local old = redis.call('HMGET', uk, 'tok', 'hex')
if not old[1] then return 0 end
redis.call('DEL', tkey(old[2]))
redis.call('ZREM', G .. ':ids', uid)
drop_contacts(uk, uid)
redis.call('DEL', uk, uk .. ':k')
return 1
"""
)

# ARGV: P, owner, kid, hex...
_CONTACTS = (
    _LUA_LIB
    + _DROP_CONTACTS
    + r"""
local uid = ARGV[2]
local uk = ukey(uid)
if redis.call('EXISTS', uk) == 0 then return 0 end
drop_contacts(uk, uid)
if #ARGV > 3 then
  for i = 4, #ARGV do
    redis.call('SADD', uk .. ':c', ARGV[i])
    redis.call('SADD', okey(ARGV[i]), uid)
  end
  redis.call('HSET', uk, 'ckid', ARGV[3])
end
return 1
"""
)

# ARGV: P, uid, keep kid: drop one owner's uploads if made under another key id
_PURGE_ONE = (
    _LUA_LIB
    + _DROP_CONTACTS
    + r"""
local uk = ukey(ARGV[2])
local kid = redis.call('HGET', uk, 'ckid')
if (not kid) or kid == ARGV[3] then return 0 end
return drop_contacts(uk, ARGV[2])
"""
)

# KEYS: one bucket's hash; ARGV: cost, capacity, refill, now. The key expires when the bucket
# has drained (in the server's clock, which production callers share); an empty bucket is the
# same as none, so it is deleted rather than written.
_TAKE = r"""
local cost, cap, refill, now = tonumber(ARGV[1]), tonumber(ARGV[2]),
                               tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'l', 't')
local level, updated = tonumber(st[1]) or 0, tonumber(st[2]) or now
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
level = level - elapsed * refill
if level < 0 then level = 0 end
local allowed, retry = 0, 0
if level + cost <= cap then
  allowed, level = 1, level + cost
elseif cost > cap then
  retry = math.huge
else
  retry = (level + cost - cap) / refill
end
local t = now
if updated > t then t = updated end
if level <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'l', string.format('%.17g', level),
             't', string.format('%.17g', t))
  local ms = math.ceil(((t - now) + level / refill) * 1000)
  if ms < 2 ^ 46 then
    redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ms))
  else
    redis.call('PERSIST', KEYS[1])
  end
end
return {allowed, string.format('%.17g', retry)}
"""

# KEYS: a seen set; ARGV: now, fingerprint... Adds new members at ``now`` and raises older
# scores to it; returns how many were new. Chunked: Lua's unpack has a bounded stack.
_SEEN_ADD = r"""
local now, n, new = ARGV[1], #ARGV, 0
local i = 2
while i <= n do
  local j = math.min(i + 999, n)
  local args = {}
  for k = i, j do
    args[#args + 1] = now
    args[#args + 1] = ARGV[k]
  end
  new = new + redis.call('ZADD', KEYS[1], 'NX', unpack(args))
  redis.call('ZADD', KEYS[1], 'GT', unpack(args))
  i = j + 1
end
return new
"""

# KEYS: a seen set; ARGV: cutoff. Drops entries added at or before it: {removed, left}.
_SEEN_EXPIRE = r"""
local gone = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return {gone, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: the seen-set index; ARGV: cutoff, subject... Unlists subjects with no add since cutoff
# (a subject that added meanwhile keeps its entry).
_SEEN_UNINDEX = r"""
local gone = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then
    gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return gone
"""

_V1_USERS = (
    "redis: this prefix holds registrations from key layout v1, whose numbers have no "
    "per-user key and cannot be crypto-shredded; export and re-register them, then use an "
    "empty prefix"
)


def _text(v: Any) -> str:
    """redis-py returns bytes (no decode_responses); ids and names are ASCII."""
    return v.decode() if isinstance(v, bytes) else str(v)


_TRUE = {"1", "true", "yes", "on"}


def wants_cluster(url: str) -> bool:
    """Whether the URL names a Redis Cluster (``redis+cluster://`` or ``?cluster=1``)."""
    parts = urlsplit(url)
    if parts.scheme.lower().endswith("+cluster"):
        return True
    return any(k == "cluster" and v.lower() in _TRUE for k, v in parse_qsl(parts.query))


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


class RedisStore(BaseStore):
    """Redis :class:`~contactmatch.stores.base.RegistryStore`; thread- and process-safe."""

    name = "redis"
    #: Whether this handle talks to a Redis Cluster (per-slot steps instead of scripts).
    cluster = False

    def __new__(cls, url: str, **_options: Any) -> RedisStore:
        """``redis://...?cluster=1`` opens a :class:`RedisClusterStore`."""
        chosen = RedisClusterStore if cls is RedisStore and wants_cluster(str(url)) else cls
        return super().__new__(chosen)

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0) -> None:
        """Connect and check (or record) the key layout version under the prefix.

        Args:
            url: a redis-py URL, optionally with ``?prefix=name`` (default ``cm``).
            prefix: overrides the URL's prefix; tests use one per test.
            timeout: socket connect/read timeout in seconds.

        Raises:
            StoreUnavailable: the server cannot be reached.
            SchemaVersionError: the keys were written by a newer contactmatch.
        """
        clean, self.prefix = split_url(url, prefix)
        self._g = "{" + self.prefix + ":g}"
        with self._mapped("open"):
            self._r: Any = self._connect(clean, timeout)
            try:
                self._check_layout()
            except BaseException:
                self._r.close()
                raise
        reg = self._r.register_script
        self._put = reg(_PUT)
        self._disc = reg(_DISC)
        self._rekey = reg(_REKEY)
        self._delete = reg(_DELETE)
        self._contacts = reg(_CONTACTS)
        self._purge_one = reg(_PURGE_ONE)
        self._take_script = reg(_TAKE)
        self._scripts = {src: reg(src) for src in (_SEEN_ADD, _SEEN_EXPIRE, _SEEN_UNINDEX)}

    def _connect(self, url: str, timeout: float) -> Any:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _check_layout(self) -> None:
        self._r.set(self._g + ":schema", SCHEMA_VERSION, nx=True)
        stored = int(_text(self._r.get(self._g + ":schema") or 0))
        if stored > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"key layout v{stored} is newer than this library (v{SCHEMA_VERSION})"
            )
        if stored == 1:
            self._upgrade_from_v1()

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
        self._r.set(g + ":schema", SCHEMA_VERSION)

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

    def _put_users(self, users: list[UserRecord]) -> None:
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            args: list[Any] = [self.prefix, len(chunk)]
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
        args: list[Any] = [self.prefix, repr(now), len(changes)]
        for uid, d in changes.items():
            args += (uid, DISC_CODES[d])
        self._disc(args=args)

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        done = 0
        for i in range(0, len(updates), CHUNK):
            chunk = updates[i : i + CHUNK]
            args: list[Any] = [self.prefix, repr(now), len(chunk)]
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
        return bool(self._delete(args=[self.prefix, user_id]))

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
            _SEEN_ADD, [([self._rkey(subject) + ":s"], [repr(now), *fingerprints])]
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
            _SEEN_EXPIRE, [([self._rkey(s) + ":s"], [repr(cutoff)]) for s in subjects]
        )
        empty = [s for s, (_gone, left) in zip(subjects, res, strict=True) if int(left) == 0]
        if empty:
            self._eval_batch(_SEEN_UNINDEX, [([self._g + ":seen"], [repr(cutoff), *empty])])
        return sum(int(gone) for gone, _left in res)

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

    def _close(self) -> None:
        self._r.close()


# -- Redis Cluster: one script per slot -----------------------------------------------------
# Each script below touches the keys of ONE hash tag only and names them in KEYS, so the
# cluster routes it to the slot's primary and runs it atomically there.

# KEYS: token index key; ARGV: uid, stale owner ('' if none). Claim a token for uid.
_C_CLAIM = r"""
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then
  return redis.error_reply('CONFLICT a token belongs to another user')
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS: token index key; ARGV: uid. Drop the entry only if it still names uid.
_C_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: G:ids; ARGV: op ('add'|'del'), uid, op, uid, ... The id index, one slot.
_C_IDS = r"""
for i = 1, #ARGV, 2 do
  if ARGV[i] == 'add' then redis.call('ZADD', KEYS[1], 0, ARGV[i + 1]) end
  if ARGV[i] == 'del' then redis.call('ZREM', KEYS[1], ARGV[i + 1]) end
end
return 1
"""

# KEYS: user hash, its wrapped-key key (same slot); ARGV: expected tok, expected disc ('' =
# absent), then the fields to set as name, value pairs ('' values are skipped; 'wk' goes to the
# key). Compare-and-set: 0 if the user changed meanwhile.
_C_USER_SET = r"""
local old = redis.call('HMGET', KEYS[1], 'tok', 'disc', 'cat')
if (old[1] or '') ~= ARGV[1] or (old[2] or '') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do
  local v = ARGV[i + 1]
  if ARGV[i] == 'cat' and old[3] then v = old[3] end
  if v ~= '' then
    if ARGV[i] == 'wk' then
      redis.call('SET', KEYS[2], v)
    else
      redis.call('HSET', KEYS[1], ARGV[i], v)
    end
  end
end
return 1
"""

# KEYS: user hash, its contact set; ARGV: kid, hex... Swap the set; returns the old members,
# or -1 if the user does not exist.
_C_CONTACTS_SWAP = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local olds = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
if #ARGV > 1 then
  for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
  redis.call('HSET', KEYS[1], 'ckid', ARGV[1])
else
  redis.call('HDEL', KEYS[1], 'ckid')
end
return olds
"""

# KEYS: user hash, its contact set; ARGV: keep kid. Drop uploads made under another key id;
# returns the dropped members.
_C_PURGE = r"""
local kid = redis.call('HGET', KEYS[1], 'ckid')
if (not kid) or kid == ARGV[1] then return {} end
local olds = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'ckid')
return olds
"""

_RETRIES = 16  # compare-and-set rounds before giving up on users that keep changing
_C_SCRIPTS = (_C_CLAIM, _C_RELEASE, _C_IDS, _C_USER_SET, _C_CONTACTS_SWAP, _C_PURGE)
# Inherited scripts: one hash tag each, so cluster-ready as they are.
_SINGLE_SLOT = (_TAKE, _SEEN_ADD, _SEEN_EXPIRE, _SEEN_UNINDEX)


@dataclass(slots=True)
class _Change:
    """One user's pending write: the new token (None: keep it), setting and hash fields."""

    uid: str
    tok: bytes | None
    disc: bytes | None  # None: keep the setting
    fields: list[Any]
    op: str = ""  # id index op: 'add' on registration
    expect: bytes | None = None  # rekey: apply only while the stored token is this one
    need_user: bool = False  # discoverability: skip a user deleted meanwhile


class RedisClusterStore(RedisStore):
    """:class:`RedisStore` on a Redis Cluster: per-slot steps instead of cross-slot scripts.

    A write that spans slots (user hash ``{P:u:<id>}``, token index ``{P:t:<hex>}`` and
    ``{P:o:<hex>}``, service-wide ``{P:g}``) runs as a sequence of steps, each one Lua script
    or command on one slot (atomic there) and idempotent, in this order:

    * register / change token / change discoverability / rekey: read the user hash; claim the
      new token's index entry; add a new user to the id index (``{P:g}``); compare-and-set
      the user hash and its wrapped-key key (one slot; re-read and repeat if it changed
      meanwhile); release the old token's index entry if it still names the user; re-read
      the hash and re-claim (``SET NX``) its token's entry, which a concurrent writer's
      release may have removed.
    * delete: read the hash; release the token index entry (the user is unfindable from
      here on); drop the user from the owner sets of its uploads; drop the id; delete the
      hash, wrapped key and upload set (one slot) last.
    * add to a seen set: list the subject in the seen index (``{P:g}``), then add (the
      subject's slot).
    * replace contacts: add the owner to the new tokens' owner sets; swap the owner's upload
      set; remove the owner from the owner sets of tokens no longer uploaded.

    The user hash is the truth and the indexes are hints that reads re-check: a token entry
    that names a missing user, or one whose token differs, reads as absent (and may be taken
    over by another registration); an owner set entry counts only if the owner's own upload
    set holds the token. So a client dying between steps leaves a state reads already accept,
    and repeating the call converges (the hash, written after the claim and log steps and
    deleted last on erase, still tells the retry what is left to do). What is lost against
    one Redis: batches are not all-or-nothing across users (a ``Conflict`` found by the
    up-front check still changes nothing; one raised by a concurrent writer mid-batch leaves
    the earlier users applied). ``docs/storage.md`` (Redis Cluster) lists the crash states.
    """

    name = "redis+cluster"
    cluster = True

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0) -> None:
        """Connect to the cluster (any node's address) and check the key layout version.

        Args:
            url: ``redis+cluster://host:port/?prefix=p`` (``rediss+cluster://`` for TLS) or a
                redis-py URL with ``?cluster=1``.
            prefix: overrides the URL's prefix.
            timeout: socket connect/read timeout in seconds.
        """
        super().__init__(url, prefix=prefix, timeout=timeout)
        with self._mapped("open"):
            try:
                self._load_scripts()
            except BaseException:
                self._r.close()
                raise

    def _connect(self, url: str, timeout: float) -> Any:
        parts = urlsplit(url)
        scheme = parts.scheme.lower().removesuffix("+cluster")
        # A cluster has only database 0: drop the path rather than SELECT.
        clean = urlunsplit(parts._replace(scheme=scheme, path=""))
        return redis.cluster.RedisCluster.from_url(
            clean, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def _translate(self, exc: Exception, op: str) -> StoreError:
        if isinstance(exc, redis.exceptions.RedisClusterException) and not isinstance(
            exc, redis.exceptions.ResponseError
        ):
            return StoreUnavailable(f"redis: {op}: cluster unavailable ({type(exc).__name__})")
        return super()._translate(exc, op)

    def _mget(self, keys: list[str]) -> list[Any]:
        return list(self._r.mget_nonatomic(keys))

    def _eval_batch(self, src: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        return self._eval_many([(src, keys, args) for keys, args in calls])

    # step helpers -------------------------------------------------------------------------

    def _tkey(self, hex_: str) -> str:
        return "{" + self.prefix + ":t:" + hex_ + "}"

    def _okey(self, hex_: str) -> str:
        return "{" + self.prefix + ":o:" + hex_ + "}"

    def _eval_many(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Run single-slot scripts ``(source, keys, args)``; results aligned with ``calls``.

        redis-py refuses scripts in a cluster pipeline, so the calls are grouped by the
        primary that serves their slot and pipelined to it directly. Any call that fails there
        (moved slot, ``NOSCRIPT`` after a failover, a lost connection) runs again through the
        cluster client, which follows redirections: every step is idempotent, so running one
        twice is harmless. Script errors (``CONFLICT``) surface from that second run.
        """
        if not calls:
            return []
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            node = self._r.get_node_from_key(keys[0])
            groups.setdefault(node.name, (node, []))[1].append(i)
        results: list[Any] = [None] * len(calls)
        redo: list[int] = []
        for node, idx in groups.values():
            pipe = node.redis_connection.pipeline(transaction=False)
            for i in idx:
                src, keys, args = calls[i]
                pipe.evalsha(self._sha[src], len(keys), *keys, *args)
            try:
                out = pipe.execute(raise_on_error=False)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                redo += idx
                continue
            for i, r in zip(idx, out, strict=True):
                if isinstance(r, Exception):
                    redo.append(i)
                else:
                    results[i] = r
        for i in sorted(redo):
            results[i] = self._eval(*calls[i])
        return results

    def _eval(self, src: str, keys: list[str], args: list[Any]) -> Any:
        """One single-slot script through the cluster client (loading scripts if needed)."""
        try:
            return self._r.evalsha(self._sha[src], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._load_scripts()
            return self._r.evalsha(self._sha[src], len(keys), *keys, *args)

    def _load_scripts(self) -> None:
        # The inherited single-slot scripts too: loaded on every primary up front, no call
        # pays a NOSCRIPT round trip.
        self._sha = {src: self._r.script_load(src) for src in (*_C_SCRIPTS, *_SINGLE_SLOT)}

    def _read(self, user_ids: list[str]) -> list[list[Any]]:
        """Each user's (tok, disc, hex), None fields where the user does not exist."""
        if not user_ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for u in user_ids:
            pipe.hmget(self._ukey(u), ["tok", "disc", "hex"])
        return [list(v) for v in pipe.execute()]

    def _stale_owners(self, claims: list[tuple[str, bytes]]) -> dict[str, str]:
        """Check (uid, token) claims against the index; returns hex -> stale owner to replace.

        Raises:
            Conflict: a token belongs to another user whose hash still holds it.
        """
        hexes = [t.hex() for _, t in claims]
        owners = self._mget([self._tkey(h) for h in hexes])
        other = [
            (h, tok, o.decode())
            for (uid, tok), h, o in zip(claims, hexes, owners, strict=True)
            if o is not None and o.decode() != uid
        ]
        if not other:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for _, _, o in other:
            pipe.hget(self._ukey(o), "tok")
        stale: dict[str, str] = {}
        for (h, tok, o), held in zip(other, pipe.execute(), strict=True):
            if held is not None and hmac.compare_digest(held, tok):
                raise Conflict("redis: a token in the batch belongs to another user")
            stale[h] = o
        return stale

    def _ids(self, entries: list[tuple[str, str]]) -> None:
        """The id index step: ('add' | 'del', uid) per user; nothing to do for other ops."""
        args = [x for op, uid in entries if op for x in (op, uid)]
        if args:
            self._eval(_C_IDS, [self._g + ":ids"], args)

    def _settle(self, uids: list[str], released: list[tuple[str, str]]) -> None:
        """Release old (uid, hex) index entries, then re-assert each user's current entry.

        Writers of the same user race: one may release a token's entry just after another
        claimed it to move the user back to that token. Every writer therefore re-reads the
        hash after its own hash and release steps and re-claims (``SET NX``) the entry of
        whatever token the hash now holds; the last writer to touch a token thus always
        leaves its entry in place.
        """
        self._eval_many([(_C_RELEASE, [self._tkey(h)], [uid]) for uid, h in released])
        if not uids:
            return
        pipe = self._r.pipeline(transaction=False)
        for uid in uids:
            pipe.hget(self._ukey(uid), "hex")
        now = pipe.execute()
        pipe = self._r.pipeline(transaction=False)
        for uid, h in zip(uids, now, strict=True):
            if h is not None:
                pipe.set(self._tkey(h.decode()), uid, nx=True)
        pipe.execute()

    def _apply(self, changes: list[_Change], olds: list[list[Any]], stale: dict[str, str]) -> int:
        """Claim, log, compare-and-set, release, stage by stage; returns how many applied.

        Each stage is one pipeline over the batch, so every user still sees the steps in the
        documented order. A user whose hash changed between the read and the compare-and-set
        is re-read and goes through the log and hash steps again (both idempotent).
        """

        def eligible(c: _Change, old: Sequence[Any]) -> bool:
            if c.expect is not None:
                return old[0] is not None and hmac.compare_digest(old[0], c.expect)
            return old[0] is not None or not c.need_user

        pending = [(c, o) for c, o in zip(changes, olds, strict=True) if eligible(c, o)]
        self._eval_many(
            [
                (_C_CLAIM, [self._tkey(c.tok.hex())], [c.uid, stale.get(c.tok.hex(), "")])
                for c, _ in pending
                if c.tok is not None
            ]
        )
        done = 0
        for _ in range(_RETRIES):
            if not pending:
                return done
            self._ids([(c.op, c.uid) for c, _ in pending])
            res = self._eval_many(
                [
                    (
                        _C_USER_SET,
                        [self._ukey(c.uid), self._ukey(c.uid) + ":k"],
                        [o[0] or b"", o[1] or b"", *c.fields],
                    )
                    for c, o in pending
                ]
            )
            ok = [(c, o) for (c, o), r in zip(pending, res, strict=True) if r]
            self._settle(
                [c.uid for c, _ in ok if c.tok is not None],
                [
                    (c.uid, o[2].decode())
                    for c, o in ok
                    if c.tok is not None and o[2] is not None and o[2].decode() != c.tok.hex()
                ],
            )
            done += len(ok)
            again = [c for (c, _), r in zip(pending, res, strict=True) if not r]
            reread = self._read([c.uid for c in again])
            pending = [(c, o) for c, o in zip(again, reread, strict=True) if eligible(c, o)]
        if pending:
            raise Conflict("redis: users kept changing during the write; retry")
        return done

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord]) -> None:
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            olds = self._read([u.user_id for u in chunk])
            stale = self._stale_owners([(u.user_id, u.token) for u in chunk])
            changes = []
            for u in chunk:
                disc = DISC_CODES[u.discoverability]
                fields = [
                    *("tok", u.token, "hex", u.token.hex(), "kid", u.key_id, "ct", u.number_ct),
                    *("wk", u.wrapped_key, "disc", disc),
                    *("cat", repr(u.created_at), "uat", repr(u.updated_at)),
                ]
                changes.append(_Change(u.user_id, u.token, disc, fields, op="add"))
            self._apply(changes, olds, stale)

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        uids = list(changes)
        olds = self._read(uids)
        for uid, old in zip(uids, olds, strict=True):
            if old[0] is None:
                raise UnknownUser(f"no registered user {uid!r}")
        fields = ["uat", repr(now)]
        todo = [
            _Change(u, None, DISC_CODES[d], ["disc", DISC_CODES[d], *fields], need_user=True)
            for u, d in changes.items()
        ]
        self._apply(todo, olds, {})

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        done = 0
        for i in range(0, len(updates), CHUNK):
            chunk = updates[i : i + CHUNK]
            olds = self._read([u.user_id for u in chunk])
            stale = self._stale_owners([(u.user_id, u.new_token) for u in chunk])
            changes = [
                _Change(
                    u.user_id,
                    u.new_token,
                    None,
                    [
                        *("tok", u.new_token, "hex", u.new_token.hex(), "kid", u.key_id),
                        *("uat", repr(now), "ct", b"" if u.number_ct is None else u.number_ct),
                        *("wk", b"" if u.wrapped_key is None else u.wrapped_key),
                    ],
                    expect=u.old_token,
                )
                for u in chunk
            ]
            done += self._apply(changes, olds, stale)
        return done

    def _delete_account(self, user_id: str) -> bool:
        uk = self._ukey(user_id)
        old = self._read([user_id])[0]
        if old[0] is None:
            return False
        # Unfindable by token first; the hash goes last, so that a retry after a crash still
        # finds the user and finishes the erasure.
        self._eval_many([(_C_RELEASE, [self._tkey(old[2].decode())], [user_id])])
        self._drop_owner(user_id, list(self._r.smembers(uk + ":c")))
        self._ids([("del", user_id)])
        self._r.delete(uk, uk + ":k", uk + ":c")
        return True

    # contacts -----------------------------------------------------------------------------

    def _drop_owner(self, owner_id: str, hexes: list[Any]) -> None:
        if not hexes:
            return
        pipe = self._r.pipeline(transaction=False)
        for h in hexes:
            pipe.srem(self._okey(_text(h)), owner_id)
        pipe.execute()

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        uk = self._ukey(owner_id)
        if not self._r.exists(uk):
            return False
        new = [t.hex() for t in tokens]
        if new:
            pipe = self._r.pipeline(transaction=False)
            for h in new:
                pipe.sadd(self._okey(h), owner_id)
            pipe.execute()
        olds = self._eval_many([(_C_CONTACTS_SWAP, [uk, uk + ":c"], [key_id, *new])])[0]
        if olds == -1:  # deleted meanwhile: take back what we added
            self._drop_owner(owner_id, list(new))
            return False
        keep = set(new)
        self._drop_owner(owner_id, [h for h in olds if _text(h) not in keep])
        return True

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        listed = super()._contact_owners(tokens)
        pairs = [(i, o) for i, owners in enumerate(listed) for o in owners]
        if not pairs:
            return listed
        # An owner set entry counts only if the owner's own upload set agrees (see class doc).
        pipe = self._r.pipeline(transaction=False)
        for i, o in pairs:
            pipe.sismember(self._ukey(o) + ":c", tokens[i].hex())
        out: list[list[str]] = [[] for _ in tokens]
        for (i, o), ok in zip(pairs, pipe.execute(), strict=True):
            if ok:
                out[i].append(o)
        return out

    def _purge_contacts(self, keep_key_id: str) -> int:
        dropped, after = 0, "-"
        while True:
            ids = self._r.zrangebylex(self._g + ":ids", after, "+", 0, CHUNK)
            if not ids:
                return dropped
            for raw in ids:
                uid = raw.decode()
                uk = self._ukey(uid)
                olds = self._eval(_C_PURGE, [uk, uk + ":c"], [keep_key_id])
                self._drop_owner(uid, list(olds))
                dropped += len(olds)
            after = "(" + ids[-1].decode()
