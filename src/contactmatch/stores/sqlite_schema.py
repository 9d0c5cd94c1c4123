"""The SQLite schema: forward-only migrations, the statements the adapter runs, and ``migrate``.

``PRAGMA user_version`` holds the schema version. Migrations run forward only, inside the
caller's write transaction, so a failed one leaves the file as it was; a file newer than this
library raises :class:`~contactmatch.errors.SchemaVersionError` and is not touched, and a v1
file holding registrations (numbers without a per-user key, which crypto-shredding cannot
cover) is refused rather than migrated. ``docs/storage.md`` (Data model) describes the tables.
"""

from __future__ import annotations

import sqlite3

from contactmatch.errors import SchemaVersionError, StoreError
from contactmatch.stores.census import census_deltas
from contactmatch.stores.sqlrows import USER_COLS

__all__ = [
    "INSERT_FEED",
    "INSERT_KEY",
    "INSERT_USER",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SELECT_KEYS",
    "UPSERT_CENSUS",
    "UPSERT_KEY",
    "UPSERT_USER",
    "migrate",
    "statements",
]

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
    # v2: per-user keys in a table of their own (crypto-shredding); rate state keyed by
    # subject and expiring (buckets by drain time, seen entries by when they were added); the
    # store-side filter log is gone (filters are served from memory and it kept token
    # prefixes of deleted users). Rate state keyed by user id is dropped, not converted.
    """
    DROP TRIGGER users_ai;
    DROP TRIGGER users_au;
    DROP TRIGGER users_ad;
    DROP TABLE mlog;
    DROP TABLE filters;
    DROP TABLE buckets;
    DROP TABLE seen;
    CREATE TABLE user_keys (
        user_id TEXT PRIMARY KEY,
        wrapped BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE buckets (
        subject TEXT NOT NULL,
        quota TEXT NOT NULL,
        level REAL NOT NULL,
        updated REAL NOT NULL,
        drain REAL NOT NULL,
        PRIMARY KEY (subject, quota)
    ) WITHOUT ROWID;
    CREATE INDEX buckets_drain ON buckets (drain);
    CREATE TABLE seen (
        subject TEXT NOT NULL,
        fp BLOB NOT NULL,
        added REAL NOT NULL,
        PRIMARY KEY (subject, fp)
    ) WITHOUT ROWID;
    CREATE INDEX seen_added ON seen (added);
    """,
    # v3: the change feed (seq = rowid, no other index) and its counters; the store's identity;
    # key ids as small integer codes (one byte per row instead of up to 32); updated_at NULL
    # while it equals created_at; the key census (filled from the rows by _census_v3).
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
    INSERT INTO meta VALUES ('store_id', 'sqlite-' || lower(hex(randomblob(16))));
    INSERT INTO meta VALUES ('feed_head', 0);
    INSERT INTO meta VALUES ('feed_floor', 0);
    CREATE TABLE key_ids (code INTEGER PRIMARY KEY, key_id TEXT NOT NULL UNIQUE);
    INSERT INTO key_ids (key_id) SELECT DISTINCT key_id FROM users ORDER BY key_id;
    CREATE TABLE users_v3 (
        user_id TEXT PRIMARY KEY,
        token BLOB NOT NULL UNIQUE,
        kid INTEGER NOT NULL,
        number_ct BLOB NOT NULL,
        disc INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL
    );
    INSERT INTO users_v3
        SELECT u.user_id, u.token, i.code, u.number_ct, u.disc, u.created_at,
               nullif(u.updated_at, u.created_at)
        FROM users u JOIN key_ids i ON i.key_id = u.key_id ORDER BY u.rowid;
    DROP TABLE users;
    ALTER TABLE users_v3 RENAME TO users;
    CREATE TABLE key_census (
        kind INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (kind, key_id)
    ) WITHOUT ROWID;
    CREATE TABLE feed (seq INTEGER PRIMARY KEY, user_id TEXT NOT NULL, at INTEGER NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Queries below are built from these constants and "?" markers only, never from input (S608).
#: (key id, wrapped key) of users, for the key census of a change that replaces them.
SELECT_KEYS = (
    "SELECT i.key_id, k.wrapped FROM users u JOIN user_keys k ON k.user_id = u.user_id "
    "JOIN key_ids i ON i.code = u.kid"
)
INSERT_USER = f"INSERT INTO users ({USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# An upsert keeps created_at, so updated_at is stored as NULL only if it equals the kept one.
UPSERT_USER = (
    f"INSERT INTO users ({USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608 - constants
    "ON CONFLICT (user_id) DO UPDATE SET token = excluded.token, kid = excluded.kid, "
    "number_ct = excluded.number_ct, disc = excluded.disc, updated_at = "
    "nullif(coalesce(excluded.updated_at, excluded.created_at), users.created_at)"
)
INSERT_KEY = "INSERT INTO user_keys (user_id, wrapped) VALUES (?, ?)"
UPSERT_KEY = INSERT_KEY + " ON CONFLICT (user_id) DO UPDATE SET wrapped = excluded.wrapped"
UPSERT_CENSUS = (
    "INSERT INTO key_census (kind, key_id, n) VALUES (?, ?, ?) "
    "ON CONFLICT (kind, key_id) DO UPDATE SET n = n + excluded.n"
)
INSERT_FEED = "INSERT INTO feed (seq, user_id, at) VALUES (?, ?, ?)"


_V1_USERS = (
    "sqlite: this database holds registrations from schema v1, whose numbers have no "
    "per-user key and cannot be crypto-shredded; export and re-register them, then migrate "
    "an empty database"
)


def migrate(cur: sqlite3.Cursor) -> None:
    """Bring the file to :data:`SCHEMA_VERSION`, in the caller's (write) transaction.

    Raises:
        SchemaVersionError: the file was written by a newer contactmatch.
        StoreError: the file is at v1 and holds registrations (see the module docstring).
    """
    version = cur.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema v{version} is newer than this library (v{SCHEMA_VERSION})"
        )
    for i in range(version, SCHEMA_VERSION):
        if i == 1 and cur.execute("SELECT 1 FROM users LIMIT 1").fetchone():
            raise StoreError(_V1_USERS)
        for stmt in statements(MIGRATIONS[i]):
            cur.execute(stmt)
        if i == 2:
            _census_v3(cur)
        cur.execute(f"PRAGMA user_version = {i + 1}")


def _census_v3(cur: sqlite3.Cursor) -> None:
    """Fill the key census from the rows that exist when migrating to v3 (one scan, once)."""
    rows = cur.execute(SELECT_KEYS)
    while page := rows.fetchmany(10_000):
        deltas = census_deltas([(k, bytes(w)) for k, w in page])
        cur.connection.cursor().executemany(
            UPSERT_CENSUS, [(kind, kid, n) for (kind, kid), n in deltas.items()]
        )


def statements(script: str) -> list[str]:
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
