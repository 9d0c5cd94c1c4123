"""Erasure leaves no residue: no row, key or byte of the deleted user in any store.

Each backend gets a "dump everything" view (database and WAL files for SQLite, every row of
every table for PostgreSQL, every key and value for Redis, the pickled state for memory), and
PostgreSQL is also read page by page (``pageinspect``), dead tuples and index entries
included. The needles are first shown to be present, so a dump that sees nothing cannot pass.

The one value derived from a deleted user that a store keeps on purpose is their
number-keyed rate state (a subject like ``n:<hash>``, its buckets and seen set): it survives
the account so that the number inherits its quotas, and goes once it has expired. The change
feed keeps the deleted user's id (never a token, number or ciphertext) until it is compacted,
so that every server process learns of the deletion; the tests compact it the documented way
(``compact_feed`` or the vacuum step) and then find nothing.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contactmatch.atrest import DataKey
from contactmatch.errors import VerificationFailed
from contactmatch.maintenance import vacuum
from contactmatch.stores import BaseStore, Discoverability, UserRecord, open_store
from contactmatch.stores.sqlite import SCRUB_MAX_INTERVAL
from tests.services import BACKENDS, PG_BASE, REDIS_CLUSTER_PORTS, REDIS_HOST, REDIS_PORT
from tests.stores._helpers import subject, token, user

VICTIM = 150
#: How long the SQLite background scrub may take here: its retry interval plus slack for a
#: noisy 2-core machine (a correctness bound, not a benchmark).
SCRUB_DEADLINE = SCRUB_MAX_INTERVAL + 4.0


def dump(store: BaseStore) -> bytes:
    """Everything the store holds, as bytes to search."""
    if store.name == "memory":
        state = {k: v for k, v in vars(store).items() if k not in ("_lock", "_clock")}
        return pickle.dumps(state)
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
            assert len(tables) >= 8
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
            elif kind == b"list":
                out += list(r.lrange(key, 0, -1))
            elif kind == b"none":
                pass  # expired between SCAN and TYPE (a drained bucket)
            else:
                pytest.fail(f"unexpected key type {kind!r}")
    finally:
        r.close()
    return b"\n".join(out)


def needles(u: UserRecord, uploaded: bytes) -> dict[str, bytes]:
    """Every form in which the victim's own data could be stored."""
    return {
        "token": u.token,
        "token hex": u.token.hex().encode(),
        "token prefix": u.token[:8],
        "token prefix hex": u.token[:8].hex().encode(),
        "ciphertext": u.number_ct,
        "ciphertext hex": u.number_ct.hex().encode(),
        "wrapped key": u.wrapped_key,
        "wrapped key hex": u.wrapped_key.hex().encode(),
        "user id": u.user_id.encode(),
        "uploaded contact token hex": uploaded.hex().encode(),
        "uploaded contact token": uploaded,
    }


def _found(blob: bytes, ns: dict[str, bytes]) -> list[str]:
    return [name for name, n in ns.items() if n in blob]


def eventually_clean(read: Callable[[], bytes], ns: dict[str, bytes], within: float) -> float:
    """Seconds until ``read()`` holds none of ``ns``; fails after ``within`` seconds."""
    start = time.monotonic()
    while True:
        left = _found(read(), ns)
        waited = time.monotonic() - start
        if not left:
            return waited
        if waited > within:
            pytest.fail(f"still present after {waited:.1f} s: {left}")
        time.sleep(0.02)


def compact_everything(store: BaseStore) -> int:
    """The compaction a deployment runs once no process needs the entries (here: all)."""
    return store.compact_feed(before_seq=store.feed_head() + 1)


def _victim_setup(store: BaseStore) -> tuple[UserRecord, dict[str, bytes]]:
    store.put_users([user(i) for i in range(300)])
    victim = user(VICTIM)
    secret_upload = token(7, "only-the-victim-has-this")
    store.replace_contacts(victim.user_id, [secret_upload, token(3)], "k1")
    store.replace_contacts("u0000001", [token(3)], "k1")
    ns = needles(victim, secret_upload)
    # Only the PostgreSQL dump renders bytea as hex text; raw forms cannot appear there.
    present = _found(dump(store), ns)
    assert {"user id"} <= set(present)
    assert ("token" in present) or ("token hex" in present)
    assert ("wrapped key" in present) or ("wrapped key hex" in present)
    return victim, ns


def test_delete_account_leaves_no_residue(store: BaseStore) -> None:
    victim, ns = _victim_setup(store)
    store.set_discoverability({victim.user_id: Discoverability.NOBODY}, now=2.0)
    store.delete_account(victim.user_id)
    # the feed names the deleted user (so other processes drop them), and nothing else of them
    page = store.changes(0, 1_000)
    assert page.entries[-1] == (store.feed_head(), victim.user_id)
    assert [u for _, u in page.entries].count(victim.user_id) == 3
    eventually_clean(lambda: dump(store), {k: v for k, v in ns.items() if k != "user id"}, 1.0)
    assert compact_everything(store) == 302
    # SQLite: the WAL is truncated in the background, off the request path
    eventually_clean(lambda: dump(store), ns, SCRUB_DEADLINE)
    # the neighbours are intact
    assert store.count_users() == 299
    assert store.contact_owners([token(3)]) == [["u0000001"]]


def test_the_number_keyed_rate_state_is_all_that_is_left_and_it_expires(store: BaseStore) -> None:
    victim, ns = _victim_setup(store)
    subj = subject(VICTIM)  # what the rate limiter derives from the victim's number
    t = 1_000.0
    # drains in 0.1 s (Redis expires the key in its own clock)
    store.take(subj, "lookup", 10, capacity=10, refill_per_s=100, now=t)
    store.add_seen(subj, [b"seen-fp-1", b"seen-fp-2"], now=t)
    store.delete_account(victim.user_id)
    compact_everything(store)
    eventually_clean(lambda: dump(store), ns, SCRUB_DEADLINE)
    assert subj.encode() in dump(store)  # kept on purpose: the number inherits its quotas
    time.sleep(0.3)
    assert store.expire_rate_state(now=t + 10 * 86_400, seen_ttl=10 * 86_400) >= 2
    eventually_clean(
        lambda: dump(store), {"subject": subj.encode(), "seen": b"seen-fp-1"}, SCRUB_DEADLINE
    )


def test_the_vacuum_step_leaves_no_residue(store_url: str, store: BaseStore) -> None:
    store._clock = lambda: 1.0  # feed entries stamped at t=1
    victim, ns = _victim_setup(store)
    subj = subject(VICTIM)
    store.add_seen(subj, [b"seen-fp-1"], now=1.0)
    store._clock = lambda: 2.0 * 86_400  # a day later
    store.delete_account(victim.user_id)
    store.put_users([user(1_000)])
    # the default retention (24 h before now) keeps the deletion's entry ...
    report = vacuum(store_url, now=2.5 * 86_400, seen_ttl=10 * 86_400)
    if store.name == "memory":  # memory://: vacuum opens (and cleans) a store of its own
        assert report == {"rate_state_expired": 0, "feed_compacted": 0}
        return
    assert report["feed_compacted"] == 300
    assert _found(dump(store), ns) == ["user id"]
    # ... and the next day's run takes it, with the expired rate state
    report = vacuum(store_url, now=1.0 + 11 * 86_400, seen_ttl=10 * 86_400)
    assert report["rate_state_expired"] == 1
    assert report["feed_compacted"] == 2
    assert _found(dump(store), {**ns, "subject": subj.encode()}) == []
    assert store.changes(0, 10).complete is False
    assert store.changes(store.feed_head(), 10).complete is True
    assert store.count_users() == 300


# PostgreSQL: raw pages ------------------------------------------------------------------------


def raw_pages(store: BaseStore, only: str | None = None) -> bytes:
    """Every block of every relation of the store's schema (or of table ``only`` and its
    indexes): heaps, indexes, TOAST tables and their indexes, dead tuples included."""
    import psycopg

    schema = store.schema  # type: ignore[attr-defined]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        tables = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND (%s::text IS NULL OR c.relname = %s)",
            (schema, only, only),
        ).fetchall()
        assert tables
        rels: list[int] = []
        for (oid,) in tables:
            toast = conn.execute("SELECT reltoastrelid FROM pg_class WHERE oid = %s", (oid,))
            toast_oid = toast.fetchone()[0]  # type: ignore[index]
            for heap in [oid] + ([toast_oid] if toast_oid else []):
                rels.append(heap)
                idx = conn.execute("SELECT indexrelid FROM pg_index WHERE indrelid = %s", (heap,))
                rels += [i for (i,) in idx.fetchall()]
        out = []
        for rel in rels:
            name = conn.execute("SELECT %s::regclass::text", (rel,)).fetchone()[0]  # type: ignore[index]
            blocks = conn.execute(
                "SELECT pg_relation_size(%s) / current_setting('block_size')::int", (rel,)
            ).fetchone()[0]  # type: ignore[index]
            for blk in range(int(blocks)):
                page = conn.execute("SELECT public.get_raw_page(%s, %s)", (name, blk))
                out.append(bytes(page.fetchone()[0]))  # type: ignore[index]
        return b"".join(out)


def _sealed_users(dk: DataKey, n: int) -> list[UserRecord]:
    out = []
    for i in range(n):
        uid, tok = f"u{i:07d}", token(i)
        ct, wk = dk.seal_number(f"+98912{i:07d}", uid, tok)
        out.append(
            UserRecord(
                user_id=uid,
                token=tok,
                key_id="k1",
                number_ct=ct,
                wrapped_key=wk,
                discoverability=Discoverability.EVERYONE,
                created_at=1.0,
                updated_at=1.0,
            )
        )
    return out


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_pages_hold_no_byte_after_the_vacuum_step(
    store_url: str, store: BaseStore
) -> None:
    store._clock = lambda: 1.0  # older than the feed's retention
    dk = DataKey.generate("dk1")
    users = _sealed_users(dk, 300)
    store.put_users(users)
    victim = users[VICTIM]
    secret_upload = token(7, "only-the-victim-has-this")
    store.replace_contacts(victim.user_id, [secret_upload, token(3)], "k1")
    store.replace_contacts("u0000001", [token(3)], "k1")
    # re-uploads and a setting change leave older row versions of the victim behind too
    store.replace_contacts(victim.user_id, [secret_upload, token(4)], "k1")
    store.set_discoverability({victim.user_id: Discoverability.NOBODY}, now=2.0)
    ns = needles(victim, secret_upload)
    del ns["token hex"], ns["ciphertext hex"], ns["wrapped key hex"], ns["token prefix hex"]
    del ns["uploaded contact token hex"]
    store.delete_account(victim.user_id)
    # a plain DELETE (and a plain VACUUM) leaves the bytes in dead tuples: the reader sees them
    present = _found(raw_pages(store), ns)
    assert {"token", "ciphertext", "wrapped key", "user id", "uploaded contact token"} <= set(
        present
    )
    # ... and so do the compacted feed entries that named the victim
    assert _found(raw_pages(store, "feed"), {"user id": ns["user id"]}) == ["user id"]
    report = vacuum(store_url)
    assert report["tables_rewritten"] == 7
    assert report["feed_compacted"] == 302
    assert _found(raw_pages(store), ns) == []
    # the neighbours are intact and still open
    assert store.count_users() == 299
    other = store.get_users(["u0000151"])[0]
    assert other is not None
    assert dk.open_number(other.number_ct, other.wrapped_key, other.user_id, other.token)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_residue_is_undecryptable_once_the_key_table_is_rewritten(
    store_url: str, store: BaseStore
) -> None:
    dk = DataKey.generate("dk1")
    users = _sealed_users(dk, 300)
    store.put_users(users)
    victim = users[VICTIM]
    store.delete_account(victim.user_id)
    # PostgreSQL keeps both the ciphertext and the wrapped key in dead tuples (read before
    # any scan: pruning a page may move live tuples over dead ones, but need not)
    assert victim.number_ct in raw_pages(store, "users")
    assert victim.wrapped_key in raw_pages(store, "user_keys")
    # no query returns them any more
    assert store.get_users([victim.user_id]) == [None]
    assert victim.wrapped_key.hex().encode() not in dump(store)
    # the quick step rewrites the narrow key table only ...
    report = vacuum(store_url, keys_only=True)
    assert report["tables_rewritten"] == 1
    assert victim.wrapped_key not in raw_pages(store)
    # ... after which a copy of the ciphertext, wherever it survives (dead tuples of the
    # users table, WAL, backups), opens under no key the store holds
    for r in store.scan_users(None, 1000):
        with pytest.raises(VerificationFailed):
            dk.open_number(victim.number_ct, r.wrapped_key, victim.user_id, victim.token)
    assert len(store.scan_users(None, 1000)) == 299


# SQLite: residue bound without a maintenance step ---------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_plain_delete_leaves_nothing_once_scrubbed(store: BaseStore) -> None:
    # secure_delete zeroes rows; the background truncating checkpoint empties the WAL: no
    # maintenance step is needed for the files to hold none of the user's bytes.
    victim, ns = _victim_setup(store)
    store.delete_account(victim.user_id)
    compact_everything(store)
    eventually_clean(lambda: dump(store), ns, SCRUB_DEADLINE)
    wal = Path(store.path + "-wal")  # type: ignore[attr-defined]
    assert not wal.exists() or wal.stat().st_size == 0


# No memory store here: memory:// is one store per handle.
@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "memory"])
def test_reopened_store_reads_the_survivors(store_url: str, store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.delete_account("u0000001")
    with open_store(store_url) as again:
        assert again.get_users(["u0000001", "u0000002"]) == [None, user(2)]
