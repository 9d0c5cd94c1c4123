"""Schema migrations: v1 -> v2 refuses v1 registrations; v2 -> v3 keeps every registration.

Version 1 stored numbers without a per-user key, which crypto-shredding cannot cover, so a
store holding v1 registrations refuses to migrate (and is left untouched) rather than keep
them or drop them silently. An empty v1 store migrates. Version 3 adds the change feed (empty,
head 0), the store identity and the key census (counted from the rows once), stores key ids
as codes (SQL) and moves users into slot groups (Redis Cluster, tested there).
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from contactmatch.errors import StoreError
from contactmatch.stores import (
    FeedPage,
    KeyCensus,
    UserRecord,
    open_store,
    postgres_schema,
    sqlite_schema,
)
from tests.services import PG_BASE, REDIS_BASE, drop_redis_prefix
from tests.stores._helpers import user, write_redis_v2_users


def _sqlite_v1(path: Path, *, with_user: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmt in sqlite_schema.statements(sqlite_schema.MIGRATIONS[0]):
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO buckets VALUES ('u0000001', 'lookup', 3.0, 1.0)")
    conn.execute("INSERT INTO seen VALUES ('u0000001', x'0102030405060708')")
    if with_user:
        conn.execute(
            "INSERT INTO users VALUES ('u0000001', ?, 'k1', x'01', 0, 1.0, 1.0)", (bytes(32),)
        )
    conn.close()


def _sqlite_tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        return {r[0] for r in rows}
    finally:
        conn.close()


def test_sqlite_empty_v1_migrates(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    _sqlite_v1(db, with_user=False)
    with open_store(f"sqlite:///{db}") as s:
        s.put_users([user(1)])
        assert s.get_users(["u0000001"]) == [user(1)]
        # v1 rate state was keyed by user id: dropped, not carried over
        assert s.take("u0000001", "lookup", 10, capacity=10, refill_per_s=1e-6, now=1.0).allowed
    tables = _sqlite_tables(db)
    assert {"user_keys", "users", "buckets", "seen"} <= tables
    assert not tables & {"mlog", "filters", "users_ai", "users_au", "users_ad"}
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    conn.close()


def test_sqlite_v1_with_users_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    _sqlite_v1(db, with_user=True)
    with pytest.raises(StoreError, match="schema v1") as info:
        open_store(f"sqlite:///{db}")
    assert bytes(32).hex() not in str(info.value)
    assert "mlog" in _sqlite_tables(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def _pg_v1(schema: str, *, with_user: bool) -> None:
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute("CREATE TABLE cm_meta (key text PRIMARY KEY, value text)")
        conn.execute("INSERT INTO cm_meta VALUES ('schema_version', '1')")
        conn.execute(postgres_schema.MIGRATIONS[0].encode())
        conn.execute("INSERT INTO buckets VALUES ('u0000001', 'lookup', 3, 1)")
        if with_user:
            conn.execute(
                "INSERT INTO users VALUES ('u0000001', %s, 'k1', '\\x01', 0, 1, 1)", (bytes(32),)
            )


def _pg_tables(schema: str) -> set[str]:
    import psycopg

    with psycopg.connect(PG_BASE) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.postgres
def test_postgres_empty_v1_migrates(pg_schema: str) -> None:
    _pg_v1(pg_schema, with_user=False)
    with open_store(PG_BASE, schema=pg_schema) as s:
        s.put_users([user(1)])
        assert s.get_users(["u0000001"]) == [user(1)]
        assert s.take("u0000001", "lookup", 10, capacity=10, refill_per_s=1e-6, now=1.0).allowed
    tables = _pg_tables(pg_schema)
    assert {"user_keys", "users", "buckets", "seen"} <= tables
    assert not tables & {"mlog", "filters"}


@pytest.mark.postgres
def test_postgres_v1_with_users_is_refused_untouched(pg_schema: str) -> None:
    _pg_v1(pg_schema, with_user=True)
    with pytest.raises(StoreError, match="schema v1"):
        open_store(PG_BASE, schema=pg_schema)
    assert "mlog" in _pg_tables(pg_schema)


@pytest.mark.redis
def test_redis_empty_v1_layout_migrates() -> None:
    import redis

    prefix = "t" + uuid.uuid4().hex[:12]
    g = "{" + prefix + ":g}"
    r = redis.Redis.from_url(REDIS_BASE)
    try:
        r.set(g + ":schema", 1)
        r.zadd(g + ":log", {b"\x01" + bytes(32): 1})
        r.set(g + ":seq", 1)
        r.zadd(g + ":fv", {"1": 1})
        r.hset(g + ":f:1", mapping={"kid": "k1", "blob": b"x", "seq": 1, "cat": 1.0})
        r.hset("{" + prefix + ":u:u0000001}:rl", mapping={"q:l": 1, "q:t": 1})
        r.sadd("{" + prefix + ":u:u0000001}:seen", b"fp-00001")
        with open_store(REDIS_BASE, prefix=prefix) as s:
            s.put_users([user(1)])
            assert s.get_users(["u0000001"]) == [user(1)]
        keys = {k.decode() for k in r.scan_iter(match="{" + prefix + ":*")}
        assert keys == {
            g + ":schema",
            g + ":id",
            g + ":ids",
            g + ":seq",
            g + ":feed",
            g + ":census",
            "{" + prefix + ":u:u0000001}",
            "{" + prefix + ":u:u0000001}:k",
            "{" + prefix + ":t:" + user(1).token.hex() + "}",
        }
        assert r.get(g + ":schema") == b"3"
    finally:
        r.close()
        drop_redis_prefix(prefix)


@pytest.mark.redis
def test_redis_v1_layout_with_users_is_refused() -> None:
    import redis

    prefix = "t" + uuid.uuid4().hex[:12]
    g = "{" + prefix + ":g}"
    r = redis.Redis.from_url(REDIS_BASE)
    try:
        r.set(g + ":schema", 1)
        r.zadd(g + ":ids", {"u0000001": 0})
        r.zadd(g + ":log", {b"\x01" + bytes(32): 1})
        with pytest.raises(StoreError, match="layout v1"):
            open_store(REDIS_BASE, prefix=prefix)
        assert r.exists(g + ":log")
        assert r.get(g + ":schema") == b"1"
    finally:
        r.close()
        drop_redis_prefix(prefix)


# v2 -> v3: the change feed, key codes, the census, the identity; registrations kept -------

V2_USERS = [user(1, data_key="dk-1"), user(2, key_id="k2", now=5.0), user(3, data_key="dk-1")]
V2_CENSUS = KeyCensus(oprf={"k1": 2, "k2": 1}, data={"dk-1": 2, "": 1})


def _v2_row(u: UserRecord) -> tuple[object, ...]:
    return (u.user_id, u.token, u.key_id, u.number_ct, 0, u.created_at, u.updated_at)


def test_sqlite_v2_with_users_migrates_and_keeps_them(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for script in sqlite_schema.MIGRATIONS[:2]:
        for stmt in sqlite_schema.statements(script):
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 2")
    for u in V2_USERS:
        conn.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)", _v2_row(u))
        conn.execute("INSERT INTO user_keys VALUES (?, ?)", (u.user_id, u.wrapped_key))
    conn.close()
    with open_store(f"sqlite:///{db}") as s:
        assert s.get_users([u.user_id for u in V2_USERS]) == V2_USERS
        assert s.lookup_tokens([V2_USERS[1].token]) == [V2_USERS[1]]
        assert s.key_census() == V2_CENSUS
        assert s.changes(0, 10) == FeedPage(entries=[], head=0, complete=True)
        sid = s.store_id()
        s.put_users([user(4)])
        assert s.changes(0, 10).entries == [(1, "u0000004")]
    with open_store(f"sqlite:///{db}") as again:
        assert again.store_id() == sid
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    cols = [r[1] for r in conn.execute("PRAGMA table_info(users)")]
    assert "key_id" not in cols
    assert "kid" in cols
    conn.close()


@pytest.mark.postgres
def test_postgres_v2_with_users_migrates_and_keeps_them(pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'SET search_path = "{pg_schema}"')
        conn.execute("CREATE TABLE cm_meta (key text PRIMARY KEY, value text)")
        conn.execute("INSERT INTO cm_meta VALUES ('schema_version', '2')")
        conn.execute(postgres_schema.MIGRATIONS[0].encode())
        conn.execute(postgres_schema.MIGRATIONS[1].encode())
        for u in V2_USERS:
            conn.execute(
                "INSERT INTO users (user_id, token, key_id, number_ct, disc, created_at, "
                "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                _v2_row(u),
            )
            conn.execute("INSERT INTO user_keys VALUES (%s, %s)", (u.user_id, u.wrapped_key))
    with open_store(PG_BASE, schema=pg_schema) as s:
        assert s.get_users([u.user_id for u in V2_USERS]) == V2_USERS
        assert s.key_census() == V2_CENSUS
        assert s.changes(0, 10) == FeedPage(entries=[], head=0, complete=True)
        sid = s.store_id()
        s.delete_account("u0000001")
        assert s.key_census() == KeyCensus(oprf={"k1": 1, "k2": 1}, data={"dk-1": 1, "": 1})
        assert s.changes(0, 10).entries == [(1, "u0000001")]
    with open_store(PG_BASE, schema=pg_schema) as again:
        assert again.store_id() == sid


@pytest.mark.redis
def test_redis_v2_with_users_migrates_and_keeps_them() -> None:
    import redis

    prefix = "t" + uuid.uuid4().hex[:12]
    g = "{" + prefix + ":g}"
    r = redis.Redis.from_url(REDIS_BASE)
    try:
        write_redis_v2_users(r, prefix, V2_USERS)
        with open_store(REDIS_BASE, prefix=prefix) as s:
            assert s.get_users([u.user_id for u in V2_USERS]) == V2_USERS
            assert s.key_census() == V2_CENSUS
            assert s.changes(0, 10) == FeedPage(entries=[], head=0, complete=True)
            sid = s.store_id()
        assert r.get(g + ":schema") == b"3"
        with open_store(REDIS_BASE, prefix=prefix) as again:
            assert again.store_id() == sid
    finally:
        r.close()
        drop_redis_prefix(prefix)
