"""Parts of ``bench_stores.py``: store bytes per user, and what the change feed costs writers.

Kept apart so that ``bench_stores.py`` stays readable; see its docstring for what is measured.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import progress
from contactmatch.atrest import DataKey
from contactmatch.stores import Discoverability, UserRecord, open_store
from contactmatch.stores.base import BaseStore

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
OPRF_KEY_ID = "oprf-2026-01-k01"  # 16 characters, like a dated key id
DATA_KEY_ID = "dk-2026-01-a0001"


def realistic_records(n: int, seed: int = 3) -> list[UserRecord]:
    """Registrations as the service makes them: 64-byte OPRF tokens, sealed numbers.

    User ids are 10 characters in random order (a messenger's account ids, not a counter),
    numbers are sealed by ``DataKey.seal_number`` (fresh user key per registration), key ids
    are 16 characters, 90% discoverable by everyone.
    """
    rnd = random.Random(seed)
    dk = DataKey.generate(DATA_KEY_ID)
    out = []
    with progress(f"sealing {n:,} numbers", n) as advance:
        for i, x in enumerate(rnd.sample(range(10**9), n)):
            uid, tok = f"u{x:09d}", rnd.randbytes(64)
            ct, wk = dk.seal_number(f"+98912{i:07d}", uid, tok)
            t = 1.7e9 + rnd.random() * 1e7
            out.append(
                UserRecord(
                    user_id=uid,
                    token=tok,
                    key_id=OPRF_KEY_ID,
                    number_ct=ct,
                    wrapped_key=wk,
                    discoverability=Discoverability.EVERYONE
                    if rnd.random() < 0.9
                    else Discoverability.NOBODY,
                    created_at=t,
                    updated_at=t,
                )
            )
            if i % 10_000 == 9_999:
                advance(10_000)
    return out


def _load(store: BaseStore, records: Sequence[UserRecord], label: str) -> None:
    with progress(label, len(records)) as advance:
        for i in range(0, len(records), 10_000):
            batch = records[i : i + 10_000]
            store.put_users(batch)
            advance(len(batch))


# -- bytes per user --------------------------------------------------------------------------


def sqlite_bytes(records: Sequence[UserRecord], workdir: Path) -> list[dict[str, Any]]:
    """File bytes per user after loading, and after compacting the feed and ``VACUUM``."""
    n = len(records)
    path = workdir / f"bytes-{uuid.uuid4().hex[:8]}.db"
    store = open_store(f"sqlite:///{path}")
    rows = []
    try:
        _load(store, records, f"sqlite bytes {n:,}")
        conn: sqlite3.Connection = store._conn  # type: ignore[attr-defined]
        with store._lock:  # type: ignore[attr-defined]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        rows.append(_sqlite_row(conn, path, n, "loaded (feed: 1 entry/user)"))
        store.compact_feed(before_seq=store.feed_head() + 1)
        store.vacuum()
        rows.append(_sqlite_row(conn, path, n, "feed compacted + VACUUM"))
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rows


def _sqlite_row(conn: sqlite3.Connection, path: Path, n: int, phase: str) -> dict[str, Any]:
    names = {"users": "users table", "user_keys": "user_keys table", "feed": "feed table"}
    for idx in (r[1] for r in conn.execute("PRAGMA index_list(users)")):
        col = conn.execute(f"PRAGMA index_info({idx})").fetchone()[2]
        names[idx] = {"user_id": "user id index", "token": "token index"}.get(col, idx)
    parts = _split(
        (names.get(name, OTHER), size)
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
    )
    avg = conn.execute(
        "SELECT avg(length(user_id)), avg(length(token)), avg(length(number_ct)) FROM users"
    ).fetchone()
    wk = conn.execute("SELECT avg(length(wrapped)) FROM user_keys").fetchone()[0]
    return {
        "store": "sqlite file",
        "registered": n,
        "phase": phase,
        "bytes/user": path.stat().st_size / n,
        **{k: v / n for k, v in parts.items()},
        "columns": (
            f"user_id {avg[0]:.0f}, token {avg[1]:.0f}, number_ct {avg[2]:.0f}, "
            f"wrapped {wk:.0f}, kid 1, disc 0-1, created_at 8, updated_at 0 (NULL)"
        ),
    }


OTHER = "other"
PARTS = (
    "users table",
    "user id index",
    "token index",
    "user_keys table",
    "user_keys index",
    "feed table",
    "feed index",
    OTHER,
)


def _split(sizes: Iterator[tuple[str, int]]) -> dict[str, float]:
    """Bytes per part, in the fixed order of :data:`PARTS` (absent parts are 0)."""
    out = dict.fromkeys(PARTS, 0.0)
    for part, size in sizes:
        out[part] += size
    return out


def postgres_bytes(records: Sequence[UserRecord]) -> list[dict[str, Any]]:
    """Schema bytes per user (every relation: heaps, TOAST, indexes), loaded and rewritten."""
    import psycopg

    n = len(records)
    schema = "bytes" + uuid.uuid4().hex[:8]
    store = open_store(PG_BASE, schema=schema)
    rows = []
    try:
        _load(store, records, f"postgres bytes {n:,}")
        with psycopg.connect(PG_BASE, options=f"-c search_path={schema}", autocommit=True) as c:
            c.execute("VACUUM (ANALYZE) users, user_keys, feed")  # what autovacuum would do
            rows.append(_pg_row(c, schema, n, "loaded (feed: 1 entry/user)"))
            store.compact_feed(before_seq=store.feed_head() + 1)
            store.vacuum()
            rows.append(_pg_row(c, schema, n, "feed compacted + VACUUM FULL"))
    finally:
        store.close()
        with psycopg.connect(PG_BASE, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return rows


def _pg_row(conn: Any, schema: str, n: int, phase: str) -> dict[str, Any]:
    rels = conn.execute(
        "SELECT c.relname, pg_relation_size(c.oid) "
        "+ coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) "
        "FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
        "WHERE s.nspname = %s AND c.relkind IN ('r', 'i')",
        (schema,),
    ).fetchall()
    names = {
        "users": "users table",
        "users_pkey": "user id index",
        "users_token_key": "token index",
        "user_keys": "user_keys table",
        "user_keys_pkey": "user_keys index",
        "feed": "feed table",
        "feed_pkey": "feed index",
    }
    parts = _split((names.get(name, OTHER), int(size)) for name, size in rels)
    cols = conn.execute(
        "SELECT avg(pg_column_size(user_id)), avg(pg_column_size(token)), "
        "avg(pg_column_size(number_ct)), avg(pg_column_size(u.*)) FROM users u"
    ).fetchone()
    wk = conn.execute("SELECT avg(pg_column_size(wrapped)) FROM user_keys").fetchone()[0]
    return {
        "store": "postgresql schema",
        "registered": n,
        "phase": phase,
        "bytes/user": sum(parts.values()) / n,
        **{k: v / n for k, v in parts.items()},
        "columns": (
            f"row {float(cols[3]):.0f} (+ 24 tuple header + 4 line pointer): user_id "
            f"{float(cols[0]):.0f}, token {float(cols[1]):.0f}, number_ct {float(cols[2]):.0f}, "
            f"created_at 8, updated_at 0 (NULL), kid 2, disc 2; user_keys.wrapped "
            f"{float(wk):.0f}"
        ),
    }


# -- what the feed costs writers --------------------------------------------------------------


@contextmanager
def _variant(store: BaseStore, name: str) -> Iterator[None]:
    """Switch the feed (and the census) off on this handle for a comparison run."""
    if name == "shipped":
        yield
        return
    if name == "no feed" and store.name == "postgresql":
        from contactmatch.stores.postgres import MOVE_CENSUS

        def census_only(cur: Any, _ids: object, census: Any = None) -> None:
            if census:
                keys = sorted(census)
                cur.execute(
                    MOVE_CENSUS,
                    ([k for k, _ in keys], [i for _, i in keys], [census[k] for k in keys]),
                )

        store._log = census_only  # type: ignore[attr-defined]
    else:
        store._log = lambda *_a: None  # type: ignore[attr-defined]
    no_count = name == "no feed, no census" and store.name == "sqlite"
    if no_count:  # SQLite counts the census beside the rows, not in _log
        store._count = lambda *_a: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del store._log  # type: ignore[attr-defined]
        if no_count:
            del store._count  # type: ignore[attr-defined]


def _open(backend: str, workdir: Path) -> tuple[BaseStore, Callable[[], None]]:
    tag = "cost" + uuid.uuid4().hex[:8]
    if backend == "sqlite":
        path = workdir / f"{tag}.db"
        store = open_store(f"sqlite:///{path}")

        def drop() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        return store, drop
    store = open_store(PG_BASE, schema=tag)

    def drop_schema() -> None:
        import psycopg

        with psycopg.connect(PG_BASE, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')

    return store, drop_schema


def feed_cost(
    backend: str, records: Sequence[UserRecord], singles: int, repeat: int, workdir: Path
) -> list[dict[str, Any]]:
    """Registrations/s with and without the feed: bulk batches, and single users from 4 threads."""
    variants = ["shipped", "no feed", "no feed, no census"]
    best: dict[tuple[str, str], float] = {}
    for rep in range(repeat):
        for name in variants if rep % 2 == 0 else variants[::-1]:
            store, drop = _open(backend, workdir)
            try:
                with _variant(store, name):
                    t0 = time.perf_counter()
                    for i in range(0, len(records), 10_000):
                        store.put_users(records[i : i + 10_000])
                    bulk = len(records) / (time.perf_counter() - t0)
                    single = _threads(store, records, singles)
                for key, value in (("bulk", bulk), ("single", single)):
                    best[(name, key)] = max(best.get((name, key), 0.0), value)
            finally:
                store.close()
                drop()
    base_bulk, base_single = (
        best[("no feed, no census", "bulk")],
        best[("no feed, no census", "single")],
    )
    return [
        {
            "store": backend,
            "variant": name,
            "bulk rows/s (10,000 per call)": best[(name, "bulk")],
            "vs no feed/census (bulk)": best[(name, "bulk")] / base_bulk,
            "single-user calls/s (4 threads)": best[(name, "single")],
            "vs no feed/census (single)": best[(name, "single")] / base_single,
        }
        for name in variants
    ]


def _threads(store: BaseStore, records: Sequence[UserRecord], singles: int) -> float:
    """Re-register ``singles`` users one per call from 4 threads (each call a transaction)."""
    todo = [records[i] for i in range(singles)]
    fresh = [
        UserRecord(
            user_id=f"s{i:09d}",
            token=bytes(reversed(r.token)),
            key_id=r.key_id,
            number_ct=r.number_ct,
            wrapped_key=r.wrapped_key,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for i, r in enumerate(todo)
    ]
    parts = [fresh[k::4] for k in range(4)]
    barrier = threading.Barrier(4)

    def run(part: list[UserRecord]) -> None:
        barrier.wait()
        for u in part:
            store.put_users([u])

    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(fresh) / (time.perf_counter() - t0)
