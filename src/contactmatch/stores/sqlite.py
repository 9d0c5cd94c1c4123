"""SQLite adapter (``sqlite:///path.db``): the default, for the demo and embedded servers.

WAL mode so readers never block the writer; ``secure_delete`` so erased rows are overwritten
with zeros rather than left in free pages; every write in one ``BEGIN IMMEDIATE`` transaction
(taking the write lock up front avoids the deadlock of two readers upgrading at once). One
connection guarded by a lock serves all threads; other processes wait on ``busy_timeout``.
Filter membership is logged by triggers, so no code path can change users and forget the log.
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
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
    UnknownUser,
)
from contactmatch.stores.base import (
    DISC_CODES,
    BaseStore,
    Discoverability,
    FilterDelta,
    FilterVersion,
    Rekey,
    TakeResult,
    UserRecord,
    leak,
    net_delta,
    record_from_row,
    take_decision,
    user_row,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_CHUNK = 500  # well under SQLite's bound-parameter limit

# Forward-only migrations: index i brings the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        token BLOB NOT NULL UNIQUE,
        key_id TEXT NOT NULL,
        number_ct BLOB NOT NULL,
        disc INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE contacts (
        owner TEXT NOT NULL,
        token BLOB NOT NULL,
        key_id TEXT NOT NULL,
        PRIMARY KEY (owner, token)
    ) WITHOUT ROWID;
    CREATE INDEX contacts_token ON contacts (token);
    CREATE TABLE buckets (
        subject TEXT NOT NULL,
        quota TEXT NOT NULL,
        level REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (subject, quota)
    ) WITHOUT ROWID;
    CREATE TABLE seen (
        subject TEXT NOT NULL,
        fp BLOB NOT NULL,
        PRIMARY KEY (subject, fp)
    ) WITHOUT ROWID;
    CREATE TABLE filters (
        version INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,
        blob BLOB NOT NULL,
        log_seq INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    -- AUTOINCREMENT: a sequence number must never be reused after its entry is deleted.
    CREATE TABLE mlog (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        is_add INTEGER NOT NULL,
        token BLOB,
        fp BLOB NOT NULL
    );
    CREATE INDEX mlog_token ON mlog (token) WHERE token IS NOT NULL;
    CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TRIGGER users_ai AFTER INSERT ON users WHEN NEW.disc = 0 BEGIN
        INSERT INTO mlog (is_add, token, fp) VALUES (1, NEW.token, substr(NEW.token, 1, 8));
    END;
    CREATE TRIGGER users_au AFTER UPDATE OF token, disc ON users BEGIN
        DELETE FROM mlog WHERE token = OLD.token
            AND OLD.disc = 0 AND (NEW.disc != 0 OR NEW.token != OLD.token);
        INSERT INTO mlog (is_add, token, fp) SELECT 0, NULL, substr(OLD.token, 1, 8)
            WHERE OLD.disc = 0 AND (NEW.disc != 0 OR NEW.token != OLD.token);
        INSERT INTO mlog (is_add, token, fp) SELECT 1, NEW.token, substr(NEW.token, 1, 8)
            WHERE NEW.disc = 0 AND (OLD.disc != 0 OR NEW.token != OLD.token);
    END;
    CREATE TRIGGER users_ad AFTER DELETE ON users WHEN OLD.disc = 0 BEGIN
        DELETE FROM mlog WHERE token = OLD.token;
        INSERT INTO mlog (is_add, token, fp) VALUES (0, NULL, substr(OLD.token, 1, 8));
    END;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Queries below are built from these constants and "?" markers only, never from input (S608).
USER_COLS = "user_id, token, key_id, number_ct, disc, created_at, updated_at"
INSERT_USER = f"INSERT INTO users ({USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
UPSERT_USER = (
    f"INSERT INTO users ({USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608 - constants
    "ON CONFLICT (user_id) DO UPDATE SET token = excluded.token, key_id = excluded.key_id, "
    "number_ct = excluded.number_ct, disc = excluded.disc, updated_at = excluded.updated_at"
)


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
        self, url: str = "sqlite:///contactmatch.db", *, timeout: float = 30.0, cache_mb: int = 64
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
        # 64 MiB of page cache (default 2 MiB): the token index is random-access by nature.
        c.execute(f"PRAGMA cache_size = -{int(cache_mb) * 1024}")
        with self._tx() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema v{version} is newer than this library (v{SCHEMA_VERSION})"
                )
            for i in range(version, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[i]):
                    cur.execute(stmt)
                cur.execute(f"PRAGMA user_version = {i + 1}")

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

    def _put_users(self, users: list[UserRecord]) -> None:
        # Plain INSERT for the bulk-load case. If any user already exists (or a token clashes,
        # which the upsert then reports) the whole transaction is rolled back and the batch
        # redone as an upsert. Not a savepoint: SQLite copies every page a savepoint touches
        # into a sub-journal, which costs a bulk load a third of its speed.
        try:
            with self._tx() as cur:
                cur.executemany(INSERT_USER, map(user_row, users))
        except sqlite3.IntegrityError:
            pass
        else:
            return
        with self._tx() as cur:
            cur.executemany(UPSERT_USER, map(user_row, users))

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        found: dict[str, UserRecord] = {}
        with self._read() as cur:
            for chunk in _chunks(user_ids):
                q = f"SELECT {USER_COLS} FROM users WHERE user_id IN ({_marks(len(chunk))})"  # noqa: S608
                for row in cur.execute(q, chunk):
                    found[row[0]] = record_from_row(row)
        return [found.get(u) for u in user_ids]

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        found: dict[bytes, UserRecord] = {}
        with self._read() as cur:
            for chunk in _chunks(tokens):
                q = f"SELECT {USER_COLS} FROM users WHERE token IN ({_marks(len(chunk))})"  # noqa: S608
                for row in cur.execute(q, chunk):
                    rec = record_from_row(row)
                    found[rec.token] = rec
        return [found.get(t) for t in tokens]

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        with self._tx() as cur:
            for uid, d in changes.items():
                cur.execute(
                    "UPDATE users SET disc = ?, updated_at = ? WHERE user_id = ?",
                    (DISC_CODES[d], now, uid),
                )
                if cur.rowcount == 0:
                    raise UnknownUser(f"no registered user {uid!r}")

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        with self._tx() as cur:
            cur.executemany(
                "UPDATE users SET token = ?, key_id = ?, number_ct = coalesce(?, number_ct), "
                "updated_at = ? WHERE user_id = ? AND token = ?",
                [
                    (u.new_token, u.key_id, u.number_ct, now, u.user_id, u.old_token)
                    for u in updates
                ],
            )
            return max(cur.rowcount, 0)

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {USER_COLS} FROM users WHERE user_id > ? ORDER BY user_id LIMIT ?",  # noqa: S608
                (after or "", limit),
            ).fetchall()
        return [record_from_row(r) for r in rows]

    def _count_users(self) -> int:
        with self._read() as cur:
            return int(cur.execute("SELECT count(*) FROM users").fetchone()[0])

    def _delete_account(self, user_id: str) -> bool:
        with self._tx() as cur:
            cur.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            if cur.rowcount == 0:
                return False
            cur.execute("DELETE FROM contacts WHERE owner = ?", (user_id,))
            cur.execute("DELETE FROM buckets WHERE subject = ?", (user_id,))
            cur.execute("DELETE FROM seen WHERE subject = ?", (user_id,))
        self._scrub()
        return True

    def _scrub(self) -> None:
        """Flush erased bytes out of the WAL after a deletion meant to leave no residue.

        secure_delete zeroes rows in their pages, but the WAL still holds older images of
        those pages until a checkpoint copies the new ones back and the WAL is truncated.
        A reader holding an old snapshot can keep frames alive; the next scrub gets them.
        """
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
            cur.execute(
                "INSERT INTO buckets (subject, quota, level, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (subject, quota) DO UPDATE SET level = excluded.level, "
                "updated = excluded.updated",
                (subject, quota, level, max(now, updated)),
            )
            return TakeResult(allowed, retry)

    def _count_unseen(self, subject: str, fingerprints: list[bytes]) -> int:
        known = 0
        with self._read() as cur:
            for chunk in _chunks(fingerprints):
                q = f"SELECT count(*) FROM seen WHERE subject = ? AND fp IN ({_marks(len(chunk))})"  # noqa: S608
                known += cur.execute(q, (subject, *chunk)).fetchone()[0]
        return len(fingerprints) - known

    def _add_seen(self, subject: str, fingerprints: list[bytes]) -> int:
        with self._tx() as cur:
            before = self._conn.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO seen (subject, fp) VALUES (?, ?)",
                [(subject, f) for f in fingerprints],
            )
            return self._conn.total_changes - before

    def _reset_seen(self, subject: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM seen WHERE subject = ?", (subject,))

    # filter -------------------------------------------------------------------------------

    def _put_filter(self, version: int, key_id: str, blob: bytes, now: float) -> FilterVersion:
        with self._tx() as cur:
            latest = cur.execute("SELECT max(version) FROM filters").fetchone()[0]
            if latest is not None and version <= latest:
                raise Conflict("filter version is not above the latest one")
            row = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'mlog'").fetchone()
            seq = 0 if row is None else int(row[0])
            cur.execute(
                "INSERT INTO filters (version, key_id, blob, log_seq, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, key_id, blob, seq, now),
            )
        return FilterVersion(version=version, key_id=key_id, blob=blob, log_seq=seq, created_at=now)

    def _get_filter(self, version: int | None) -> FilterVersion | None:
        cols = "version, key_id, blob, log_seq, created_at"
        with self._read() as cur:
            if version is None:
                q = f"SELECT {cols} FROM filters ORDER BY version DESC LIMIT 1"  # noqa: S608
                row = cur.execute(q).fetchone()
            else:
                q = f"SELECT {cols} FROM filters WHERE version = ?"  # noqa: S608
                row = cur.execute(q, (version,)).fetchone()
        if row is None:
            return None
        return FilterVersion(
            version=row[0], key_id=row[1], blob=bytes(row[2]), log_seq=row[3], created_at=row[4]
        )

    def _filter_delta(self, since: int, until: int | None) -> FilterDelta | None:
        with self._tx() as cur:  # one snapshot for the two positions and the entries
            lo = cur.execute("SELECT log_seq FROM filters WHERE version = ?", (since,)).fetchone()
            if until is None:
                hi = cur.execute(
                    "SELECT log_seq, version FROM filters ORDER BY version DESC LIMIT 1"
                ).fetchone()
            else:
                hi = cur.execute(
                    "SELECT log_seq, version FROM filters WHERE version = ?", (until,)
                ).fetchone()
            if lo is None or hi is None:
                return None
            rows = cur.execute(
                "SELECT seq, is_add, token, fp FROM mlog WHERE seq > ? AND seq <= ?",
                (lo[0], hi[0]),
            ).fetchall()
        entries = [(s, bool(a), None if t is None else bytes(t), bytes(f)) for s, a, t, f in rows]
        return net_delta(since, hi[1], entries)

    def _compact_filters(self, keep_from: int) -> None:
        with self._tx() as cur:
            row = cur.execute(
                "SELECT log_seq FROM filters WHERE version = ?", (keep_from,)
            ).fetchone()
            if row is None:
                return
            cur.execute("DELETE FROM filters WHERE version < ?", (keep_from,))
            cur.execute("DELETE FROM mlog WHERE seq <= ?", (row[0],))
        self._scrub()

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
        with self._lock:
            self._conn.close()


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _statements(script: str) -> list[str]:
    """Split a migration into statements; trigger bodies contain ';' so use sqlite's parser."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
