"""The PostgreSQL schema: forward-only migrations, shared statements, and ``migrate``.

``cm_meta`` holds the schema version. Migrations run forward only, in one transaction under an
advisory lock (concurrent first opens would otherwise race on ``CREATE SCHEMA``); a schema newer
than this library raises :class:`~contactmatch.errors.SchemaVersionError` and is not touched,
and a v1 schema holding registrations (numbers without a per-user key, which crypto-shredding
cannot cover) is refused rather than migrated. ``docs/storage.md`` (Data model) describes the
tables. Statements here are constants used by more than one method (or by tests and
benchmarks that reproduce the adapter's steps); one-off SQL stays next to its method.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from contactmatch.errors import SchemaVersionError, StoreError
from contactmatch.stores.census import census_deltas
from contactmatch.stores.sqlrows import USER_COLS

__all__ = [
    "ADVANCE_HEAD",
    "COPY_KEYS",
    "COPY_USERS",
    "INSERT_FEED",
    "KEY_TYPES",
    "LOCK_OLD",
    "MIGRATIONS",
    "MOVE_CENSUS",
    "PERSONAL_TABLES",
    "SCHEMA_VERSION",
    "USER_TYPES",
    "migrate",
]

USER_TYPES = ["text", "bytea", "int2", "bytea", "int2", "float8", "float8"]
COPY_USERS = f"COPY users ({USER_COLS}) FROM STDIN (FORMAT BINARY)"
COPY_KEYS = "COPY user_keys (user_id, wrapped) FROM STDIN (FORMAT BINARY)"
KEY_TYPES = ["text", "bytea"]
#: Number this transaction's feed entries: the row lock serialises writers until commit.
ADVANCE_HEAD = "UPDATE feed_state SET value = value + %s WHERE name = 'head' RETURNING value"
INSERT_FEED = (
    "INSERT INTO feed (seq, at, user_id) SELECT %s + o, %s, u "
    "FROM unnest(%s::text[]) WITH ORDINALITY AS t(u, o)"
)
MOVE_CENSUS = (
    "INSERT INTO key_census (kind, key_id, n) "
    "SELECT * FROM unnest(%s::int2[], %s::text[], %s::int8[]) ORDER BY 1, 2 "
    "ON CONFLICT (kind, key_id) DO UPDATE SET n = key_census.n + excluded.n"
)
#: Current (token, key id, wrapped key) of users, locked until commit: the census of a change
#: that replaces them is computed from exactly what it replaces.
LOCK_OLD = (
    "SELECT u.user_id, u.token, i.key_id, k.wrapped FROM users u "
    "JOIN user_keys k ON k.user_id = u.user_id JOIN key_ids i ON i.code = u.kid "
    "WHERE u.user_id = ANY(%s) ORDER BY u.user_id FOR UPDATE OF u, k"
)
#: Tables that can hold personal data or a derived identifier, rewritten by ``vacuum``.
PERSONAL_TABLES = ("users", "user_keys", "contacts", "seen", "buckets", "checkpoints", "feed")

# Forward-only migrations: index i brings the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        user_id text COLLATE "C" PRIMARY KEY,
        token bytea NOT NULL UNIQUE,
        key_id text NOT NULL,
        number_ct bytea NOT NULL,
        disc smallint NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    );
    CREATE TABLE contacts (
        owner text NOT NULL,
        token bytea NOT NULL,
        key_id text NOT NULL,
        PRIMARY KEY (owner, token)
    );
    CREATE INDEX contacts_token ON contacts (token);
    CREATE TABLE buckets (
        subject text NOT NULL,
        quota text NOT NULL,
        level double precision NOT NULL,
        updated double precision NOT NULL,
        PRIMARY KEY (subject, quota)
    );
    CREATE TABLE seen (subject text NOT NULL, fp bytea NOT NULL, PRIMARY KEY (subject, fp));
    CREATE TABLE filters (
        version bigint PRIMARY KEY,
        key_id text NOT NULL,
        blob bytea NOT NULL,
        log_seq bigint NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE TABLE mlog (
        seq bigserial PRIMARY KEY,
        is_add boolean NOT NULL,
        token bytea,
        fp bytea NOT NULL
    );
    CREATE INDEX mlog_token ON mlog (token) WHERE token IS NOT NULL;
    CREATE TABLE stats (name text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE checkpoints (name text PRIMARY KEY, value text NOT NULL);

    CREATE FUNCTION mlog_ins() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO mlog (is_add, token, fp)
            SELECT true, n.token, substring(n.token FROM 1 FOR 8) FROM new_rows n
            WHERE n.disc = 0;
        RETURN NULL;
    END $$;
    CREATE FUNCTION mlog_upd() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM mlog m USING old_rows o JOIN new_rows n USING (user_id)
            WHERE o.disc = 0 AND (n.disc <> 0 OR n.token <> o.token) AND m.token = o.token;
        INSERT INTO mlog (is_add, token, fp)
            SELECT false, NULL, substring(o.token FROM 1 FOR 8)
            FROM old_rows o JOIN new_rows n USING (user_id)
            WHERE o.disc = 0 AND (n.disc <> 0 OR n.token <> o.token);
        INSERT INTO mlog (is_add, token, fp)
            SELECT true, n.token, substring(n.token FROM 1 FOR 8)
            FROM old_rows o JOIN new_rows n USING (user_id)
            WHERE n.disc = 0 AND (o.disc <> 0 OR n.token <> o.token);
        RETURN NULL;
    END $$;
    CREATE FUNCTION mlog_del() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM mlog m USING old_rows o WHERE o.disc = 0 AND m.token = o.token;
        INSERT INTO mlog (is_add, token, fp)
            SELECT false, NULL, substring(o.token FROM 1 FOR 8) FROM old_rows o
            WHERE o.disc = 0;
        RETURN NULL;
    END $$;
    CREATE TRIGGER users_ins AFTER INSERT ON users REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mlog_ins();
    CREATE TRIGGER users_upd AFTER UPDATE ON users
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mlog_upd();
    CREATE TRIGGER users_del AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mlog_del();
    """,
    # v2: per-user keys in a table of their own (crypto-shredding); rate state keyed by
    # subject and expiring (buckets by drain time, seen entries by when they were added); the
    # store-side filter log is gone (filters are served from memory and it kept token
    # prefixes of deleted users). Rate state keyed by user id is dropped, not converted.
    """
    DROP TRIGGER users_ins ON users;
    DROP TRIGGER users_upd ON users;
    DROP TRIGGER users_del ON users;
    DROP FUNCTION mlog_ins();
    DROP FUNCTION mlog_upd();
    DROP FUNCTION mlog_del();
    DROP TABLE mlog;
    DROP TABLE filters;
    DROP TABLE buckets;
    DROP TABLE seen;
    CREATE TABLE user_keys (
        user_id text COLLATE "C" PRIMARY KEY,
        wrapped bytea NOT NULL
    );
    CREATE TABLE buckets (
        subject text NOT NULL,
        quota text NOT NULL,
        level double precision NOT NULL,
        updated double precision NOT NULL,
        drain double precision NOT NULL,
        PRIMARY KEY (subject, quota)
    );
    CREATE INDEX buckets_drain ON buckets (drain);
    CREATE TABLE seen (
        subject text NOT NULL,
        fp bytea NOT NULL,
        added double precision NOT NULL,
        PRIMARY KEY (subject, fp)
    );
    CREATE INDEX seen_added ON seen (added);
    """,
    # v3: the change feed and its counters; the store's identity; key ids as smallint codes;
    # users rebuilt with fixed-width columns first (no alignment padding) and updated_at NULL
    # while it equals created_at; the key census (filled from the rows by _census_v3).
    """
    INSERT INTO cm_meta VALUES ('store_id', 'postgresql-' || md5(gen_random_uuid()::text));
    CREATE TABLE key_ids (
        code smallint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        key_id text NOT NULL UNIQUE
    );
    INSERT INTO key_ids (key_id) SELECT DISTINCT key_id FROM users ORDER BY 1;
    CREATE TABLE users_v3 (
        created_at double precision NOT NULL,
        updated_at double precision,
        kid smallint NOT NULL,
        disc smallint NOT NULL,
        user_id text COLLATE "C" NOT NULL,
        token bytea NOT NULL,
        number_ct bytea NOT NULL
    );
    INSERT INTO users_v3
        SELECT u.created_at, nullif(u.updated_at, u.created_at), i.code, u.disc, u.user_id,
               u.token, u.number_ct
        FROM users u JOIN key_ids i ON i.key_id = u.key_id;
    DROP TABLE users;
    ALTER TABLE users_v3 RENAME TO users;
    ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY (user_id);
    ALTER TABLE users ADD CONSTRAINT users_token_key UNIQUE (token);
    CREATE TABLE feed (seq bigint PRIMARY KEY, at bigint NOT NULL, user_id text NOT NULL);
    CREATE TABLE feed_state (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO feed_state VALUES ('head', 0), ('floor', 0);

    CREATE TABLE key_census (
        kind smallint NOT NULL,
        key_id text NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (kind, key_id)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


_V1_USERS = (
    "postgresql: this schema holds registrations from schema v1, whose numbers have no "
    "per-user key and cannot be crypto-shredded; export and re-register them, then migrate "
    "an empty schema"
)


def migrate(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create ``schema`` if needed and bring it to :data:`SCHEMA_VERSION`.

    Runs in the caller's transaction, after taking a transaction-scoped advisory lock named
    after the schema: concurrent first opens would race on ``CREATE SCHEMA`` and the
    migrations.

    Raises:
        SchemaVersionError: the schema was written by a newer contactmatch.
        StoreError: the schema is at v1 and holds registrations (see the module docstring).
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cm:{schema}",))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute("CREATE TABLE IF NOT EXISTS cm_meta (key text PRIMARY KEY, value text)")
    row = conn.execute("SELECT value FROM cm_meta WHERE key = 'schema_version'").fetchone()
    version = 0 if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"schema v{version} is newer than this library (v{SCHEMA_VERSION})"
        )
    for i in range(version, SCHEMA_VERSION):
        if i == 1 and conn.execute("SELECT 1 FROM users LIMIT 1").fetchone():
            raise StoreError(_V1_USERS)
        conn.execute(MIGRATIONS[i].encode())
        if i == 2:
            _census_v3(conn)
    conn.execute(
        "INSERT INTO cm_meta VALUES ('schema_version', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def _census_v3(conn: psycopg.Connection[Any]) -> None:
    """Fill the key census from the rows that exist when migrating to v3 (one scan, once)."""
    with conn.cursor(name="cm_census_v3") as cur:
        cur.execute(
            "SELECT i.key_id, k.wrapped FROM users u JOIN user_keys k ON k.user_id = u.user_id "
            "JOIN key_ids i ON i.code = u.kid"
        )
        total: dict[tuple[int, str], int] = {}
        while page := cur.fetchmany(10_000):
            for key, n in census_deltas((str(k), bytes(w)) for k, w in page).items():
                total[key] = total.get(key, 0) + n
    keys = sorted(total)
    conn.execute(
        MOVE_CENSUS, ([k for k, _ in keys], [i for _, i in keys], [total[k] for k in keys])
    )
