"""Every protocol method, on every adapter, with the same expectations."""

from __future__ import annotations

import importlib
import inspect
import math
import time
from dataclasses import replace
from typing import Any

import pytest

from contactmatch.errors import Conflict, InvalidInput, UnknownUser
from contactmatch.stores import (
    ADAPTERS,
    BaseStore,
    ContactStore,
    Discoverability,
    FeedStore,
    QuotaStore,
    RegistryStore,
    Rekey,
    StatsStore,
    TakeResult,
    UserStore,
)
from tests.services import PG_BASE
from tests.stores._helpers import subject, token, user

EVERYONE, CONTACTS, NOBODY = (
    Discoverability.EVERYONE,
    Discoverability.CONTACTS,
    Discoverability.NOBODY,
)


# the template ------------------------------------------------------------------------------
# That every adapter is a full RegistryStore is proved statically (mypy, in
# contactmatch.stores); these check what the ABC adds at run time.

ROLE_METHODS = sorted(
    {
        name
        for role in (UserStore, ContactStore, QuotaStore, StatsStore, FeedStore, RegistryStore)
        for name in vars(role)
        if not name.startswith("_")
    }
    | {"vacuum"}
)


def test_every_public_method_has_an_abstract_driver_method() -> None:
    # confirm_tokens alone has a default: built on _lookup_tokens, right for every adapter.
    missing = [
        m
        for m in ROLE_METHODS
        if m != "confirm_tokens" and f"_{m}" not in BaseStore.__abstractmethods__
    ]
    assert missing == []
    assert "_confirm_tokens" not in BaseStore.__abstractmethods__
    with pytest.raises(TypeError, match="abstract"):
        BaseStore()  # type: ignore[abstract]


@pytest.mark.parametrize("scheme", sorted(ADAPTERS))
def test_every_adapter_class_is_concrete(scheme: str) -> None:
    target, _extra, driver = ADAPTERS[scheme]
    if driver is not None:
        pytest.importorskip(driver)
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseStore)
    assert not inspect.isabstract(cls), sorted(cls.__abstractmethods__)


# users ------------------------------------------------------------------------------------


def test_put_and_get_users_aligned(store: BaseStore) -> None:
    a, b = user(1), user(2, disc=CONTACTS)
    store.put_users([a, b])
    assert store.get_users(["u0000002", "nobody", "u0000001"]) == [b, None, a]
    assert store.get_users([]) == []
    assert store.count_users() == 2


def test_upsert_keeps_created_at_and_moves_token(store: BaseStore) -> None:
    store.put_users([user(1, now=10.0)])
    moved = replace(user(1, salt="new", now=20.0), user_id="u0000001")
    store.put_users([moved])
    got = store.get_users(["u0000001"])[0]
    assert got is not None
    assert got.token == moved.token
    assert got.created_at == 10.0
    assert got.updated_at == 20.0
    assert got.number_ct == moved.number_ct
    assert store.lookup_tokens([token(1), moved.token]) == [None, got]
    assert store.count_users() == 1


def test_confirm_tokens_is_lookup_without_the_number(store: BaseStore) -> None:
    users = [user(1), user(2, disc=CONTACTS), user(3, disc=NOBODY)]
    store.put_users(users)
    probe = [token(3), b"\x00" * 32, token(1), token(2)]
    got = store.confirm_tokens(probe)
    want = [
        None if r is None else (r.user_id, r.token, r.key_id, r.discoverability)
        for r in store.lookup_tokens(probe)
    ]
    assert [None if h is None else tuple(h) for h in got] == want
    assert got[1] is None
    assert got[0] is not None
    assert got[0].discoverability is NOBODY
    assert token(1).hex() not in repr(got[2])
    assert store.confirm_tokens([]) == []
    with pytest.raises(InvalidInput):
        store.confirm_tokens([b"short"])


def test_lookup_tokens_aligned(store: BaseStore) -> None:
    users = [user(i) for i in range(5)]
    store.put_users(users)
    got = store.lookup_tokens([token(3), token(99), token(0), token(3)])
    assert got == [users[3], None, users[0], users[3]]
    assert store.lookup_tokens([]) == []


def test_token_of_another_user_conflicts_and_changes_nothing(store: BaseStore) -> None:
    store.put_users([user(1)])
    thief = replace(user(1), user_id="thief")
    with pytest.raises(Conflict) as info:
        store.put_users([user(2), thief])
    assert token(1).hex() not in str(info.value)
    assert store.get_users(["u0000002", "thief"]) == [None, None]
    assert store.lookup_tokens([token(1)])[0] == user(1)


def test_set_discoverability(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.set_discoverability({"u0000001": NOBODY, "u0000002": "contacts"}, now=50.0)  # type: ignore[dict-item]
    a, b = store.get_users(["u0000001", "u0000002"])
    assert a is not None
    assert b is not None
    assert (a.discoverability, b.discoverability) == (NOBODY, CONTACTS)
    assert a.updated_at == 50.0


def test_set_discoverability_unknown_user_is_all_or_nothing(store: BaseStore) -> None:
    store.put_users([user(1)])
    with pytest.raises(UnknownUser):
        store.set_discoverability({"u0000001": NOBODY, "ghost": NOBODY}, now=5.0)
    got = store.get_users(["u0000001"])[0]
    assert got is not None
    assert got.discoverability is EVERYONE


def test_rekey_users(store: BaseStore) -> None:
    store.put_users([user(1), user(2), user(3)])
    updates = [
        Rekey(user_id="u0000001", old_token=token(1), new_token=token(1, "k2"), key_id="k2"),
        # stale: the stored token is not this one any more, so it must be skipped
        Rekey(user_id="u0000002", old_token=token(9), new_token=token(2, "k2"), key_id="k2"),
        Rekey(
            user_id="u0000003",
            old_token=token(3),
            new_token=token(3, "k2"),
            key_id="k2",
            number_ct=b"new-ct",
            wrapped_key=b"new-wk",
        ),
        Rekey(user_id="ghost", old_token=token(4), new_token=token(4, "k2"), key_id="k2"),
        # stale, with a new seal: neither the number nor the key may change
        Rekey(
            user_id="u0000004",
            old_token=token(9),
            new_token=token(5, "k2"),
            key_id="k2",
            number_ct=b"stale-ct",
            wrapped_key=b"stale-wk",
        ),
    ]
    store.put_users([user(4)])
    assert store.rekey_users(updates, now=77.0) == 2
    a, b, c, d = store.get_users(["u0000001", "u0000002", "u0000003", "u0000004"])
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.token, a.key_id, a.number_ct) == (token(1, "k2"), "k2", user(1).number_ct)
    assert a.wrapped_key == user(1).wrapped_key
    assert (b.token, b.key_id) == (token(2), "k1")
    assert (c.token, c.number_ct, c.updated_at) == (token(3, "k2"), b"new-ct", 77.0)
    assert c.wrapped_key == b"new-wk"
    assert d == user(4)
    assert store.lookup_tokens([token(1), token(1, "k2")]) == [None, a]


def test_rekey_to_a_token_held_by_another_user_conflicts(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    clash = Rekey(user_id="u0000001", old_token=token(1), new_token=token(2), key_id="k2")
    with pytest.raises(Conflict):
        store.rekey_users([clash], now=1.0)
    got = store.get_users(["u0000001"])[0]
    assert got is not None
    assert got.token == token(1)


def test_scan_users_pages_in_order(store: BaseStore) -> None:
    ids = [f"user-{c}" for c in "qwertyuiopasdfgh"]
    store.put_users([user(i, uid=u) for i, u in enumerate(ids)])
    seen: list[str] = []
    after = None
    while page := store.scan_users(after, 5):
        assert len(page) <= 5
        seen += [u.user_id for u in page]
        after = page[-1].user_id
    assert seen == sorted(ids)


def test_delete_account_removes_account_state(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.replace_contacts("u0000001", [token(50), token(2)], "k1")
    store.replace_contacts("u0000002", [token(50)], "k1")
    store.delete_account("u0000001")
    assert store.get_users(["u0000001"]) == [None]
    assert store.lookup_tokens([token(1)]) == [None]
    assert store.contact_owners([token(50), token(2)]) == [["u0000002"], []]
    assert store.count_users() == 1
    assert store.scan_users(None, 10) == [user(2)]
    with pytest.raises(UnknownUser):
        store.delete_account("u0000001")
    # the same id registers afresh, with its own (new) wrapped key
    again = user(1, salt="again")
    store.put_users([again])
    assert store.get_users(["u0000001"]) == [again]


def test_rate_state_survives_delete_account(store: BaseStore) -> None:
    # Quotas are keyed by the number's subject, not the account: deleting the account and
    # registering the number again must not hand out a fresh quota.
    number = subject(1)
    store.put_users([user(1)])
    assert store.take(number, "lookup", 5, capacity=5, refill_per_s=1e-6, now=1.0).allowed
    assert store.add_seen(number, [b"fp-00001", b"fp-00002"], now=1.0) == 2
    store.delete_account("u0000001")
    store.put_users([user(1, uid="re-registered")])
    assert not store.take(number, "lookup", 1, capacity=5, refill_per_s=1e-6, now=2.0).allowed
    assert store.count_unseen(number, [b"fp-00001", b"fp-00002"], now=2.0, ttl=100) == 0
    assert store.add_seen(number, [b"fp-00001", b"fp-00002"], now=2.0) == 0


# contacts ---------------------------------------------------------------------------------


def test_replace_contacts_and_owners(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.replace_contacts("u0000001", [token(10), token(11), token(10)], "k1")
    store.replace_contacts("u0000002", [token(11)], "k1")
    assert store.contact_owners([token(11), token(10), token(12)]) == [
        ["u0000001", "u0000002"],
        ["u0000001"],
        [],
    ]
    store.replace_contacts("u0000001", [token(12)], "k1")
    assert store.contact_owners([token(10), token(11), token(12)]) == [
        [],
        ["u0000002"],
        ["u0000001"],
    ]
    store.replace_contacts("u0000001", [], "k1")
    assert store.contact_owners([token(12)]) == [[]]
    assert store.contact_owners([]) == []


def test_replace_contacts_unknown_owner(store: BaseStore) -> None:
    with pytest.raises(UnknownUser):
        store.replace_contacts("ghost", [token(1)], "k1")


def test_purge_contacts_keeps_current_key(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.replace_contacts("u0000001", [token(10), token(11)], "old")
    store.replace_contacts("u0000002", [token(10)], "new")
    assert store.purge_contacts("new") == 2
    assert store.contact_owners([token(10), token(11)]) == [["u0000002"], []]
    assert store.purge_contacts("new") == 0


# rate limits ------------------------------------------------------------------------------


def test_subjects_are_namespaced(store: BaseStore) -> None:
    # A user id cannot contain ':', so "g:eval" and "n:<hash>" never meet an account's id.
    for subj in ("g:eval", subject(1), "g", "u0000001"):
        assert store.take(subj, "q", 10, capacity=10, refill_per_s=1e-6, now=1.0).allowed
        assert store.add_seen(subj, [b"fp-00001"], now=1.0) == 1
    assert not store.take("g:eval", "q", 1, capacity=10, refill_per_s=1e-6, now=1.0).allowed
    assert store.take("g:other", "q", 1, capacity=10, refill_per_s=1e-6, now=1.0).allowed


def test_take_is_a_leaky_bucket(store: BaseStore) -> None:
    def take(cost: float, now: float) -> TakeResult:
        return store.take("u1", "lookup", cost, capacity=10, refill_per_s=2, now=now)

    assert take(6, 100.0) == (True, 0.0)
    assert take(4, 100.0) == (True, 0.0)
    denied = take(3, 100.0)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(1.5)
    assert take(3, 101.5).allowed  # drained 3 in 1.5 s
    assert take(20, 200.0) == (False, math.inf)  # can never fit
    # other quotas and subjects have their own buckets
    assert store.take("u1", "upload", 10, capacity=10, refill_per_s=1, now=100.0).allowed
    assert store.take("u2", "lookup", 10, capacity=10, refill_per_s=1, now=100.0).allowed


def test_take_tolerates_clock_going_back(store: BaseStore) -> None:
    assert store.take("u1", "q", 10, capacity=10, refill_per_s=1, now=100.0).allowed
    late = store.take("u1", "q", 1, capacity=10, refill_per_s=1, now=90.0)
    assert not late.allowed
    assert late.retry_after == pytest.approx(1.0)


def test_count_unseen_does_not_remember(store: BaseStore) -> None:
    fps = [b"aaaaaaaa", b"bbbbbbbb", b"aaaaaaaa", b"cccccccc"]
    day = 86_400.0
    assert store.count_unseen("n:1", fps, now=1.0, ttl=day) == 3
    assert store.count_unseen("n:1", fps, now=1.0, ttl=day) == 3
    store.add_seen("n:1", [b"bbbbbbbb"], now=1.0)
    assert store.count_unseen("n:1", fps, now=1.0, ttl=day) == 2
    assert store.count_unseen("n:2", fps, now=1.0, ttl=day) == 3
    assert store.count_unseen("n:1", [], now=1.0, ttl=day) == 0
    many = [i.to_bytes(8, "big") for i in range(1_200)]  # more than one SQL chunk
    store.add_seen("n:3", many[::2], now=1.0)
    assert store.count_unseen("n:3", many, now=1.0, ttl=day) == 600


def test_seen_set_counts_new_only(store: BaseStore) -> None:
    assert store.add_seen("n:1", [b"aaaaaaaa", b"bbbbbbbb", b"aaaaaaaa"], now=1.0) == 2
    assert store.add_seen("n:1", [b"bbbbbbbb", b"cccccccc"], now=1.0) == 1
    assert store.add_seen("n:2", [b"bbbbbbbb"], now=1.0) == 1
    assert store.add_seen("n:1", [], now=1.0) == 0
    store.reset_seen("n:1")
    assert store.add_seen("n:1", [b"aaaaaaaa"], now=1.0) == 1
    many = [i.to_bytes(8, "big") for i in range(2_500)]  # more than one Lua unpack chunk
    assert store.add_seen("n:4", many, now=1.0) == 2_500
    assert store.add_seen("n:4", many, now=2.0) == 0
    assert store.count_unseen("n:4", many, now=100.0, ttl=98.5) == 0  # all refreshed to 2.0


def test_seen_entries_expire_after_ttl(store: BaseStore) -> None:
    a, b, c = b"aaaaaaaa", b"bbbbbbbb", b"cccccccc"
    assert store.add_seen("n:1", [a, b], now=100.0) == 2
    assert store.add_seen("n:1", [b], now=150.0) == 0  # refreshes b
    assert store.add_seen("n:1", [a], now=90.0) == 0  # a clock going back never ages an entry
    assert store.count_unseen("n:1", [a, b, c], now=199.0, ttl=100) == 1  # only c
    # an entry last added ttl or more seconds ago counts as unseen, swept or not
    assert store.count_unseen("n:1", [a, b, c], now=200.0, ttl=100) == 2  # a and c
    assert store.expire_rate_state(now=200.0, seen_ttl=100) == 1  # a goes, b stays
    assert store.count_unseen("n:1", [b], now=200.0, ttl=100) == 0
    assert store.add_seen("n:1", [a], now=200.0) == 1  # new again
    assert store.expire_rate_state(now=200.0, seen_ttl=100) == 0
    assert store.expire_rate_state(now=1_000.0, seen_ttl=100) == 2
    assert store.count_unseen("n:1", [a, b], now=1_000.0, ttl=1e9) == 2
    assert seen_exists(store, "n:1") is False
    # an expired entry not yet swept is still "in" the set for add_seen's count
    store.add_seen("n:2", [a], now=1.0)
    assert store.count_unseen("n:2", [a], now=10.0, ttl=5) == 1
    assert store.add_seen("n:2", [a], now=10.0) == 0
    assert store.count_unseen("n:2", [a], now=10.0, ttl=5) == 0


def test_a_drained_bucket_is_dropped(store: BaseStore) -> None:
    t = 1_000.0
    # drains in 50 ms of the caller's clock (and, for Redis's key expiry, of real time)
    assert store.take("n:short", "q", 5, capacity=10, refill_per_s=100, now=t).allowed
    # drains in 1,000 s
    assert store.take("n:long", "q", 5, capacity=10, refill_per_s=0.005, now=t).allowed
    assert store.take("n:empty", "q", 0, capacity=10, refill_per_s=1, now=t).allowed
    assert bucket_exists(store, "n:short", "q")
    assert bucket_exists(store, "n:long", "q")
    time.sleep(0.25)  # Redis expires keys in its own clock
    removed = store.expire_rate_state(now=t + 1, seen_ttl=100)
    assert removed == (0 if store.name.startswith("redis") else 2)  # Redis: by itself
    assert not bucket_exists(store, "n:short", "q")
    assert not bucket_exists(store, "n:empty", "q")
    assert bucket_exists(store, "n:long", "q")
    # a dropped bucket is a full one again; the kept one still remembers its level
    assert store.take("n:short", "q", 10, capacity=10, refill_per_s=100, now=t + 1).allowed
    assert not store.take("n:long", "q", 10, capacity=10, refill_per_s=0.005, now=t + 1).allowed
    assert store.expire_rate_state(now=t + 2_000, seen_ttl=100) in (0, 2)
    assert not bucket_exists(store, "n:long", "q") or store.name.startswith("redis")
    if store.name.startswith("redis"):
        # the key's own expiry is the drain time: (5 - 0.005) / 0.005 s from the last take
        pttl = store._r.pttl(store._rkey("n:long") + ":b:q")  # type: ignore[attr-defined]
        assert 990_000 <= pttl <= 999_000


def test_a_denied_take_keeps_the_expiry(store: BaseStore) -> None:
    assert store.take("n:1", "q", 10, capacity=10, refill_per_s=1, now=100.0).allowed
    assert not store.take("n:1", "q", 5, capacity=10, refill_per_s=1, now=100.0).allowed
    assert store.expire_rate_state(now=109.0, seen_ttl=100) == 0
    assert bucket_exists(store, "n:1", "q")
    assert not store.take("n:1", "q", 5, capacity=10, refill_per_s=1, now=104.0).allowed


def bucket_exists(store: BaseStore, subj: str, quota: str) -> bool:
    """Whether the store still holds a bucket row or key (internals, per adapter)."""
    raw: Any = store
    if store.name == "memory":
        return (subj, quota) in raw._buckets
    if store.name == "sqlite":
        q = "SELECT 1 FROM buckets WHERE subject = ? AND quota = ?"
        return raw._conn.execute(q, (subj, quota)).fetchone() is not None
    if store.name == "postgresql":
        return _pg_one(
            store, "SELECT 1 FROM buckets WHERE subject = %s AND quota = %s", subj, quota
        )
    return bool(raw._r.exists(raw._rkey(subj) + ":b:" + quota))


def seen_exists(store: BaseStore, subj: str) -> bool:
    """Whether the store holds any seen entry (or index entry) for ``subj``."""
    raw: Any = store
    if store.name == "memory":
        return subj in raw._seen
    if store.name == "sqlite":
        q = "SELECT 1 FROM seen WHERE subject = ?"
        return raw._conn.execute(q, (subj,)).fetchone() is not None
    if store.name == "postgresql":
        return _pg_one(store, "SELECT 1 FROM seen WHERE subject = %s", subj)
    return bool(raw._r.exists(raw._rkey(subj) + ":s")) or (
        raw._r.zscore(raw._g + ":seen", subj) is not None
    )


def _pg_one(store: BaseStore, query: str, *args: str) -> bool:
    import psycopg

    schema = store.schema  # type: ignore[attr-defined]
    with psycopg.connect(PG_BASE, options=f"-c search_path={schema}") as conn:
        return conn.execute(query, args).fetchone() is not None


# stats and checkpoints --------------------------------------------------------------------


def test_stats(store: BaseStore) -> None:
    assert store.get_stats() == {}
    store.incr_stats({"lookups": 3, "registrations": 1})
    store.incr_stats({"lookups": 2, "registrations": -1})
    assert store.get_stats() == {"lookups": 5, "registrations": 0}


def test_checkpoints(store: BaseStore) -> None:
    assert store.get_checkpoint("rotate:k2") is None
    store.set_checkpoint("rotate:k2", "u0000100")
    store.set_checkpoint("rotate:k2", "u0000200")
    assert store.get_checkpoint("rotate:k2") == "u0000200"
    store.set_checkpoint("rotate:k2", None)
    assert store.get_checkpoint("rotate:k2") is None


@pytest.mark.parametrize("existing", [False, True], ids=["insert", "upsert"])
def test_put_users_marks_completion_with_the_writes(store: BaseStore, existing: bool) -> None:
    if existing:
        store.put_users([user(1, now=5.0)])
    store.put_users([user(1), user(2)], mark="import:abc:0")
    assert store.get_checkpoint("import:abc:0") == "done"
    assert store.count_users() == 2
    store.put_users([], mark="import:abc:1")  # a partition whose every line was rejected
    assert store.get_checkpoint("import:abc:1") == "done"


def test_put_users_failing_leaves_no_mark(store: BaseStore) -> None:
    store.put_users([user(1)])
    clash = replace(user(1), user_id="someone-else")
    with pytest.raises(Conflict):
        store.put_users([user(2), clash], mark="import:abc:2")
    assert store.get_checkpoint("import:abc:2") is None
    with pytest.raises(InvalidInput):
        store.put_users([user(3)], mark="bad name with spaces")


def test_reprs_hide_tokens_and_ciphertexts(store: BaseStore) -> None:
    u = user(1)
    store.put_users([u])
    rec = store.lookup_tokens([u.token])[0]
    rk = Rekey(
        user_id=u.user_id,
        old_token=u.token,
        new_token=u.token,
        key_id="k1",
        number_ct=u.number_ct,
        wrapped_key=u.wrapped_key,
    )
    for text in (repr(rec), repr(u), str(rec), repr(rk)):
        assert u.token.hex() not in text
        assert repr(u.token) not in text
        assert repr(u.number_ct) not in text
        assert repr(u.wrapped_key) not in text


# large batches ----------------------------------------------------------------------------


@pytest.mark.slow
def test_large_batch(store: BaseStore) -> None:
    n = 20_000
    users = [user(i) for i in range(n)]
    store.put_users(users)
    assert store.count_users() == n
    probe = [token(i) for i in range(0, 2 * n, 7)]
    got = store.lookup_tokens(probe)
    assert [g.user_id if g else None for g in got] == [
        f"u{i:07d}" if i < n else None for i in range(0, 2 * n, 7)
    ]
    # a second large batch that mixes updates and inserts takes the upsert path
    store.put_users([user(i, disc=NOBODY) for i in range(n - 100, n + 100)])
    assert store.count_users() == n + 100
    got_keys = store.get_users([f"u{i:07d}" for i in range(n - 150, n + 100, 50)])
    assert [g.wrapped_key if g else None for g in got_keys] == [
        user(i).wrapped_key for i in range(n - 150, n + 100, 50)
    ]
    store.replace_contacts("u0000000", [token(i, "c") for i in range(5_000)], "k1")
    assert store.contact_owners([token(4_999, "c")]) == [["u0000000"]]


# bad input --------------------------------------------------------------------------------

GOOD = user(1)
BAD_CALLS = {
    "token is str": lambda s: s.lookup_tokens(["a" * 32]),
    "token too short": lambda s: s.lookup_tokens([b"a" * 31]),
    "token too long": lambda s: s.lookup_tokens([b"a" * 65]),
    "tokens not a sequence": lambda s: s.lookup_tokens(b"a" * 32),
    "user id not str": lambda s: s.get_users([7]),
    "user id with hash-tag brace": lambda s: s.get_users(["a}b"]),
    "user id too long": lambda s: s.get_users(["a" * 65]),
    "user id empty": lambda s: s.get_users([""]),
    "record not a record": lambda s: s.put_users([{"user_id": "x"}]),
    "record with str token": lambda s: s.put_users([replace(GOOD, token="t" * 32)]),
    "ciphertext oversize": lambda s: s.put_users([replace(GOOD, number_ct=b"c" * 513)]),
    "ciphertext empty": lambda s: s.put_users([replace(GOOD, number_ct=b"")]),
    "wrapped key empty": lambda s: s.put_users([replace(GOOD, wrapped_key=b"")]),
    "wrapped key oversize": lambda s: s.put_users([replace(GOOD, wrapped_key=b"w" * 257)]),
    "wrapped key str": lambda s: s.put_users([replace(GOOD, wrapped_key="w")]),
    "bad key id": lambda s: s.put_users([replace(GOOD, key_id="k 1")]),
    "bad discoverability": lambda s: s.put_users([replace(GOOD, discoverability="friends")]),
    "nan timestamp": lambda s: s.put_users([replace(GOOD, created_at=math.nan)]),
    "negative timestamp": lambda s: s.put_users([replace(GOOD, updated_at=-1.0)]),
    "duplicate user in batch": lambda s: s.put_users([GOOD, replace(user(2), user_id="u0000001")]),
    "duplicate token in batch": lambda s: s.put_users([GOOD, replace(GOOD, user_id="other")]),
    "changes not a mapping": lambda s: s.set_discoverability([("u1", "nobody")], now=1.0),
    "rekey not a Rekey": lambda s: s.rekey_users([GOOD], now=1.0),
    "rekey number without key": lambda s: s.rekey_users(
        [Rekey(user_id="u1", old_token=b"a" * 32, new_token=b"b" * 32, key_id="k", number_ct=b"c")],
        now=1.0,
    ),
    "rekey key without number": lambda s: s.rekey_users(
        [
            Rekey(
                user_id="u1", old_token=b"a" * 32, new_token=b"b" * 32, key_id="k", wrapped_key=b"w"
            )
        ],
        now=1.0,
    ),
    "scan limit zero": lambda s: s.scan_users(None, 0),
    "scan limit bool": lambda s: s.scan_users(None, True),
    "take negative cost": lambda s: s.take("u1", "q", -1, capacity=1, refill_per_s=1, now=1.0),
    "take zero capacity": lambda s: s.take("u1", "q", 1, capacity=0, refill_per_s=1, now=1.0),
    "take bad quota": lambda s: s.take("u1", "q q", 1, capacity=1, refill_per_s=1, now=1.0),
    "take subject with brace": lambda s: s.take(
        "n:{x}", "q", 1, capacity=1, refill_per_s=1, now=1.0
    ),
    "take subject empty": lambda s: s.take("", "q", 1, capacity=1, refill_per_s=1, now=1.0),
    "take subject too long": lambda s: s.take(
        "n:" + "a" * 63, "q", 1, capacity=1, refill_per_s=1, now=1.0
    ),
    "seen fp too short": lambda s: s.add_seen("n:1", [b"abc"], now=1.0),
    "seen subject leading colon": lambda s: s.add_seen(":n", [b"abcdefgh"], now=1.0),
    "seen now negative": lambda s: s.add_seen("n:1", [b"abcdefgh"], now=-1.0),
    "unseen fp str": lambda s: s.count_unseen("n:1", ["abcdefgh"], now=1.0, ttl=1.0),
    "unseen ttl nan": lambda s: s.count_unseen("n:1", [b"abcdefgh"], now=1.0, ttl=math.nan),
    "reset subject with space": lambda s: s.reset_seen("n 1"),
    "expire ttl negative": lambda s: s.expire_rate_state(1.0, -1.0),
    "expire now inf": lambda s: s.expire_rate_state(math.inf, 1.0),
    "stat value float": lambda s: s.incr_stats({"x": 1.5}),
    "stat name with space": lambda s: s.incr_stats({"a b": 1}),
    "checkpoint value oversize": lambda s: s.set_checkpoint("c", "x" * 1025),
    "contacts key id bytes non-ascii": lambda s: s.replace_contacts("u1", [], b"\xff"),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_is_rejected_before_the_driver(store: BaseStore, call: object) -> None:
    with pytest.raises(InvalidInput):
        call(store)  # type: ignore[operator]
    assert store.count_users() == 0


def test_bad_input_message_does_not_echo_values(store: BaseStore) -> None:
    secret_uid = "+989121234567"
    with pytest.raises(InvalidInput) as info:
        store.get_users([secret_uid])
    assert "1234567" not in str(info.value)
