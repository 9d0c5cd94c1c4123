"""Opening stores by URL: lazy adapters, missing extras, unreachable servers, schema versions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contactmatch.errors import (
    InvalidInput,
    MissingDependency,
    SchemaVersionError,
    StoreUnavailable,
)
from contactmatch.stores import ADAPTERS, open_store
from contactmatch.stores.memory import MemoryStore
from contactmatch.stores.sqlite import SQLiteStore, path_from_url
from tests.services import PG_BASE, REDIS_BASE, drop_redis_prefix
from tests.stores._helpers import user


def test_importing_the_library_imports_no_driver() -> None:
    code = (
        "import sys, contactmatch, contactmatch.stores;"
        "from contactmatch.stores import open_store; open_store('memory://');"
        "bad = [m for m in ('psycopg', 'psycopg_pool', 'redis') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://localhost/x", "psycopg", "postgres"),
        ("redis://localhost:6379/0", "redis", "redis"),
    ],
)
def test_missing_extra_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingDependency) as info:
        open_store(url)
    assert f"pip install 'contactmatch[{extra}]'" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_unknown_scheme() -> None:
    with pytest.raises(InvalidInput, match="unsupported store URL scheme 'mysql'"):
        open_store("mysql://localhost/x")


class _Single:
    """Stands in for the single-Redis adapter: records the URL it was opened with."""

    def __init__(self, url: str, **options: object) -> None:
        self.url = url


class _Cluster(_Single):
    """Stands in for the cluster adapter."""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:1/0?cluster=1&prefix=p", _Cluster),
        ("redis://h:1/0?cluster=yes", _Cluster),
        ("rediss://h:1/0?cluster=true", _Cluster),
        ("redis+cluster://h:1/?prefix=p", _Cluster),
        ("rediss+cluster://h:1/", _Cluster),
        ("redis://h:1/0?cluster=0", _Single),
        ("redis://h:1/0?prefix=p", _Single),
    ],
)
def test_open_store_routes_cluster_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: type[_Single]
) -> None:
    # open_store's table picks the adapter, ``?cluster=1`` included; no adapter class swaps
    # itself for another in its constructor.
    for key in ("redis", "rediss"):
        monkeypatch.setitem(ADAPTERS, key, (f"{__name__}:_Single", None, None))
    for key in ("redis+cluster", "rediss+cluster"):
        monkeypatch.setitem(ADAPTERS, key, (f"{__name__}:_Cluster", None, None))
    store: Any = open_store(url)
    assert type(store) is expected
    assert store.url == url


def test_single_redis_class_refuses_a_cluster_url() -> None:
    from contactmatch.stores.redis import RedisStore

    # Refused before connecting: one node of a cluster is not a whole Redis.
    with pytest.raises(InvalidInput, match="RedisClusterStore"):
        RedisStore("redis://127.0.0.1:1/0?cluster=1")


def test_memory_and_default_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    monkeypatch.chdir(tmp_path)
    with open_store() as s:
        assert isinstance(s, SQLiteStore)
    assert (tmp_path / "contactmatch.db").exists()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///rel/x.db", "rel/x.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_url_paths(url: str, path: str) -> None:
    assert path_from_url(url) == path


def test_sqlite_url_with_host_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        path_from_url("sqlite://host/x.db")


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/p.db") as s:
        conn = s._conn  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    with open_store(f"sqlite:///{db}") as s:
        s.put_users([user(1)])
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaVersionError):
        open_store(f"sqlite:///{db}")


def test_sqlite_reopen_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/keep.db"
    with open_store(url) as s:
        s.put_users([user(1)])
    with open_store(url) as s:
        assert s.get_users(["u0000001"]) == [user(1)]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/test",
        "redis://127.0.0.1:1/0",
    ],
)
def test_unreachable_server_is_store_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable) as info:
        open_store(url, timeout=1.0)
    assert info.value.__cause__ is not None


def test_postgres_bad_schema_name() -> None:
    with pytest.raises(InvalidInput):
        open_store(f"{PG_BASE}?schema=Robert'); DROP TABLE users;--")


@pytest.mark.postgres
def test_postgres_schema_option_and_versions(pg_schema: str) -> None:
    import psycopg

    with open_store(PG_BASE, schema=pg_schema) as s:
        s.put_users([user(1)])
    with open_store(f"{PG_BASE}?schema={pg_schema}") as s:  # migrations are idempotent
        assert s.count_users() == 1
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"UPDATE {pg_schema}.cm_meta SET value = '99'")
    with pytest.raises(SchemaVersionError):
        open_store(PG_BASE, schema=pg_schema)


@pytest.mark.postgres
def test_postgres_conflict_does_not_chain_the_token(pg_schema: str) -> None:
    from contactmatch.errors import Conflict

    with open_store(PG_BASE, schema=pg_schema) as s:
        s.put_users([user(1)])
        s.put_users([user(2)])
        clash = user(1).__class__(
            user_id="u0000002",
            token=user(1).token,
            key_id="k1",
            number_ct=b"x",
            wrapped_key=b"w",
            created_at=1.0,
            updated_at=1.0,
        )
        with pytest.raises(Conflict) as info:
            s.put_users([clash])
        text = str(info.value) + repr(info.value.__cause__) + repr(info.value.__context__)
        assert user(1).token.hex() not in text


@pytest.mark.redis
def test_redis_prefix_isolation_and_versions() -> None:
    import redis

    drop_redis_prefix("t_open_a")
    drop_redis_prefix("t_open_b")
    try:
        with (
            open_store(f"{REDIS_BASE}?prefix=t_open_a") as a,
            open_store(REDIS_BASE, prefix="t_open_b") as b,
        ):
            a.put_users([user(1)])
            assert b.count_users() == 0
            assert a.count_users() == 1
        r = redis.Redis.from_url(REDIS_BASE)
        r.set("{t_open_a:g}:schema", 99)
        r.close()
        with pytest.raises(SchemaVersionError):
            open_store(REDIS_BASE, prefix="t_open_a")
    finally:
        drop_redis_prefix("t_open_a")
        drop_redis_prefix("t_open_b")


def test_redis_prefix_must_not_break_hash_tags() -> None:
    with pytest.raises(InvalidInput):
        open_store(f"{REDIS_BASE}?prefix=a{{b}}")
