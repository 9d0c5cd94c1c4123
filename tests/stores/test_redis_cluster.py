"""Redis Cluster specifics: one slot per user, no cross-slot command, crash-safe step order.

The conformance suite already runs on the cluster (backend ``redis-cluster``); these tests add
what only a cluster has: slot placement, error statistics of every primary, the states a
client leaves when it dies between two per-slot steps, and the change feed's outboxes.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from contactmatch.errors import StoreError, StoreUnavailable
from contactmatch.stores import ADAPTERS, Discoverability, KeyCensus, Rekey, open_store
from contactmatch.stores.redis import GROUPS, RedisClusterStore, RedisStore
from tests.services import REDIS_CLUSTER_PORTS, REDIS_HOST, drop_redis_prefix
from tests.stores._helpers import subject, token, user, write_redis_v2_users

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def prefix(redis_cluster: str) -> Iterator[str]:
    """A fresh key prefix on the session's cluster, dropped afterwards."""
    tag = "c" + uuid.uuid4().hex[:12]
    yield tag
    drop_redis_prefix(tag, cluster=True)


@pytest.fixture
def cstore(redis_cluster: str, prefix: str) -> Iterator[RedisClusterStore]:
    s = open_store(f"{redis_cluster}?prefix={prefix}")
    assert isinstance(s, RedisClusterStore)
    yield s
    s.close()


@pytest.fixture
def client() -> Iterator[Any]:
    """A plain redis-py cluster client for looking at the keys."""
    import redis.cluster

    r = redis.cluster.RedisCluster(host=REDIS_HOST, port=REDIS_CLUSTER_PORTS[0])
    yield r
    r.close()


def _keys(client: Any, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match="{" + prefix + ":*", count=1000))


def _everything(client: Any, prefix: str) -> bytes:
    """Every key name and value under the prefix, concatenated."""
    out = b"".join(_keys(client, prefix))
    for k in _keys(client, prefix):
        kind = client.type(k)
        if kind == b"string":
            out += client.get(k)
        elif kind == b"set":
            out += b"".join(client.smembers(k))
        elif kind == b"hash":
            out += b"".join(b for kv in client.hgetall(k).items() for b in kv)
        elif kind == b"zset":
            out += b"".join(client.zrange(k, 0, -1))
        elif kind == b"list":
            out += b"".join(client.lrange(k, 0, -1))
    return out


def _errorstats(client: Any) -> dict[str, str]:
    """``errorstat_*`` lines of every primary (error type -> counts), merged."""
    out: dict[str, str] = {}
    for node in client.get_primaries():
        info = node.redis_connection.info("errorstats")
        out.update({f"{node.port}:{k}": str(v) for k, v in info.items()})
    return out


def test_urls_open_the_cluster_adapter(redis_cluster: str, prefix: str) -> None:
    assert ADAPTERS["redis+cluster"][0].endswith(":RedisClusterStore")
    port = REDIS_CLUSTER_PORTS[1]  # any node will do: the client discovers the others
    for url in (
        f"redis+cluster://{REDIS_HOST}:{port}/?prefix={prefix}",
        f"redis://{REDIS_HOST}:{port}/0?cluster=1&prefix={prefix}",
    ):
        with open_store(url) as s:
            assert type(s) is RedisClusterStore
            assert s.prefix == prefix  # type: ignore[attr-defined]
            s.put_users([user(1)])
            assert s.count_users() == 1
    # without the flag, a plain Redis URL still opens the single-node adapter
    assert not RedisStore.cluster


def test_unreachable_cluster_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        open_store("redis+cluster://127.0.0.1:1/?prefix=x", timeout=0.5)


def test_one_users_keys_share_one_slot(cstore: RedisClusterStore, client: Any, prefix: str) -> None:
    cstore.put_users([user(i) for i in range(50)])
    uid = "u0000007"
    cstore.replace_contacts(uid, [token(100), token(101)], "k1")
    mine = [
        k for k in _keys(client, prefix) if k.split(b"}", 1)[1].startswith(f":u:{uid}".encode())
    ]
    assert len(mine) == 3  # hash, wrapped key, uploads
    group = zlib.crc32(uid.encode()) % GROUPS
    tag = f"{prefix}:s{group}"
    assert all(k.startswith(b"{" + tag.encode() + b"}") for k in mine)
    # the group's outbox counter and census share that slot: one script changes them together
    group_keys = [k for k in _keys(client, prefix) if k.startswith(b"{" + tag.encode() + b"}")]
    assert {tag_key.split(b"}", 1)[1] for tag_key in group_keys} >= {b":n", b":census"}
    slots = {client.keyslot(k) for k in group_keys}
    assert slots == {client.keyslot(tag)}
    # a rate subject's buckets and seen set share a slot of their own
    subj = subject(7)
    cstore.take(subj, "lookup", 1, capacity=5, refill_per_s=1e-3, now=1.0)
    cstore.take(subj, "eval", 1, capacity=5, refill_per_s=1e-3, now=1.0)
    cstore.add_seen(subj, [b"fp-00001"], now=1.0)
    rate = [k for k in _keys(client, prefix) if k.startswith(b"{" + f"{prefix}:r:{subj}".encode())]
    assert len(rate) == 3  # two buckets, one seen set
    assert {client.keyslot(k) for k in rate} == {client.keyslot(f"{prefix}:r:{subj}")}
    # the service-wide keys share one slot too, and the users spread over the cluster
    glob = [k for k in _keys(client, prefix) if k.startswith(b"{" + f"{prefix}:g}}".encode())]
    assert len({client.keyslot(k) for k in glob}) == 1
    groups = {client.keyslot(f"{prefix}:s{g}") for g in range(GROUPS)}
    owners = {client.nodes_manager.get_node_from_slot(s).port for s in groups}
    assert len(owners) == len(REDIS_CLUSTER_PORTS)


def test_workload_never_crosses_slots(cstore: RedisClusterStore, client: Any) -> None:
    for node in client.get_primaries():
        node.redis_connection.config_resetstat()
    s = cstore
    s.put_users([user(i) for i in range(300)])
    s.put_users([user(i, disc=Discoverability.CONTACTS) for i in range(250, 350)])
    assert s.lookup_tokens([token(5), token(999)])[1] is None
    s.set_discoverability({"u0000001": Discoverability.NOBODY}, now=2.0)
    s.rekey_users(
        [
            Rekey(user_id=f"u{i:07d}", old_token=token(i), new_token=token(i, "k2"), key_id="k2")
            for i in range(0, 100, 3)
        ]
        + [
            Rekey(
                user_id=f"u{i:07d}",
                old_token=token(i),
                new_token=token(i, "k2"),
                key_id="k2",
                number_ct=b"ct",
                wrapped_key=b"wk",
            )
            for i in range(1, 100, 3)
        ],
        now=3.0,
    )
    s.replace_contacts("u0000002", [token(i, "c") for i in range(40)], "k1")
    s.replace_contacts("u0000003", [token(i, "c") for i in range(20, 60)], "k2")
    assert s.contact_owners([token(30, "c")]) == [["u0000002", "u0000003"]]
    assert s.purge_contacts("k2") == 40
    s.take(subject(4), "lookup", 1, capacity=5, refill_per_s=1, now=1.0)
    s.count_unseen(subject(4), [b"fp-00001"], now=1.0, ttl=10)
    s.add_seen(subject(4), [b"fp-00001"], now=1.0)
    s.add_seen(subject(5), [b"fp-00001", b"fp-00002"], now=1.0)
    s.reset_seen(subject(4))
    assert s.expire_rate_state(now=100.0, seen_ttl=10) == 2
    s.delete_account("u0000006")
    s.incr_stats({"lookups": 1, "registrations": 2})
    assert s.get_stats() == {"lookups": 1, "registrations": 2}
    s.set_checkpoint("rotate:k2", "u0000099")
    assert len(s.scan_users(None, 1000)) == 349
    # no primary answered any command with an error: no CROSSSLOT, MOVED, NOSCRIPT, ...
    assert _errorstats(client) == {}


# a client that dies between two steps ----------------------------------------------------


class Crash(Exception):
    """Stands in for the client dying: raised just before a chosen step."""


def _crash_before(monkeypatch: pytest.MonkeyPatch, store: RedisClusterStore, marker: str) -> None:
    """Make the store die the first time it is about to run a script containing ``marker``."""
    real = store._eval_many

    def failing(calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        if any(marker in src for src, _, _ in calls):
            monkeypatch.setattr(store, "_eval_many", real)
            raise Crash
        return real(calls)

    monkeypatch.setattr(store, "_eval_many", failing)


def test_crash_before_the_user_hash_leaves_an_unreadable_claim(
    cstore: RedisClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crash_before(monkeypatch, cstore, "HMGET', KEYS[1], 'tok', 'disc', 'cat'")
    with pytest.raises(StoreError):
        cstore.put_users([user(1)])
    # claimed and listed, but no hash (nor wrapped key): reads see no user
    assert cstore.lookup_tokens([token(1)]) == [None]
    assert cstore.get_users(["u0000001"]) == [None]
    # another user may take over the orphaned claim ...
    thief = user(1, uid="other")
    cstore.put_users([thief])
    assert cstore.lookup_tokens([token(1)]) == [thief]
    cstore.delete_account("other")
    # ... and the original call, repeated, converges
    cstore.put_users([user(1)])
    assert cstore.lookup_tokens([token(1)]) == [user(1)]
    assert cstore.scan_users(None, 10) == [user(1)]


def test_crash_before_releasing_the_old_token(
    cstore: RedisClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cstore.put_users([user(1)])
    moved = user(1, salt="new", uid="u0000001")
    _crash_before(monkeypatch, cstore, "redis.call('DEL', KEYS[1]) end")
    with pytest.raises(StoreError):
        cstore.put_users([moved])
    # the old index entry still names the user, but the hash disagrees: it reads as absent
    assert cstore.lookup_tokens([token(1), moved.token]) == [None, moved]
    # and it is no conflict for a newcomer with that token
    cstore.put_users([user(1, uid="newcomer")])
    assert cstore.lookup_tokens([token(1)])[0] == user(1, uid="newcomer")


def test_crash_during_delete_is_finished_by_a_retry(
    cstore: RedisClusterStore, monkeypatch: pytest.MonkeyPatch, client: Any, prefix: str
) -> None:
    cstore.put_users([user(1), user(2)])
    cstore.replace_contacts("u0000001", [token(50)], "k1")
    cstore.add_seen(subject(1), [b"fp-00001"], now=1.0)

    _crash_before(monkeypatch, cstore, "the last step of an erasure")
    with pytest.raises(StoreError):
        cstore.delete_account("u0000001")
    # half-erased: unfindable by token and gone from the id index, but the hash is still there
    assert cstore.lookup_tokens([token(1)]) == [None]
    assert cstore.contact_owners([token(50)]) == [[]]
    assert cstore.scan_users(None, 10) == [user(2)]
    assert cstore.get_users(["u0000001"])[0] is not None
    # ... so the retry finds it and finishes: nothing of the user is left but the feed entries
    cstore.delete_account("u0000001")
    assert b"u0000001" in _everything(client, prefix)
    cstore.compact_feed(before_seq=cstore.feed_head() + 1)
    everything = _everything(client, prefix)
    assert b"u0000001" not in everything
    assert token(1) not in everything
    assert token(1).hex().encode() not in everything
    assert user(1).wrapped_key not in everything
    assert user(1).number_ct not in everything
    assert cstore.count_users() == 1
    assert cstore.key_census().oprf == {"k1": 1}


def test_crash_mid_replace_contacts_never_over_reports(
    cstore: RedisClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cstore.put_users([user(1)])
    _crash_before(monkeypatch, cstore, "return -1")
    with pytest.raises(StoreError):
        cstore.replace_contacts("u0000001", [token(60)], "k1")
    # the owner set already names u0000001, but the upload set does not: not reported
    assert cstore.contact_owners([token(60)]) == [[]]
    cstore.replace_contacts("u0000001", [token(60)], "k1")
    assert cstore.contact_owners([token(60)]) == [["u0000001"]]


@pytest.mark.redis
def test_scan_pages_past_ids_whose_hash_is_gone() -> None:
    """A page of orphaned ids (a delete in flight, a crashed cluster step) does not end a scan."""
    tag = "t" + uuid.uuid4().hex[:12]
    store = open_store(f"redis://{REDIS_HOST}:6379/0?prefix={tag}")
    try:
        assert isinstance(store, RedisStore)
        store.put_users([user(i) for i in range(5)])
        ids = [f"u{i:07d}" for i in range(5)]
        store._r.delete(*(store._ukey(u) for u in ids[:3]))  # ids stay, hashes go
        assert [r.user_id for r in store.scan_users(None, 2)] == ids[3:]
    finally:
        store.close()
        drop_redis_prefix(tag)


# the change feed: outboxes and the pump ------------------------------------------------------


def _crash_in_pump(monkeypatch: pytest.MonkeyPatch, store: RedisClusterStore) -> None:
    """Make the store die the next time it pumps outboxes into the feed."""

    def die(_groups: object) -> None:
        monkeypatch.setattr(store, "_pump", real)
        raise Crash

    real = store._pump
    monkeypatch.setattr(store, "_pump", die)


def test_a_writer_dying_before_the_pump_loses_no_entry(
    cstore: RedisClusterStore, redis_cluster: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cstore.put_users([user(1)])
    _crash_in_pump(monkeypatch, cstore)
    with pytest.raises(StoreError):
        cstore.put_users([user(i) for i in range(2, 40)])
    # the users were changed (and their entries sit in their groups' outboxes) ...
    assert cstore.count_users() == 39
    # ... and any reader numbers them before reading: a follower misses nothing
    with open_store(f"{redis_cluster}?prefix={prefix}") as other:
        page = other.changes(1, 100)
        assert page.complete
        assert sorted(u for _, u in page.entries) == [f"u{i:07d}" for i in range(2, 40)]
        assert [q for q, _ in page.entries] == list(range(2, 40))
    # pumping again (the dead writer's retry, another reader) adds nothing
    assert cstore.feed_head() == 39
    cstore._pump(range(GROUPS))
    assert cstore.feed_head() == 39


def test_a_pump_dying_before_its_trim_is_repeated_harmlessly(
    cstore: RedisClusterStore, monkeypatch: pytest.MonkeyPatch, client: Any, prefix: str
) -> None:
    real = cstore._eval_many

    def no_trim(calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        if any("ZREMRANGEBYSCORE" in src for src, _, _ in calls):
            raise Crash  # numbered into the feed, outbox not trimmed yet
        return real(calls)

    monkeypatch.setattr(cstore, "_eval_many", no_trim)
    with pytest.raises(StoreError):
        cstore.put_users([user(i) for i in range(20)])
    monkeypatch.undo()
    outboxes = [k for k in _keys(client, prefix) if k.endswith(b":ob")]
    assert outboxes  # entries already in the feed are still in their outboxes
    page = cstore.changes(0, 100)  # pumps again: skips what is numbered, trims
    assert sorted(u for _, u in page.entries) == [f"u{i:07d}" for i in range(20)]
    assert page.head == 20
    assert not [k for k in _keys(client, prefix) if k.endswith(b":ob")]


def test_an_old_layout_is_moved_into_slot_groups(
    redis_cluster: str, prefix: str, client: Any
) -> None:
    # Layout v2 kept each user under {P:u:<id>}: write two users that way, open, read them.
    g = "{" + prefix + ":g}"
    users = [user(1, data_key="dk-1"), user(2, key_id="k2")]
    write_redis_v2_users(client, prefix, users)
    client.sadd("{" + prefix + ":u:u0000001}:c", token(9).hex())
    client.hset("{" + prefix + ":u:u0000001}", "ckid", "k1")
    client.sadd("{" + prefix + ":o:" + token(9).hex() + "}", "u0000001")
    with open_store(f"{redis_cluster}?prefix={prefix}") as s:
        assert s.get_users(["u0000001", "u0000002"]) == users
        assert s.lookup_tokens([users[1].token]) == [users[1]]
        assert s.contact_owners([token(9)]) == [["u0000001"]]
        assert s.key_census() == KeyCensus(oprf={"k1": 1, "k2": 1}, data={"dk-1": 1, "": 1})
        assert s.feed_head() == 0
        sid = s.store_id()
        s.delete_account("u0000001")
        assert s.key_census().oprf == {"k2": 1}
    assert client.get(g + ":schema") == b"3"
    assert not [k for k in _keys(client, prefix) if k.startswith(b"{" + f"{prefix}:u:".encode())]
    with open_store(f"{redis_cluster}?prefix={prefix}") as again:
        assert again.store_id() == sid
        assert again.changes(0, 10).entries == [(1, "u0000001")]
