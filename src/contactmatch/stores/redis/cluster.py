"""Redis Cluster adapter: the single-Redis scripts split into per-slot steps.

See :class:`RedisClusterStore` and ``docs/storage.md`` (Redis Cluster, The change feed).
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.cluster
import redis.exceptions

from contactmatch.errors import Conflict, StoreError, StoreUnavailable, UnknownUser
from contactmatch.stores.census import census_deltas, census_from
from contactmatch.stores.records import Discoverability, FeedPage, KeyCensus, Rekey, UserRecord
from contactmatch.stores.redis import _lua as lua
from contactmatch.stores.redis.single import (
    CHUNK,
    DISC_CODES,
    RedisStore,
    _census_rows,
    _new_id,
    _text,
)

__all__ = ["GROUPS", "RedisClusterStore"]

#: Slot groups of a new prefix: a user's keys share one group's slot with its outbox, counter
#: and census. Readers pump every group's outbox, so this bounds their cost; 64 groups still
#: spread users over up to 64 primaries.
GROUPS = 64
_RETRIES = 16  # compare-and-set rounds before giving up on users that keep changing


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
      the user hash and its wrapped-key key, moving the group's census and adding an outbox
      entry in the same script (one slot; re-read and repeat if it changed meanwhile);
      release the old token's index entry if it still names the user; re-read the hash and
      re-claim (``SET NX``) its token's entry, which a concurrent writer's release may have
      removed; pump the group outboxes into the feed.
    * delete: read the hash; release the token index entry (the user is unfindable from
      here on); drop the user from the owner sets of its uploads; drop the id; delete the
      hash, wrapped key and upload set, move the census and add the outbox entry (one slot,
      one script) last; pump.
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

    Slot groups and the change feed. A user's keys carry the hash tag of one of ``G`` slot
    groups (``{P:s<g>}``, ``g = crc32(user id) mod G``, ``G`` fixed per prefix in
    ``{P:g}:groups``, 64 by default), so that the group's outbox, counter and census share the
    user's slot and change in the same script as the user. The pump step moves outbox entries
    into the global feed ``{P:g}:feed``: one script in ``{P:g}`` numbers every entry of a
    group above the group's mark (``{P:g}:pumped``) and raises the mark, so running it twice
    changes nothing; the outbox is then trimmed to the mark. Writers pump the groups they
    touched; every ``changes`` and ``feed_head`` call first pumps all ``G`` outboxes, so an
    entry left by a writer that died after its user step is numbered before any reader reads
    past it. See ``docs/storage.md`` (The change feed) for what this guarantees.
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
        self._groups = 0  # read from the layout before any key of a user is named
        super().__init__(url, prefix=prefix, timeout=timeout)
        with self._mapped("open"):
            try:
                self._load_scripts()
            except BaseException:
                self._r.close()
                raise

    # key layout ---------------------------------------------------------------------------

    def _check_layout(self) -> None:
        # The group count must be known before a user's key is named (the upgrade moves keys).
        self._r.set(self._g + ":groups", GROUPS, nx=True)
        self._groups = int(_text(self._r.get(self._g + ":groups")))
        super()._check_layout()

    def _group(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self._groups

    def _gtag(self, group: int) -> str:
        return "{" + self.prefix + ":s" + str(group) + "}"

    def _ukey(self, user_id: str) -> str:
        return self._gtag(self._group(user_id)) + ":u:" + user_id

    def _gkeys(self, user_id: str) -> list[str]:
        """The outbox, counter and census of the user's slot group."""
        tag = self._gtag(self._group(user_id))
        return [tag + ":ob", tag + ":n", tag + ":census"]

    def _upgrade_from_v2(self) -> None:
        """Layout v2 -> v3: move every user's keys from ``{P:u:<id>}`` to their slot group.

        Per page of ids: read the old hash, wrapped key and upload set, write them under the
        new names, delete the old ones. Crash-safe by re-running (a user whose old hash is
        gone was moved). Then each group's census is counted from the moved users.
        """
        self._r.set(self._g + ":id", _new_id(self.name), nx=True)
        after = "-"
        while ids := self._r.zrangebylex(self._g + ":ids", after, "+", 0, CHUNK):
            uids = [_text(i) for i in ids]
            olds = ["{" + self.prefix + ":u:" + u + "}" for u in uids]
            pipe = self._r.pipeline(transaction=False)
            for old in olds:
                pipe.hgetall(old)
                pipe.get(old + ":k")
                pipe.smembers(old + ":c")
            out = pipe.execute()
            pipe = self._r.pipeline(transaction=False)
            for i, uid in enumerate(uids):
                fields, wk, uploads = out[3 * i : 3 * i + 3]
                new = self._ukey(uid)
                if fields:
                    pipe.hset(new, mapping=fields)
                if wk is not None:
                    pipe.set(new + ":k", wk)
                if uploads:
                    pipe.sadd(new + ":c", *uploads)
            pipe.execute()
            pipe = self._r.pipeline(transaction=False)
            for old in olds:
                for key in (old, old + ":k", old + ":c"):
                    pipe.delete(key)
            pipe.execute()
            after = "(" + uids[-1]
        per_group: dict[int, list[tuple[str, bytes]]] = {}
        for uid, kid, wk in self._all_keys():
            per_group.setdefault(self._group(uid), []).append((kid, wk))
        for grp, pairs in per_group.items():
            census = self._gtag(grp) + ":census"
            counts = census_deltas(pairs)
            self._r.delete(census)
            if counts:
                self._r.hset(census, mapping={f"{k}:{i}": n for (k, i), n in counts.items()})

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
        self._sha = {
            src: self._r.script_load(src) for src in (*lua.CLUSTER_STEPS, *lua.SINGLE_SLOT)
        }

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
            self._eval(lua.C_IDS, [self._g + ":ids"], args)

    def _settle(self, uids: list[str], released: list[tuple[str, str]]) -> None:
        """Release old (uid, hex) index entries, then re-assert each user's current entry.

        Writers of the same user race: one may release a token's entry just after another
        claimed it to move the user back to that token. Every writer therefore re-reads the
        hash after its own hash and release steps and re-claims (``SET NX``) the entry of
        whatever token the hash now holds; the last writer to touch a token thus always
        leaves its entry in place.
        """
        self._eval_many([(lua.C_RELEASE, [self._tkey(h)], [uid]) for uid, h in released])
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
        """Claim, list, compare-and-set, release, pump, stage by stage; how many applied.

        Each stage is one pipeline over the batch, so every user still sees the steps in the
        documented order. A user whose hash changed between the read and the compare-and-set
        is re-read and goes through the id and hash steps again (both idempotent).
        """
        at = self._feed_time()
        touched: set[int] = set()

        def eligible(c: _Change, old: Sequence[Any]) -> bool:
            if c.expect is not None:
                return old[0] is not None and hmac.compare_digest(old[0], c.expect)
            return old[0] is not None or not c.need_user

        pending = [(c, o) for c, o in zip(changes, olds, strict=True) if eligible(c, o)]
        self._eval_many(
            [
                (lua.C_CLAIM, [self._tkey(c.tok.hex())], [c.uid, stale.get(c.tok.hex(), "")])
                for c, _ in pending
                if c.tok is not None
            ]
        )
        done = 0
        for _ in range(_RETRIES):
            if not pending:
                break
            self._ids([(c.op, c.uid) for c, _ in pending])
            res = self._eval_many(
                [
                    (
                        lua.C_USER_SET,
                        [self._ukey(c.uid), self._ukey(c.uid) + ":k", *self._gkeys(c.uid)],
                        [c.uid, at, o[0] or b"", o[1] or b"", *c.fields],
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
            touched.update(self._group(c.uid) for c, _ in ok)
            again = [c for (c, _), r in zip(pending, res, strict=True) if not r]
            reread = self._read([c.uid for c in again])
            pending = [(c, o) for c, o in zip(again, reread, strict=True) if eligible(c, o)]
        self._pump(touched)
        if pending:
            raise Conflict("redis: users kept changing during the write; retry")
        return done

    # users --------------------------------------------------------------------------------

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
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
        if mark is not None:  # after the writes: a crash in between re-runs an upsert
            self._set_checkpoint(mark, "done")

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
        # Unfindable by token first; the hash goes last (with the census and the outbox
        # entry), so that a retry after a crash still finds the user and finishes the erasure.
        self._eval_many([(lua.C_RELEASE, [self._tkey(old[2].decode())], [user_id])])
        self._drop_owner(user_id, list(self._r.smembers(uk + ":c")))
        self._ids([("del", user_id)])
        self._eval_many(
            [
                (
                    lua.C_USER_DEL,
                    [uk, uk + ":k", uk + ":c", *self._gkeys(user_id)],
                    [user_id, self._feed_time()],
                )
            ]
        )
        self._pump([self._group(user_id)])
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
        olds = self._eval_many([(lua.C_CONTACTS_SWAP, [uk, uk + ":c"], [key_id, *new])])[0]
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
                olds = self._eval(lua.C_PURGE, [uk, uk + ":c"], [keep_key_id])
                self._drop_owner(uid, list(olds))
                dropped += len(olds)
            after = "(" + ids[-1].decode()

    # change feed --------------------------------------------------------------------------

    def _pump(self, groups: Iterable[int]) -> None:
        """Number the outbox entries of ``groups`` into the global feed, then trim them.

        Idempotent and safe to run concurrently: the pump script skips entries at or below
        each group's mark, and a trim never goes above the mark.
        """
        todo = sorted(set(groups))
        if not todo:
            return
        pipe = self._r.pipeline(transaction=False)
        for grp in todo:
            pipe.zrange(self._gtag(grp) + ":ob", 0, -1)
        waiting = [(g, m) for g, m in zip(todo, pipe.execute(), strict=True) if m]
        if not waiting:
            return
        args: list[Any] = [len(waiting)]
        for grp, members in waiting:
            args += [grp, len(members), *members]
        g = self._g
        marks = self._eval(lua.C_PUMP, [g + ":pumped", g + ":seq", g + ":feed"], args)
        self._eval_many(
            [
                (lua.C_TRIM_OUTBOX, [self._gtag(grp) + ":ob"], [mark])
                for (grp, _), mark in zip(waiting, marks, strict=True)
            ]
        )

    def _feed_head(self) -> int:
        self._pump(range(self._groups))
        return super()._feed_head()

    def _changes(self, after: int, limit: int) -> FeedPage:
        # Every change whose user step finished before this call is numbered before we read.
        self._pump(range(self._groups))
        return super()._changes(after, limit)

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        self._pump(range(self._groups))
        return super()._compact_feed(before_seq, older_than)

    def _key_census(self) -> KeyCensus:
        pipe = self._r.pipeline(transaction=False)
        for grp in range(self._groups):
            pipe.hgetall(self._gtag(grp) + ":census")
        total: dict[tuple[int, str], int] = {}
        for raw in pipe.execute():
            for kind, kid, n in _census_rows(raw):
                total[(kind, kid)] = total.get((kind, kid), 0) + n
        return census_from((k, i, n) for (k, i), n in total.items())
