"""PostgreSQL adapter (``postgresql://...``) on psycopg 3 and psycopg-pool.

A connection pool shared by threads; every multi-row change in one transaction; bulk loads by
binary ``COPY``; forward-only migrations recorded in ``cm_meta``. ``?schema=name`` in the URL (or
``schema=``) puts every table in that schema (``search_path``), which is how tests isolate.

A ``DELETE`` leaves dead tuples (and index entries) in their pages until ``VACUUM FULL``
rewrites the table; a plain ``VACUUM`` frees them for reuse without overwriting them. Wrapped
per-user keys therefore live in the narrow ``user_keys`` table, which :meth:`PostgresStore.vacuum`
can rewrite often and cheaply (``keys_only``): once a deleted user's wrapped key has left it,
whatever residue of their number is left elsewhere cannot be decrypted.

Change feed. A ``bigserial`` is not commit-ordered: two transactions may draw 7 and 8 and
commit 8 first, and a follower that read 8 would never see 7. So every write transaction
numbers its feed entries last, by advancing the ``head`` row of ``feed_state`` (``UPDATE ...
RETURNING``): the row lock it takes is held until commit, so the next writer draws its numbers
only after this one committed (PostgreSQL releases locks after the commit is visible), and the
head a reader sees always covers exactly the entries it sees. Everything before that point (the
``COPY``, the upsert) still runs concurrently; only the numbering, the feed insert and the
commit are serialised. The key census (users per key id) is moved in the same serialised
step, from the rows the transaction inserted, and the old values of the rows it replaced or
deleted, read under row locks (``FOR UPDATE``, ``DELETE ... RETURNING``): exact, and its rows
are only ever written by the writer holding the head lock, so they add no contention.

The schema, its migrations and the statements shared by several methods are in
:mod:`~contactmatch.stores.postgres_schema`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import sql

from contactmatch.errors import Conflict, InvalidInput, StoreError, StoreUnavailable, UnknownUser
from contactmatch.stores.base import BaseStore
from contactmatch.stores.census import census_deltas, census_from
from contactmatch.stores.leaky import drain_time, leak, take_decision
from contactmatch.stores.postgres_schema import (
    ADVANCE_HEAD,
    COPY_KEYS,
    COPY_USERS,
    INSERT_FEED,
    KEY_TYPES,
    LOCK_OLD,
    MOVE_CENSUS,
    PERSONAL_TABLES,
    SCHEMA_VERSION,
    USER_TYPES,
    migrate,
)
from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    Holder,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
)
from contactmatch.stores.sqlrows import (
    DISC_CODES,
    DISC_NAMES,
    SELECT_USERS,
    USER_COLS,
    record_from_row,
    user_row,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

_UPSERT_ROUNDS = 4  # update-or-insert rounds against concurrent registrations of one user

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def split_url(url: str, schema: str | None) -> tuple[str, str]:
    """Remove our own ``schema`` query option (libpq would reject it); return (conninfo, schema)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    chosen = schema if schema is not None else (ours[-1] if ours else "public")
    if not _SCHEMA.fullmatch(chosen):
        raise InvalidInput("schema must match [a-z_][a-z0-9_]{0,62}")
    scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), "")), chosen


class PostgresStore(BaseStore):
    """PostgreSQL :class:`~contactmatch.stores.base.RegistryStore` with a connection pool."""

    name = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
    ) -> None:
        """Connect, create the schema if needed and apply pending migrations.

        Args:
            url: a libpq URL, optionally with ``?schema=name``.
            schema: overrides the URL's schema (default ``public``).
            min_size: connections kept open.
            max_size: most connections the pool opens.
            timeout: seconds to wait for a connection before StoreUnavailable.

        Raises:
            StoreUnavailable: the server cannot be reached.
            SchemaVersionError: the schema was written by a newer contactmatch.
        """
        conninfo, self.schema = split_url(url, schema)
        self._codes: dict[str, int] = {}  # key id -> code; codes never change once written
        self._id: str | None = None
        with self._mapped("open"):
            self._pool = psycopg_pool.ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                kwargs={"options": f"-c search_path={self.schema}"},
                open=False,
            )
            try:
                self._pool.open(wait=True, timeout=timeout)
                self._migrate()
            except BaseException:
                self._pool.close()
                raise

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            migrate(conn, self.schema)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _translate(self, exc: Exception, op: str) -> StoreError:
        if isinstance(exc, psycopg.errors.IntegrityError):
            return Conflict(f"postgresql: {op}: constraint violated ({exc.diag.constraint_name})")
        if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
            return StoreUnavailable(f"postgresql: {op}: server unavailable ({type(exc).__name__})")
        return super()._translate(exc, op)

    def _may_chain(self, exc: Exception) -> bool:
        # An integrity error's DETAIL quotes the conflicting key, i.e. a token.
        return not isinstance(exc, psycopg.errors.IntegrityError)

    # users --------------------------------------------------------------------------------

    def _codes_for(self, key_ids: set[str]) -> dict[str, int]:
        """Codes of ``key_ids``, creating missing ones in a transaction of their own.

        Committed before the change that uses them (so no writer holds a new key id's unique
        entry across a long transaction, and no rolled-back code is cached); codes are never
        changed or reused.
        """
        missing = key_ids - self._codes.keys()
        if missing:
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO key_ids (key_id) SELECT unnest(%s::text[]) ORDER BY 1 "
                    "ON CONFLICT (key_id) DO NOTHING",
                    (sorted(missing),),
                )
            with self._tx() as cur:
                cur.execute("SELECT key_id, code FROM key_ids")
                self._codes.update((str(k), int(c)) for k, c in cur.fetchall())
        return self._codes

    def _log(
        self,
        cur: psycopg.Cursor[Any],
        user_ids: list[str],
        census: dict[tuple[int, str], int] | None = None,
    ) -> None:
        """Number and append feed entries and move the census, last thing before commit.

        The head row's lock, taken here and held to commit, makes the numbering commit-ordered
        (see the module docstring); taking it last keeps the serialised part short. The census
        rows are written only under that lock, so they never make writers wait on each other.
        """
        if not user_ids:
            return
        cur.execute(ADVANCE_HEAD, (len(user_ids),))
        row = cur.fetchone()
        assert row is not None
        cur.execute(INSERT_FEED, (int(row[0]) - len(user_ids), self._feed_time(), user_ids))
        if census:
            keys = sorted(census)
            cur.execute(
                MOVE_CENSUS,
                ([k for k, _ in keys], [i for _, i in keys], [census[k] for k in keys]),
            )

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        codes = self._codes_for({u.key_id for u in users})
        ids = [u.user_id for u in users]
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            try:
                # Fast path for new registrations: straight COPY; a savepoint lets us fall
                # back to the upsert if any user (or token) already exists.
                with conn.transaction():
                    with cur.copy(COPY_USERS) as cp:
                        cp.set_types(USER_TYPES)
                        for u in users:
                            cp.write_row(user_row(u, codes[u.key_id]))
                    with cur.copy(COPY_KEYS) as cp:
                        cp.set_types(KEY_TYPES)
                        for u in users:
                            cp.write_row((u.user_id, u.wrapped_key))
            except psycopg.errors.UniqueViolation:
                pass
            else:
                self._log(cur, ids, census_deltas((u.key_id, u.wrapped_key) for u in users))
                self._mark(cur, mark)
                return
            self._log(cur, ids, self._upsert(cur, users, codes))
            self._mark(cur, mark)

    @staticmethod
    def _mark(cur: psycopg.Cursor[Any], mark: str | None) -> None:
        if mark is not None:
            cur.execute(
                "INSERT INTO checkpoints VALUES (%s, 'done') "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (mark,),
            )

    @staticmethod
    def _upsert(
        cur: psycopg.Cursor[Any], users: list[UserRecord], codes: dict[str, int]
    ) -> dict[tuple[int, str], int]:
        """Update the users that exist (locked first), insert the others; the census change.

        Not ``INSERT ... ON CONFLICT DO UPDATE``: the census needs the values each row
        replaces, so existing rows are locked and read, then updated; new ones inserted with
        ``DO NOTHING``, and a user another transaction inserted meanwhile is retried as an
        update (a few rounds, then ``Conflict``).
        """
        cur.execute(
            'CREATE TEMP TABLE users_in (user_id text COLLATE "C", token bytea, '
            "kid int2, number_ct bytea, disc int2, created_at float8, updated_at float8, "
            "wrapped bytea) ON COMMIT DROP"
        )
        copy_in = f"COPY users_in ({USER_COLS}, wrapped) FROM STDIN (FORMAT BINARY)"
        with cur.copy(copy_in) as cp:
            cp.set_types([*USER_TYPES, "bytea"])
            for u in users:
                cp.write_row((*user_row(u, codes[u.key_id]), u.wrapped_key))
        # Checked first so a token conflict never reaches the server log with its DETAIL.
        cur.execute(
            "SELECT 1 FROM users_in i JOIN users u ON u.token = i.token "
            "AND u.user_id <> i.user_id LIMIT 1"
        )
        if cur.fetchone() is not None:
            raise Conflict("a token in the batch belongs to another user")
        by_id = {u.user_id: u for u in users}
        added: list[tuple[str, bytes]] = []
        removed: list[tuple[str, bytes]] = []
        pending = list(by_id)
        for _ in range(_UPSERT_ROUNDS):
            cur.execute(LOCK_OLD, (pending,))
            old = {str(r[0]): (str(r[2]), bytes(r[3])) for r in cur.fetchall()}
            if old:
                # The upsert keeps created_at, so updated_at is NULL only if it equals it.
                cur.execute(
                    "UPDATE users u SET token = i.token, kid = i.kid, number_ct = i.number_ct, "
                    "disc = i.disc, updated_at = nullif(coalesce(i.updated_at, i.created_at), "
                    "u.created_at) FROM users_in i "
                    "WHERE u.user_id = i.user_id AND u.user_id = ANY(%s)",
                    (list(old),),
                )
                cur.execute(
                    "UPDATE user_keys k SET wrapped = i.wrapped FROM users_in i "
                    "WHERE k.user_id = i.user_id AND k.user_id = ANY(%s)",
                    (list(old),),
                )
                removed += old.values()
                added += [(by_id[u].key_id, by_id[u].wrapped_key) for u in old]
            new = [u for u in pending if u not in old]
            if not new:
                break
            cur.execute(
                f"INSERT INTO users ({USER_COLS}) SELECT {USER_COLS} FROM users_in "  # noqa: S608
                "WHERE user_id = ANY(%s) ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
                (new,),
            )
            inserted = [str(r[0]) for r in cur.fetchall()]
            cur.execute(
                "INSERT INTO user_keys (user_id, wrapped) SELECT user_id, wrapped "
                "FROM users_in WHERE user_id = ANY(%s)",
                (inserted,),
            )
            added += [(by_id[u].key_id, by_id[u].wrapped_key) for u in inserted]
            # Registered by another transaction since we looked: update them next round.
            pending = [u for u in new if u not in set(inserted)]
            if not pending:
                break
        else:
            raise Conflict("postgresql: users kept being registered concurrently; retry")
        return census_deltas(added, removed)

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        with self._tx() as cur:
            cur.execute(f"{SELECT_USERS} WHERE u.user_id = ANY(%s)", (user_ids,))
            found = {r[0]: record_from_row(r) for r in cur.fetchall()}
        return [found.get(u) for u in user_ids]

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        with self._tx() as cur:
            cur.execute(f"{SELECT_USERS} WHERE u.token = ANY(%s::bytea[])", (tokens,))
            found = {bytes(r[1]): record_from_row(r) for r in cur.fetchall()}
        return [found.get(t) for t in tokens]

    def _confirm_tokens(self, tokens: list[bytes]) -> list[Holder | None]:
        with self._tx() as cur:
            cur.execute(
                "SELECT u.user_id, u.token, i.key_id, u.disc FROM users u "
                "JOIN key_ids i ON i.code = u.kid WHERE u.token = ANY(%s::bytea[])",
                (tokens,),
            )
            found = {
                bytes(tok): Holder(str(uid), bytes(tok), str(kid), DISC_NAMES[int(disc)])
                for uid, tok, kid, disc in cur.fetchall()
            }
        return [found.get(t) for t in tokens]

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        ids = list(changes)
        with self._tx() as cur:
            cur.execute(
                "UPDATE users u SET disc = c.disc, updated_at = nullif(%s, u.created_at) "
                "FROM unnest(%s::text[], %s::int2[]) AS c(uid, disc) WHERE u.user_id = c.uid",
                (now, ids, [DISC_CODES[d] for d in changes.values()]),
            )
            if cur.rowcount != len(ids):
                cur.execute(
                    "SELECT x FROM unnest(%s::text[]) x "
                    "WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = x) LIMIT 1",
                    (ids,),
                )
                row = cur.fetchone()
                raise UnknownUser(f"no registered user {row[0] if row else '?'!r}")
            self._log(cur, ids)

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        codes = self._codes_for({u.key_id for u in updates})
        with self._tx() as cur:
            # Lock the users and read what they hold: only those still on old_token change,
            # and the census moves from exactly those values.
            cur.execute(LOCK_OLD, ([u.user_id for u in updates],))
            held = {str(r[0]): (bytes(r[1]), str(r[2]), bytes(r[3])) for r in cur.fetchall()}
            todo = [
                u
                for u in updates
                if u.user_id in held and hmac.compare_digest(held[u.user_id][0], u.old_token)
            ]
            if not todo:
                return 0
            cur.execute(
                "WITH r AS (SELECT * FROM unnest(%s::text[], %s::bytea[], %s::int2[], "
                "%s::bytea[], %s::bytea[]) AS r(uid, new, kid, ct, wk)), "
                "done AS (UPDATE users u SET token = r.new, kid = r.kid, "
                "number_ct = coalesce(r.ct, u.number_ct), "
                "updated_at = nullif(%s, u.created_at) FROM r WHERE u.user_id = r.uid "
                "RETURNING u.user_id) "
                "UPDATE user_keys k SET wrapped = r.wk FROM r "
                "WHERE k.user_id = r.uid AND r.wk IS NOT NULL",
                (
                    [u.user_id for u in todo],
                    [u.new_token for u in todo],
                    [codes[u.key_id] for u in todo],
                    [u.number_ct for u in todo],
                    [u.wrapped_key for u in todo],
                    now,
                ),
            )
            old = [held[u.user_id][1:] for u in todo]
            new = [
                (u.key_id, held[u.user_id][2] if u.wrapped_key is None else u.wrapped_key)
                for u in todo
            ]
            self._log(cur, [u.user_id for u in todo], census_deltas(new, old))
        return len(todo)

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        with self._tx() as cur:
            cur.execute(
                f"{SELECT_USERS} WHERE u.user_id > %s ORDER BY u.user_id LIMIT %s",
                (after or "", limit),
            )
            return [record_from_row(r) for r in cur.fetchall()]

    def _count_users(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT count(*) FROM users")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _delete_account(self, user_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM users u USING key_ids i WHERE u.user_id = %s AND i.code = u.kid "
                "RETURNING i.key_id",
                (user_id,),
            )
            row = cur.fetchone()
            if row is None:
                return False
            cur.execute("DELETE FROM user_keys WHERE user_id = %s RETURNING wrapped", (user_id,))
            wk = cur.fetchone()
            cur.execute("DELETE FROM contacts WHERE owner = %s", (user_id,))
            gone = [(str(row[0]), b"" if wk is None else bytes(wk[0]))]
            self._log(cur, [user_id], census_deltas([], gone))
            return True

    # contacts -----------------------------------------------------------------------------

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        with self._tx() as cur:
            # FOR SHARE: a concurrent delete_account must not slip in between check and insert.
            cur.execute("SELECT 1 FROM users WHERE user_id = %s FOR SHARE", (owner_id,))
            if cur.fetchone() is None:
                return False
            cur.execute("DELETE FROM contacts WHERE owner = %s", (owner_id,))
            if tokens:
                cur.execute(
                    "INSERT INTO contacts (owner, token, key_id) "
                    "SELECT %s, t, %s FROM unnest(%s::bytea[]) t",
                    (owner_id, key_id, tokens),
                )
            return True

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        with self._tx() as cur:
            cur.execute(
                "SELECT token, owner FROM contacts WHERE token = ANY(%s::bytea[])", (tokens,)
            )
            owners: dict[bytes, list[str]] = {}
            for tok, owner in cur.fetchall():
                owners.setdefault(bytes(tok), []).append(owner)
        return [owners.get(t, []) for t in tokens]

    def _purge_contacts(self, keep_key_id: str) -> int:
        with self._tx() as cur:
            cur.execute("DELETE FROM contacts WHERE key_id <> %s", (keep_key_id,))
            return max(cur.rowcount, 0)

    # rate limits --------------------------------------------------------------------------

    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        with self._tx() as cur:
            # Make sure the row exists, then lock it: the decision and the write are atomic
            # with respect to every other process taking from the same bucket.
            cur.execute(
                "INSERT INTO buckets VALUES (%s, %s, 0, %s, %s) ON CONFLICT DO NOTHING",
                (subject, quota, now, now),
            )
            cur.execute(
                "SELECT level, updated FROM buckets WHERE subject = %s AND quota = %s FOR UPDATE",
                (subject, quota),
            )
            row = cur.fetchone()
            assert row is not None
            level, updated = float(row[0]), float(row[1])
            allowed, retry, level = take_decision(
                leak(level, updated, now, refill), cost, capacity, refill
            )
            updated = max(now, updated)
            cur.execute(
                "UPDATE buckets SET level = %s, updated = %s, drain = %s "
                "WHERE subject = %s AND quota = %s",
                (level, updated, drain_time(level, updated, refill), subject, quota),
            )
            return TakeResult(allowed, retry)

    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        with self._tx() as cur:
            cur.execute(
                "SELECT count(*) FROM seen WHERE subject = %s AND added > %s "
                "AND fp = ANY(%s::bytea[])",
                (subject, cutoff, fingerprints),
            )
            row = cur.fetchone()
        return len(fingerprints) - (int(row[0]) if row else 0)

    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        with self._tx() as cur:
            # Sorted, so two concurrent calls lock the same rows in the same order.
            cur.execute(
                "INSERT INTO seen (subject, fp, added) "
                "SELECT %s, f, %s FROM unnest(%s::bytea[]) f ORDER BY f ON CONFLICT DO NOTHING",
                (subject, now, fingerprints),
            )
            new = max(cur.rowcount, 0)
            cur.execute(
                "UPDATE seen s SET added = %s FROM (SELECT fp FROM seen WHERE subject = %s "
                "AND added < %s AND fp = ANY(%s::bytea[]) ORDER BY fp FOR UPDATE) o "
                "WHERE s.subject = %s AND s.fp = o.fp",
                (now, subject, now, fingerprints, subject),
            )
            return new

    def _reset_seen(self, subject: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM seen WHERE subject = %s", (subject,))

    def _expire_rate_state(self, now: float, cutoff: float) -> int:
        with self._tx() as cur:
            cur.execute("DELETE FROM buckets WHERE drain <= %s", (now,))
            removed = max(cur.rowcount, 0)
            cur.execute("DELETE FROM seen WHERE added <= %s", (cutoff,))
            return removed + max(cur.rowcount, 0)

    # maintenance --------------------------------------------------------------------------

    def _vacuum(self, *, keys_only: bool = False) -> dict[str, int]:
        """``VACUUM FULL`` of the tables that can hold personal data (or only ``user_keys``).

        A full vacuum writes a new copy of each table and its indexes (TOAST included) and
        drops the old files, so no dead tuple survives in any page; it holds an ``ACCESS
        EXCLUSIVE`` lock on each table while it runs. It cannot run in a transaction, hence
        autocommit on a pooled connection, restored before the connection goes back.
        """
        tables = ("user_keys",) if keys_only else PERSONAL_TABLES
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                names = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
                conn.execute(sql.SQL("VACUUM FULL {}").format(names))
            finally:
                conn.autocommit = False
        return {"tables_rewritten": len(tables)}

    # change feed and identity -----------------------------------------------------------

    def _feed_head(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT value FROM feed_state WHERE name = 'head'")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _changes(self, after: int, limit: int) -> FeedPage:
        with self._tx() as cur:
            # One statement, one snapshot: the head covers exactly the entries it returns.
            cur.execute(
                "SELECT h.value, f.value, e.seq, e.user_id FROM feed_state h "
                "JOIN feed_state f ON f.name = 'floor' LEFT JOIN LATERAL "
                "(SELECT seq, user_id FROM feed WHERE seq > %s ORDER BY seq LIMIT %s) e ON true "
                "WHERE h.name = 'head' ORDER BY e.seq",
                (after, limit),
            )
            rows = cur.fetchall()
        head, floor = int(rows[0][0]), int(rows[0][1])
        entries = [(int(r[2]), str(r[3])) for r in rows if r[2] is not None]
        return FeedPage(entries=entries, head=head, complete=floor <= after <= head)

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        with self._tx() as cur:
            cut = before_seq
            if older_than is not None:
                # Stop at the first entry stamped at or after the limit: a prefix, no hole.
                cur.execute("SELECT min(seq) FROM feed WHERE at >= %s", (older_than,))
                row = cur.fetchone()
                young = None if row is None or row[0] is None else int(row[0])
                if young is not None:
                    cut = young if cut is None else min(cut, young)
            cur.execute(
                "WITH d AS (DELETE FROM feed WHERE %s::bigint IS NULL OR seq < %s "
                "RETURNING seq) SELECT count(*), max(seq) FROM d",
                (cut, cut),
            )
            row = cur.fetchone()
            removed, top = (0, None) if row is None else (int(row[0]), row[1])
            if top is not None:
                cur.execute(
                    "UPDATE feed_state SET value = greatest(value, %s) WHERE name = 'floor'",
                    (int(top),),
                )
        return removed

    def _store_id(self) -> str:
        if self._id is None:
            with self._tx() as cur:
                cur.execute("SELECT value FROM cm_meta WHERE key = 'store_id'")
                row = cur.fetchone()
            assert row is not None
            self._id = str(row[0])
        return self._id

    def _key_census(self) -> KeyCensus:
        with self._tx() as cur:
            cur.execute("SELECT kind, key_id, n FROM key_census")
            return census_from((int(k), str(i), int(n)) for k, i, n in cur.fetchall())

    # stats and checkpoints ----------------------------------------------------------------

    def _incr_stats(self, deltas: dict[str, int]) -> None:
        with self._tx() as cur:
            # Sorted names: two concurrent increments lock rows in the same order (no deadlock).
            names = sorted(deltas)
            cur.execute(
                "INSERT INTO stats (name, value) SELECT * FROM unnest(%s::text[], %s::int8[]) "
                "ON CONFLICT (name) DO UPDATE SET value = stats.value + excluded.value",
                (names, [deltas[n] for n in names]),
            )

    def _get_stats(self) -> dict[str, int]:
        with self._tx() as cur:
            cur.execute("SELECT name, value FROM stats")
            return {n: int(v) for n, v in cur.fetchall()}

    def _get_checkpoint(self, name: str) -> str | None:
        with self._tx() as cur:
            cur.execute("SELECT value FROM checkpoints WHERE name = %s", (name,))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def _set_checkpoint(self, name: str, value: str | None) -> None:
        with self._tx() as cur:
            if value is None:
                cur.execute("DELETE FROM checkpoints WHERE name = %s", (name,))
            else:
                cur.execute(
                    "INSERT INTO checkpoints VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )

    def _close(self) -> None:
        self._pool.close()
