"""Erasure leaves no residue: no row, key or byte of the deleted user in any store.

Each backend gets a "dump everything" view (database files for SQLite, every row of every table
for PostgreSQL, every key and value for Redis, the pickled state for memory). The needles are
first shown to be present, so a dump that sees nothing cannot pass.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from contactmatch.stores import BaseStore, fingerprint
from contactmatch.stores.base import UserRecord
from tests.services import PG_BASE, REDIS_CLUSTER_PORTS, REDIS_HOST, REDIS_PORT
from tests.stores._helpers import token, user

VICTIM = 150


def dump(store: BaseStore) -> bytes:
    """Everything the store holds, as bytes to search."""
    if store.name == "memory":
        return pickle.dumps({k: v for k, v in vars(store).items() if k != "_lock"})
    if store.name == "sqlite":
        path = Path(store.path)  # type: ignore[attr-defined]
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    if store.name == "postgresql":
        import psycopg

        out = []
        with psycopg.connect(PG_BASE) as conn:
            schema = store.schema  # type: ignore[attr-defined]
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            ).fetchall()
            assert len(tables) >= 9
            for (t,) in tables:
                rows = conn.execute(f'SELECT x::text FROM "{schema}"."{t}" x').fetchall()
                out += [r[0].encode() for r in rows]
        return b"\n".join(out)
    import redis
    import redis.cluster

    r: Any = (
        redis.cluster.RedisCluster(host=REDIS_HOST, port=REDIS_CLUSTER_PORTS[0])
        if getattr(store, "cluster", False)
        else redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    )
    out = []
    try:
        prefix = store.prefix  # type: ignore[attr-defined]
        for key in r.scan_iter(match="{" + prefix + ":*", count=1000):
            out.append(key)
            kind = r.type(key)
            if kind == b"string":
                out.append(r.get(key) or b"")
            elif kind == b"hash":
                out += [b for kv in r.hgetall(key).items() for b in kv]
            elif kind == b"set":
                out += list(r.smembers(key))
            elif kind == b"zset":
                out += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
            else:
                pytest.fail(f"unexpected key type {kind!r}")
    finally:
        r.close()
    return b"\n".join(out)


def needles(u: UserRecord, uploaded: bytes) -> dict[str, bytes]:
    """Every form in which the victim's data could be stored."""
    return {
        "token": u.token,
        "token hex": u.token.hex().encode(),
        "ciphertext": u.number_ct,
        "ciphertext hex": u.number_ct.hex().encode(),
        "user id": u.user_id.encode(),
        "uploaded contact token hex": uploaded.hex().encode(),
        "uploaded contact token": uploaded,
    }


def _found(blob: bytes, ns: dict[str, bytes]) -> list[str]:
    return [name for name, n in ns.items() if n in blob]


def test_delete_account_leaves_no_residue(store: BaseStore) -> None:
    store.put_users([user(i) for i in range(300)])
    store.put_filter(1, "k1", b"f1", now=1.0)
    victim = user(VICTIM)
    secret_upload = token(7, "only-the-victim-has-this")
    store.replace_contacts(victim.user_id, [secret_upload, token(3)], "k1")
    store.replace_contacts("u0000001", [token(3)], "k1")
    store.take(victim.user_id, "lookup", 1, capacity=5, refill_per_s=1, now=1.0)
    store.add_seen(victim.user_id, [b"seen-fp-1"])
    ns = needles(victim, secret_upload)
    # Only the PostgreSQL dump renders bytea as hex text; raw forms cannot appear there.
    present = _found(dump(store), ns)
    assert {"user id"} <= set(present)
    assert ("token" in present) or ("token hex" in present)

    store.delete_account(victim.user_id)
    assert _found(dump(store), ns) == []
    # the neighbours are intact
    assert store.count_users() == 299
    assert store.contact_owners([token(3)]) == [["u0000001"]]


def test_compaction_drops_the_removal_fingerprint(store: BaseStore) -> None:
    store.put_users([user(i) for i in range(20)])
    store.put_filter(1, "k1", b"f1", now=1.0)
    store.delete_account(user(5).user_id)
    store.put_filter(2, "k1", b"f2", now=2.0)
    fp = fingerprint(token(5))
    d = store.filter_delta(1)
    assert d is not None
    assert d.removed == [fp]  # kept until compaction, so clients at v1 can drop it
    before = dump(store)
    assert fp in before or fp.hex().encode() in before
    store.compact_filters(2)
    after = dump(store)
    assert fp not in after
    assert fp.hex().encode() not in after
