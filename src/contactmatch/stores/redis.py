"""Redis adapter (``redis://host:port/db?prefix=p``) on redis-py.

Key layout (``P`` is the prefix, default ``cm``): everything about one user lives under the hash
tag ``{P:u:<user id>}`` so it shares one Cluster slot: ``{P:u:<id>}`` (registration hash),
``...:c`` (uploaded contact tokens, hex), ``...:rl`` (rate-limit buckets), ``...:seen``.
Indexes are one key per token, ``{P:t:<hex>}`` (token -> user id) and ``{P:o:<hex>}`` (token
-> owners who uploaded it), so they spread over slots. Service-wide state sits under ``{P:g}``:
``:ids`` (user ids, for paging), ``:log``/``:seq`` (filter membership log), ``:fv``/``:f:<v>``
(filter versions), ``:stats``, ``:cp`` (checkpoints), ``:schema``.

Every multi-key change is one Lua script, hence atomic on a single Redis (primary + replicas,
Sentinel). See ``docs/storage.md`` for what changes on a Redis Cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
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
    FilterDelta,
    FilterVersion,
    Rekey,
    TakeResult,
    UserRecord,
    check_name,
    net_delta,
)

__all__ = ["SCHEMA_VERSION", "RedisStore"]

SCHEMA_VERSION = 1
CHUNK = 1000  # records per script call: long scripts block every other client
DISC_CODES = {
    Discoverability.EVERYONE: b"0",
    Discoverability.CONTACTS: b"1",
    Discoverability.NOBODY: b"2",
}
DISC_NAMES = {v: k for k, v in DISC_CODES.items()}
USER_FIELDS = ("tok", "kid", "ct", "disc", "cat", "uat")

# Shared Lua helpers: key names and the membership-log rule (same as the SQL triggers).
_LUA_LIB = r"""
local P = ARGV[1]
local G = '{' .. P .. ':g}'
local function ukey(uid) return '{' .. P .. ':u:' .. uid .. '}' end
local function tkey(hex) return '{' .. P .. ':t:' .. hex .. '}' end
local function okey(hex) return '{' .. P .. ':o:' .. hex .. '}' end
local function mlog(ot, od, nt, nd)
  local was = (od == '0')
  local now = (nd == '0')
  if was and ((not now) or nt ~= ot) then
    redis.call('ZREM', G .. ':log', '\1' .. ot)
    local s = redis.call('INCR', G .. ':seq')
    redis.call('ZADD', G .. ':log', s, '\0' .. string.sub(ot, 1, 8))
  end
  if now and ((not was) or nt ~= ot) then
    local s = redis.call('INCR', G .. ':seq')
    redis.call('ZADD', G .. ':log', s, '\1' .. nt)
  end
end
"""

# ARGV: P, n, then per user: uid, hex, tok, kid, ct, disc, cat, uat
_PUT = (
    _LUA_LIB
    + r"""
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local o = 2 + i * 8
  local owner = redis.call('GET', tkey(ARGV[o + 2]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a token in the batch belongs to another user')
  end
end
for i = 0, n - 1 do
  local o = 2 + i * 8
  local uid, hex, tok, disc, cat = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 6], ARGV[o + 7]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'disc', 'cat', 'hex')
  if old[1] then
    cat = old[3]
    if old[1] ~= tok then redis.call('DEL', tkey(old[4])) end
  else
    redis.call('ZADD', G .. ':ids', 0, uid)
  end
  redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 4], 'ct', ARGV[o + 5],
             'disc', disc, 'cat', cat, 'uat', ARGV[o + 8])
  redis.call('SET', tkey(hex), uid)
  mlog(old[1], old[2], tok, disc)
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
  local uid, disc = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'disc')
  redis.call('HSET', uk, 'disc', disc, 'uat', ARGV[2])
  mlog(old[1], old[2], old[1], disc)
end
return n
"""
)

# ARGV: P, now, n, then per update: uid, old, new, hex, kid, ct ('' keeps the old one)
_REKEY = (
    _LUA_LIB
    + r"""
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local o = 3 + i * 6
  local owner = redis.call('GET', tkey(ARGV[o + 4]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a new token belongs to another user')
  end
end
local done = 0
for i = 0, n - 1 do
  local o = 3 + i * 6
  local uid, tok, hex = ARGV[o + 1], ARGV[o + 3], ARGV[o + 4]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'disc', 'hex')
  if old[1] and old[1] == ARGV[o + 2] then
    redis.call('DEL', tkey(old[3]))
    redis.call('SET', tkey(hex), uid)
    redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 5], 'uat', ARGV[2])
    if ARGV[o + 6] ~= '' then redis.call('HSET', uk, 'ct', ARGV[o + 6]) end
    mlog(old[1], old[2], tok, old[2])
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
local old = redis.call('HMGET', uk, 'tok', 'disc', 'hex')
if not old[1] then return 0 end
redis.call('DEL', tkey(old[3]))
mlog(old[1], old[2], false, false)
redis.call('ZREM', G .. ':ids', uid)
drop_contacts(uk, uid)
redis.call('DEL', uk, uk .. ':rl', uk .. ':seen')
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

# KEYS: bucket hash; ARGV: quota, cost, capacity, refill, now
_TAKE = r"""
local q, cost, cap, refill, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
                                  tonumber(ARGV[4]), tonumber(ARGV[5])
local st = redis.call('HMGET', KEYS[1], q .. ':l', q .. ':t')
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
if updated > now then now = updated end
redis.call('HSET', KEYS[1], q .. ':l', string.format('%.17g', level),
           q .. ':t', string.format('%.17g', now))
return {allowed, string.format('%.17g', retry)}
"""

# ARGV: P, version, kid, blob, now
_PUT_FILTER = (
    _LUA_LIB
    + r"""
local latest = redis.call('ZREVRANGE', G .. ':fv', 0, 0)
if latest[1] and tonumber(ARGV[2]) <= tonumber(latest[1]) then
  return redis.error_reply('CONFLICT filter version is not above the latest one')
end
local seq = tonumber(redis.call('GET', G .. ':seq') or '0')
redis.call('HSET', G .. ':f:' .. ARGV[2], 'kid', ARGV[3], 'blob', ARGV[4], 'seq', seq,
           'cat', ARGV[5])
redis.call('ZADD', G .. ':fv', ARGV[2], ARGV[2])
return seq
"""
)

# ARGV: P, keep_from
_COMPACT = (
    _LUA_LIB
    + r"""
local seq = redis.call('HGET', G .. ':f:' .. ARGV[2], 'seq')
if not seq then return 0 end
local old = redis.call('ZRANGEBYSCORE', G .. ':fv', '-inf', '(' .. ARGV[2])
for _, v in ipairs(old) do redis.call('DEL', G .. ':f:' .. v) end
redis.call('ZREMRANGEBYSCORE', G .. ':fv', '-inf', '(' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', G .. ':log', '-inf', seq)
return #old
"""
)


def _text(v: Any) -> str:
    """redis-py returns bytes (no decode_responses); ids and names are ASCII."""
    return v.decode() if isinstance(v, bytes) else str(v)


def split_url(url: str, prefix: str | None) -> tuple[str, str]:
    """Remove our ``prefix`` query option from the URL; return (url, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == "prefix"]
    rest = [(k, v) for k, v in query if k != "prefix"]
    chosen = prefix if prefix is not None else (ours[-1] if ours else "cm")
    # Braces and colons would break the hash tags; the name rule excludes braces.
    check_name(chosen, "key prefix")
    return urlunsplit(parts._replace(query=urlencode(rest))), chosen


class RedisStore(BaseStore):
    """Redis :class:`~contactmatch.stores.base.RegistryStore`; thread- and process-safe."""

    name = "redis"

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
            self._r: Any = redis.Redis.from_url(
                clean, socket_timeout=timeout, socket_connect_timeout=timeout
            )
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
        self._put_filter_script = reg(_PUT_FILTER)
        self._compact = reg(_COMPACT)

    def _check_layout(self) -> None:
        self._r.set(self._g + ":schema", SCHEMA_VERSION, nx=True)
        stored = int(_text(self._r.get(self._g + ":schema") or 0))
        if stored > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"key layout v{stored} is newer than this library (v{SCHEMA_VERSION})"
            )

    def _ukey(self, user_id: str) -> str:
        return "{" + self.prefix + ":u:" + user_id + "}"

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

    def _record(self, user_id: str, vals: Sequence[Any]) -> UserRecord | None:
        if vals[0] is None:
            return None
        return UserRecord(
            user_id=user_id,
            token=vals[0],
            key_id=vals[1].decode(),
            number_ct=vals[2],
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
                    DISC_CODES[u.discoverability],
                    repr(u.created_at),
                    repr(u.updated_at),
                )
            self._put(args=args)

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        pipe = self._r.pipeline(transaction=False)
        for u in user_ids:
            pipe.hmget(self._ukey(u), USER_FIELDS)
        return [self._record(u, v) for u, v in zip(user_ids, pipe.execute(), strict=True)]

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        p = self.prefix
        uids = self._r.mget(["{" + p + ":t:" + t.hex() + "}" for t in tokens])
        found = [(t, u.decode()) for t, u in zip(tokens, uids, strict=True) if u is not None]
        recs = dict(zip([t for t, _ in found], self._get_users([u for _, u in found]), strict=True))
        # A user may re-register between the two reads: only a matching token counts.
        return [r if (r := recs.get(t)) is not None and r.token == t else None for t in tokens]

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
                args += (u.user_id, u.old_token, u.new_token, u.new_token.hex(), u.key_id, ct)
            done += int(self._rekey(args=args))
        return done

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        lo = "-" if after is None else "(" + after
        ids = [i.decode() for i in self._r.zrangebylex(self._g + ":ids", lo, "+", 0, limit)]
        return [r for r in self._get_users(ids) if r is not None] if ids else []

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
            keys=[self._ukey(subject) + ":rl"],
            args=[quota, repr(cost), repr(capacity), repr(refill), repr(now)],
        )
        r = float(retry)
        return TakeResult(bool(allowed), math.inf if math.isinf(r) else r)

    def _count_unseen(self, subject: str, fingerprints: list[bytes]) -> int:
        flags = self._r.smismember(self._ukey(subject) + ":seen", fingerprints)
        return sum(not f for f in flags)

    def _add_seen(self, subject: str, fingerprints: list[bytes]) -> int:
        return int(self._r.sadd(self._ukey(subject) + ":seen", *fingerprints))

    def _reset_seen(self, subject: str) -> None:
        self._r.delete(self._ukey(subject) + ":seen")

    # filter -------------------------------------------------------------------------------

    def _put_filter(self, version: int, key_id: str, blob: bytes, now: float) -> FilterVersion:
        seq = int(self._put_filter_script(args=[self.prefix, version, key_id, blob, repr(now)]))
        return FilterVersion(version=version, key_id=key_id, blob=blob, log_seq=seq, created_at=now)

    def _get_filter(self, version: int | None) -> FilterVersion | None:
        if version is None:
            latest = self._r.zrevrange(self._g + ":fv", 0, 0)
            if not latest:
                return None
            version = int(latest[0])
        vals = self._r.hmget(f"{self._g}:f:{version}", ["kid", "blob", "seq", "cat"])
        if vals[0] is None:
            return None
        return FilterVersion(
            version=version,
            key_id=vals[0].decode(),
            blob=vals[1],
            log_seq=int(vals[2]),
            created_at=float(vals[3]),
        )

    def _filter_delta(self, since: int, until: int | None) -> FilterDelta | None:
        lo, hi = self._get_filter(since), self._get_filter(until)
        if lo is None or hi is None:
            return None
        raw = self._r.zrangebyscore(self._g + ":log", f"({lo.log_seq}", hi.log_seq, withscores=True)
        entries = [
            (int(s), m[:1] == b"\x01", m[1:] if m[:1] == b"\x01" else None, m[1:9]) for m, s in raw
        ]
        return net_delta(since, hi.version, entries)

    def _compact_filters(self, keep_from: int) -> None:
        self._compact(args=[self.prefix, keep_from])

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
