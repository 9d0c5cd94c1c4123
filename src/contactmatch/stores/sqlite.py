"""SQLite adapter (``sqlite:///path.db``): the default, for the demo and embedded servers.

WAL mode so readers never block the writer; ``secure_delete`` so erased rows are overwritten
with zeros rather than left in free pages; every write in one ``BEGIN IMMEDIATE`` transaction
(taking the write lock up front avoids the deadlock of two readers upgrading at once). One
connection guarded by a lock serves all threads; other processes wait on ``busy_timeout``.

After an erasure the old page images still sit in the WAL (and the pre-erasure page in the
database file) until a checkpoint copies the zeroed pages back and the WAL is truncated. A
truncating checkpoint waits for every reader of an older snapshot, so it never runs under the
store's lock: a deletion runs a non-blocking ``PASSIVE`` checkpoint, and a background thread
with a connection of its own retries ``TRUNCATE`` (never waiting on a lock, backing off up to
``SCRUB_MAX_INTERVAL``) until it succeeds. The user's bytes thus leave both files at most
``SCRUB_MAX_INTERVAL`` seconds (plus the checkpoint's own time) after the last reader holding
a snapshot from before the deletion has finished.

The change feed is the ``feed`` table (``seq`` is its rowid: no secondary index), numbered from
a counter in ``meta`` that each write transaction reads and advances: SQLite has one writer at a
time, so numbering order is commit order. The key census is ``key_census``, moved by every
write in the same transaction.

The schema, its migrations and the statements shared by several methods are in
:mod:`~contactmatch.stores.sqlite_schema`; the background checkpoint thread is
:mod:`~contactmatch.stores.sqlite_scrub`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from contactmatch.errors import (
    Conflict,
    InvalidInput,
    StoreError,
    StoreUnavailable,
    UnknownUser,
)
from contactmatch.stores.base import BaseStore
from contactmatch.stores.census import census_deltas, census_from
from contactmatch.stores.leaky import drain_time, leak, take_decision
from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    Holder,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
)
from contactmatch.stores.sqlite_schema import (
    INSERT_FEED,
    INSERT_KEY,
    INSERT_USER,
    SCHEMA_VERSION,
    SELECT_KEYS,
    UPSERT_CENSUS,
    UPSERT_KEY,
    UPSERT_USER,
    migrate,
)
from contactmatch.stores.sqlite_scrub import SCRUB_MAX_INTERVAL, Scrubber
from contactmatch.stores.sqlrows import (
    DISC_CODES,
    DISC_NAMES,
    SELECT_USERS,
    record_from_row,
    user_row,
)

__all__ = ["SCHEMA_VERSION", "SCRUB_MAX_INTERVAL", "SQLiteStore"]

_CHUNK = 500  # well under SQLite's bound-parameter limit
_MMAP_BYTES = 1 << 40  # map the whole file, whatever its size (address space, not memory)


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``, ``sqlite:////abs.db`` -> ``/abs.db``, else memory."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise InvalidInput("not a sqlite:// URL")
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput("sqlite URLs have no host: use sqlite:///relative or sqlite:////abs")
    path = path[1:] if path.startswith("/") else path
    return path or ":memory:"


class SQLiteStore(BaseStore):
    """SQLite :class:`~contactmatch.stores.base.RegistryStore`; thread-safe, multi-process."""

    name = "sqlite"

    def __init__(
        self, url: str = "sqlite:///contactmatch.db", *, timeout: float = 30.0, cache_mb: int = 8
    ) -> None:
        """Open (creating and migrating if needed) the database named by ``url``.

        Args:
            url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://``.
            timeout: seconds to wait for another process's write lock.
            cache_mb: page cache size for this connection.

        Raises:
            StoreUnavailable: the file cannot be opened.
            SchemaVersionError: the file was written by a newer contactmatch.
        """
        self.path = path_from_url(url)
        self._lock = threading.RLock()
        self._codes: dict[str, int] = {}  # key id -> code; codes never change once written
        self._id: str | None = None
        self._scrubber = None if self.path == ":memory:" else Scrubber(self.path)
        with self._mapped("open"):
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._setup(timeout, cache_mb)
            except BaseException:
                self._conn.close()
                raise

    def _setup(self, timeout: float, cache_mb: int) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA secure_delete = ON")
        c.execute("PRAGMA synchronous = NORMAL")
        # Reads go through a memory map of the file: its pages are the kernel's page cache,
        # shared with every process on the machine, instead of a private per-connection
        # cache (64 MiB of anonymous memory per server process in 0.1). The private cache
        # then only needs to hold what the map does not: pages being written.
        c.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        c.execute(f"PRAGMA cache_size = -{int(cache_mb) * 1024}")
        with self._tx() as cur:
            migrate(cur)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction under the process-wide lock; rolled back on any error."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._conn.cursor()

    def _translate(self, exc: Exception, op: str) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return Conflict(f"sqlite: {op}: constraint violated")
        if isinstance(exc, sqlite3.OperationalError) and any(
            s in str(exc) for s in ("locked", "unable to open", "disk I/O", "busy")
        ):
            return StoreUnavailable(f"sqlite: {op}: database unavailable ({type(exc).__name__})")
        return super()._translate(exc, op)

    # users --------------------------------------------------------------------------------

    def _codes_for(self, key_ids: set[str]) -> dict[str, int]:
        """Codes of ``key_ids``, creating missing ones in a transaction of their own.

        Committed before the change that uses them, so a rolled-back change never leaves this
        process caching a code the file does not hold; codes are never changed or reused.
        """
        missing = key_ids - self._codes.keys()
        if missing:
            with self._tx() as cur:
                cur.executemany(
                    "INSERT OR IGNORE INTO key_ids (key_id) VALUES (?)", [(k,) for k in missing]
                )
            with self._read() as cur:
                self._codes.update(cur.execute("SELECT key_id, code FROM key_ids").fetchall())
        return self._codes

    def _log(self, cur: sqlite3.Cursor, user_ids: Sequence[str]) -> None:
        """Append one feed entry per user, numbered after the head, in the caller's transaction.

        The caller holds the write lock (``BEGIN IMMEDIATE``), so no other writer can number
        entries between the read of the head and the commit: numbers follow commit order.
        """
        if not user_ids:
            return
        n = len(user_ids)
        head = cur.execute(
            "UPDATE meta SET value = value + ? WHERE name = 'feed_head' RETURNING value", (n,)
        ).fetchone()[0]
        first, at = int(head) - n, self._feed_time()
        cur.executemany(INSERT_FEED, [(first + i, u, at) for i, u in enumerate(user_ids, 1)])

    @staticmethod
    def _count(
        cur: sqlite3.Cursor,
        added: Sequence[tuple[str, bytes]],
        removed: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        deltas = census_deltas(added, removed)
        cur.executemany(UPSERT_CENSUS, [(kind, kid, n) for (kind, kid), n in deltas.items()])

    @staticmethod
    def _old_keys(cur: sqlite3.Cursor, user_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """(key id, wrapped key) of those of ``user_ids`` that exist, for the census."""
        out: list[tuple[str, bytes]] = []
        for chunk in _chunks(user_ids):
            q = f"{SELECT_KEYS} WHERE u.user_id IN ({_marks(len(chunk))})"
            out += [(kid, bytes(wk)) for kid, wk in cur.execute(q, chunk)]
        return out

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        # Plain INSERT for the bulk-load case. If any user already exists (or a token clashes,
        # which the upsert then reports) the whole transaction is rolled back and the batch
        # redone as an upsert. Not a savepoint: SQLite copies every page a savepoint touches
        # into a sub-journal, which costs a bulk load a third of its speed.
        codes = self._codes_for({u.key_id for u in users})
        rows = [user_row(u, codes[u.key_id]) for u in users]
        keys = [(u.user_id, u.wrapped_key) for u in users]
        ids = [u.user_id for u in users]
        census = [(u.key_id, u.wrapped_key) for u in users]
        try:
            with self._tx() as cur:
                cur.executemany(INSERT_USER, rows)
                cur.executemany(INSERT_KEY, keys)
                self._count(cur, census)
                self._log(cur, ids)
                self._mark(cur, mark)
        except sqlite3.IntegrityError:
            pass
        else:
            return
        with self._tx() as cur:
            old = self._old_keys(cur, ids)
            cur.executemany(UPSERT_USER, rows)
            cur.executemany(UPSERT_KEY, keys)
            self._count(cur, census, old)
            self._log(cur, ids)
            self._mark(cur, mark)

    @staticmethod
    def _mark(cur: sqlite3.Cursor, mark: str | None) -> None:
        if mark is not None:
            cur.execute(
                "INSERT INTO checkpoints (name, value) VALUES (?, 'done') "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (mark,),
            )

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        found: dict[str, UserRecord] = {}
        with self._read() as cur:
            for chunk in _chunks(user_ids):
                q = f"{SELECT_USERS} WHERE u.user_id IN ({_marks(len(chunk))})"
                for row in cur.execute(q, chunk):
                    found[row[0]] = record_from_row(row)
        return [found.get(u) for u in user_ids]

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        found: dict[bytes, UserRecord] = {}
        with self._read() as cur:
            for chunk in _chunks(tokens):
                q = f"{SELECT_USERS} WHERE u.token IN ({_marks(len(chunk))})"
                for row in cur.execute(q, chunk):
                    rec = record_from_row(row)
                    found[rec.token] = rec
        return [found.get(t) for t in tokens]

    def _confirm_tokens(self, tokens: list[bytes]) -> list[Holder | None]:
        found: dict[bytes, Holder] = {}
        with self._read() as cur:
            for chunk in _chunks(tokens):
                q = (
                    "SELECT u.user_id, u.token, i.key_id, u.disc FROM users u "  # noqa: S608
                    f"JOIN key_ids i ON i.code = u.kid WHERE u.token IN ({_marks(len(chunk))})"
                )
                for uid, tok, kid, disc in cur.execute(q, chunk):
                    found[tok] = Holder(uid, tok, kid, DISC_NAMES[disc])
        return [found.get(t) for t in tokens]

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        with self._tx() as cur:
            for uid, d in changes.items():
                cur.execute(
                    "UPDATE users SET disc = ?, updated_at = nullif(?, created_at) "
                    "WHERE user_id = ?",
                    (DISC_CODES[d], now, uid),
                )
                if cur.rowcount == 0:
                    raise UnknownUser(f"no registered user {uid!r}")
            self._log(cur, list(changes))

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        codes = self._codes_for({u.key_id for u in updates})
        done: list[str] = []
        added: list[tuple[str, bytes]] = []
        removed: list[tuple[str, bytes]] = []
        with self._tx() as cur:
            for u in updates:
                # Only while the row still holds the old token; read first for the census.
                old = cur.execute(
                    f"{SELECT_KEYS} WHERE u.user_id = ? AND u.token = ?",
                    (u.user_id, u.old_token),
                ).fetchone()
                if old is None:
                    continue
                if u.wrapped_key is not None:
                    cur.execute(
                        "UPDATE user_keys SET wrapped = ? WHERE user_id = ?",
                        (u.wrapped_key, u.user_id),
                    )
                cur.execute(
                    "UPDATE users SET token = ?, kid = ?, number_ct = coalesce(?, number_ct), "
                    "updated_at = nullif(?, created_at) WHERE user_id = ?",
                    (u.new_token, codes[u.key_id], u.number_ct, now, u.user_id),
                )
                removed.append((old[0], bytes(old[1])))
                added.append((u.key_id, bytes(old[1]) if u.wrapped_key is None else u.wrapped_key))
                done.append(u.user_id)
            self._count(cur, added, removed)
            self._log(cur, done)
        return len(done)

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        with self._read() as cur:
            rows = cur.execute(
                f"{SELECT_USERS} WHERE u.user_id > ? ORDER BY u.user_id LIMIT ?",
                (after or "", limit),
            ).fetchall()
        return [record_from_row(r) for r in rows]

    def _count_users(self) -> int:
        with self._read() as cur:
            return int(cur.execute("SELECT count(*) FROM users").fetchone()[0])

    def _delete_account(self, user_id: str) -> bool:
        with self._tx() as cur:
            old = self._old_keys(cur, [user_id])
            cur.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            if cur.rowcount == 0:
                return False
            cur.execute("DELETE FROM user_keys WHERE user_id = ?", (user_id,))
            cur.execute("DELETE FROM contacts WHERE owner = ?", (user_id,))
            self._count(cur, [], old)
            self._log(cur, [user_id])
        self._scrub()
        return True

    def _scrub(self) -> None:
        """Start flushing erased bytes out of the WAL and the database file; never blocks.

        secure_delete zeroes rows in their pages, but the WAL holds older images of those
        pages (and the database file the pre-erasure page) until a checkpoint copies the new
        ones back and the WAL is truncated. A PASSIVE checkpoint does what it can right away
        without waiting on anyone (it never calls the busy handler); the truncating one waits
        for readers of older snapshots, so the background scrubber retries it off the lock.
        """
        if self._scrubber is None:
            return
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._scrubber.request()

    # contacts -----------------------------------------------------------------------------

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        with self._tx() as cur:
            if cur.execute("SELECT 1 FROM users WHERE user_id = ?", (owner_id,)).fetchone() is None:
                return False
            cur.execute("DELETE FROM contacts WHERE owner = ?", (owner_id,))
            cur.executemany(
                "INSERT INTO contacts (owner, token, key_id) VALUES (?, ?, ?)",
                [(owner_id, t, key_id) for t in tokens],
            )
            return True

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        owners: dict[bytes, list[str]] = {}
        with self._read() as cur:
            for chunk in _chunks(tokens):
                q = f"SELECT token, owner FROM contacts WHERE token IN ({_marks(len(chunk))})"  # noqa: S608
                for tok, owner in cur.execute(q, chunk):
                    owners.setdefault(bytes(tok), []).append(owner)
        return [owners.get(t, []) for t in tokens]

    def _purge_contacts(self, keep_key_id: str) -> int:
        with self._tx() as cur:
            cur.execute("DELETE FROM contacts WHERE key_id != ?", (keep_key_id,))
            dropped = max(cur.rowcount, 0)
        self._scrub()
        return dropped

    # rate limits --------------------------------------------------------------------------

    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        # BEGIN IMMEDIATE holds the database write lock across read-decide-write, which makes
        # the take atomic across every thread and process sharing the file.
        with self._tx() as cur:
            row = cur.execute(
                "SELECT level, updated FROM buckets WHERE subject = ? AND quota = ?",
                (subject, quota),
            ).fetchone()
            level, updated = (0.0, now) if row is None else (row[0], row[1])
            allowed, retry, level = take_decision(
                leak(level, updated, now, refill), cost, capacity, refill
            )
            updated = max(now, updated)
            cur.execute(
                "INSERT INTO buckets (subject, quota, level, updated, drain) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject, quota) DO UPDATE SET "
                "level = excluded.level, updated = excluded.updated, drain = excluded.drain",
                (subject, quota, level, updated, drain_time(level, updated, refill)),
            )
            return TakeResult(allowed, retry)

    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        live = 0
        with self._read() as cur:
            for chunk in _chunks(fingerprints):
                q = (
                    "SELECT count(*) FROM seen WHERE subject = ? AND added > ? "  # noqa: S608
                    f"AND fp IN ({_marks(len(chunk))})"
                )
                live += cur.execute(q, (subject, cutoff, *chunk)).fetchone()[0]
        return len(fingerprints) - live

    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        with self._tx() as cur:
            before = self._conn.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO seen (subject, fp, added) VALUES (?, ?, ?)",
                [(subject, f, now) for f in fingerprints],
            )
            new = self._conn.total_changes - before
            if new == len(fingerprints):
                return new  # all inserted: nothing older to refresh (a first lookup)
            for chunk in _chunks(fingerprints):
                q = (
                    "UPDATE seen SET added = ? WHERE subject = ? AND added < ? "  # noqa: S608
                    f"AND fp IN ({_marks(len(chunk))})"
                )
                cur.execute(q, (now, subject, now, *chunk))
            return new

    def _reset_seen(self, subject: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM seen WHERE subject = ?", (subject,))

    def _expire_rate_state(self, now: float, cutoff: float) -> int:
        with self._tx() as cur:
            cur.execute("DELETE FROM buckets WHERE drain <= ?", (now,))
            removed = max(cur.rowcount, 0)
            cur.execute("DELETE FROM seen WHERE added <= ?", (cutoff,))
            removed += max(cur.rowcount, 0)
        if removed:
            self._scrub()
        return removed

    # maintenance --------------------------------------------------------------------------

    def _vacuum(self, *, keys_only: bool) -> dict[str, int]:  # noqa: ARG002 - one file
        """Checkpoint, rebuild the file, checkpoint again: no free page or WAL frame is left.

        The file is one unit, so ``keys_only`` changes nothing here. Waits (on
        ``busy_timeout``) for readers of older snapshots: an explicit maintenance step may,
        a request must not.
        """
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._conn.execute("VACUUM")
            busy, frames, _done = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return {"vacuumed": 1, "checkpoint_busy": int(busy), "wal_frames_left": max(int(frames), 0)}

    # change feed and identity -----------------------------------------------------------

    def _feed_head(self) -> int:
        with self._read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE name = 'feed_head'").fetchone()
        return int(row[0])

    def _changes(self, after: int, limit: int) -> FeedPage:
        with self._lock:
            cur = self._conn.cursor()
            # One read transaction: the entries, head and floor come from one snapshot.
            cur.execute("BEGIN")
            try:
                meta = dict(
                    cur.execute(
                        "SELECT name, value FROM meta WHERE name IN ('feed_head', 'feed_floor')"
                    ).fetchall()
                )
                rows = cur.execute(
                    "SELECT seq, user_id FROM feed WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
            finally:
                cur.execute("COMMIT")
        head, floor = int(meta["feed_head"]), int(meta["feed_floor"])
        return FeedPage(
            entries=[(int(q), str(u)) for q, u in rows],
            head=head,
            complete=floor <= after <= head,
        )

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        with self._tx() as cur:
            cut = before_seq
            if older_than is not None:
                # Stop at the first entry stamped at or after the limit: a prefix, no hole.
                young = cur.execute(
                    "SELECT min(seq) FROM feed WHERE at >= ?", (older_than,)
                ).fetchone()[0]
                if young is not None:
                    cut = young if cut is None else min(cut, int(young))
            if cut is None:
                top = cur.execute("SELECT max(seq) FROM feed").fetchone()[0]
                cut = 0 if top is None else int(top) + 1
            top = cur.execute("SELECT max(seq) FROM feed WHERE seq < ?", (cut,)).fetchone()[0]
            if top is None:
                return 0
            cur.execute("DELETE FROM feed WHERE seq < ?", (cut,))
            removed = max(cur.rowcount, 0)
            cur.execute(
                "UPDATE meta SET value = max(value, ?) WHERE name = 'feed_floor'", (int(top),)
            )
        # secure_delete zeroed the rows; their older page images leave the WAL as on a delete.
        self._scrub()
        return removed

    def _store_id(self) -> str:
        if self._id is None:
            with self._read() as cur:
                row = cur.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()
            self._id = str(row[0])
        return self._id

    def _key_census(self) -> KeyCensus:
        with self._read() as cur:
            return census_from(cur.execute("SELECT kind, key_id, n FROM key_census").fetchall())

    # stats and checkpoints ----------------------------------------------------------------

    def _incr_stats(self, deltas: dict[str, int]) -> None:
        with self._tx() as cur:
            cur.executemany(
                "INSERT INTO stats (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                list(deltas.items()),
            )

    def _get_stats(self) -> dict[str, int]:
        with self._read() as cur:
            return {n: int(v) for n, v in cur.execute("SELECT name, value FROM stats")}

    def _get_checkpoint(self, name: str) -> str | None:
        with self._read() as cur:
            row = cur.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_checkpoint(self, name: str, value: str | None) -> None:
        with self._tx() as cur:
            if value is None:
                cur.execute("DELETE FROM checkpoints WHERE name = ?", (name,))
            else:
                cur.execute(
                    "INSERT INTO checkpoints (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )

    def _close(self) -> None:
        if self._scrubber is not None:
            self._scrubber.close()
        with self._lock:
            self._conn.close()


def _marks(n: int) -> str:
    return ", ".join("?" * n)
