"""Every protocol method, on every adapter, with the same expectations."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from contactmatch.errors import Conflict, InvalidInput, UnknownUser
from contactmatch.stores import (
    BaseStore,
    Discoverability,
    RegistryStore,
    Rekey,
    TakeResult,
    fingerprint,
)
from tests.stores._helpers import token, user

EVERYONE, CONTACTS, NOBODY = (
    Discoverability.EVERYONE,
    Discoverability.CONTACTS,
    Discoverability.NOBODY,
)


def test_implements_protocol(store: BaseStore) -> None:
    assert isinstance(store, RegistryStore)


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
        ),
        Rekey(user_id="ghost", old_token=token(4), new_token=token(4, "k2"), key_id="k2"),
    ]
    assert store.rekey_users(updates, now=77.0) == 2
    a, b, c = store.get_users(["u0000001", "u0000002", "u0000003"])
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.token, a.key_id, a.number_ct) == (token(1, "k2"), "k2", user(1).number_ct)
    assert (b.token, b.key_id) == (token(2), "k1")
    assert (c.token, c.number_ct, c.updated_at) == (token(3, "k2"), b"new-ct", 77.0)
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


def test_delete_account_removes_everything(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    store.replace_contacts("u0000001", [token(50), token(2)], "k1")
    store.replace_contacts("u0000002", [token(50)], "k1")
    assert store.take("u0000001", "q", 5, capacity=5, refill_per_s=1e-6, now=1.0).allowed
    assert store.add_seen("u0000001", [b"fp-00001", b"fp-00002"]) == 2
    store.delete_account("u0000001")
    assert store.get_users(["u0000001"]) == [None]
    assert store.lookup_tokens([token(1)]) == [None]
    assert store.contact_owners([token(50), token(2)]) == [["u0000002"], []]
    assert store.count_users() == 1
    # rate state and the seen set went with the account: a fresh bucket, an empty set
    assert store.take("u0000001", "q", 5, capacity=5, refill_per_s=1e-6, now=1.0).allowed
    assert store.add_seen("u0000001", [b"fp-00001", b"fp-00002"]) == 2
    with pytest.raises(UnknownUser):
        store.delete_account("u0000001")


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
    assert store.count_unseen("u1", fps) == 3
    assert store.count_unseen("u1", fps) == 3
    store.add_seen("u1", [b"bbbbbbbb"])
    assert store.count_unseen("u1", fps) == 2
    assert store.count_unseen("u2", fps) == 3
    assert store.count_unseen("u1", []) == 0
    many = [i.to_bytes(8, "big") for i in range(1_200)]  # more than one SQL chunk
    store.add_seen("u3", many[::2])
    assert store.count_unseen("u3", many) == 600


def test_seen_set_counts_new_only(store: BaseStore) -> None:
    assert store.add_seen("u1", [b"aaaaaaaa", b"bbbbbbbb", b"aaaaaaaa"]) == 2
    assert store.add_seen("u1", [b"bbbbbbbb", b"cccccccc"]) == 1
    assert store.add_seen("u2", [b"bbbbbbbb"]) == 1
    assert store.add_seen("u1", []) == 0
    store.reset_seen("u1")
    assert store.add_seen("u1", [b"aaaaaaaa"]) == 1


# filter -----------------------------------------------------------------------------------


def test_filter_versions(store: BaseStore) -> None:
    assert store.get_filter() is None
    v1 = store.put_filter(1, "k1", b"\x00blob-1", now=1.0)
    store.put_filter(3, "k1", b"blob-3", now=3.0)
    latest = store.get_filter()
    assert latest is not None
    assert (latest.version, latest.blob, latest.key_id) == (3, b"blob-3", "k1")
    got1 = store.get_filter(1)
    assert got1 is not None
    assert got1.blob == v1.blob
    assert store.get_filter(2) is None
    for bad in (3, 2):
        with pytest.raises(Conflict):
            store.put_filter(bad, "k1", b"x", now=4.0)


def test_filter_delta_tracks_everyone_membership(store: BaseStore) -> None:
    store.put_users([user(1), user(2), user(3, disc=CONTACTS)])
    store.put_filter(1, "k1", b"f1", now=1.0)
    store.put_users([user(4), user(5, disc=NOBODY)])  # 4 joins the filter, 5 does not
    store.set_discoverability({"u0000002": NOBODY, "u0000003": EVERYONE}, now=2.0)
    store.put_filter(2, "k1", b"f2", now=2.0)
    d = store.filter_delta(1, 2)
    assert d is not None
    assert (d.since, d.until) == (1, 2)
    assert sorted(d.added) == sorted([token(4), token(3)])
    assert d.removed == [fingerprint(token(2))]
    # the default target is the latest version; nothing changed since 2
    empty = store.filter_delta(2)
    assert empty is not None
    assert (empty.added, empty.removed, empty.until) == ([], [], 2)
    assert store.filter_delta(1, 9) is None
    assert store.filter_delta(7) is None


def test_filter_delta_after_delete_holds_only_a_fingerprint(store: BaseStore) -> None:
    store.put_filter(1, "k1", b"f1", now=1.0)
    store.put_users([user(1), user(2)])
    store.put_filter(2, "k1", b"f2", now=2.0)
    store.delete_account("u0000001")
    store.put_filter(3, "k1", b"f3", now=3.0)
    d13 = store.filter_delta(1)
    assert d13 is not None
    assert d13.added == [token(2)]  # the erased user's token is gone from the log
    d23 = store.filter_delta(2)
    assert d23 is not None
    assert (d23.added, d23.removed) == ([], [fingerprint(token(1))])


def test_filter_delta_token_change_and_return(store: BaseStore) -> None:
    store.put_users([user(1)])
    store.put_filter(1, "k1", b"f1", now=1.0)
    store.set_discoverability({"u0000001": NOBODY}, now=2.0)
    store.set_discoverability({"u0000001": EVERYONE}, now=3.0)
    store.put_users([replace(user(2, salt="x"), user_id="u0000002")])
    store.put_filter(2, "k1", b"f2", now=4.0)
    d = store.filter_delta(1)
    assert d is not None
    assert sorted(d.added) == sorted([token(1), token(2, "x")])
    assert d.removed == []


def test_compact_filters(store: BaseStore) -> None:
    store.put_users([user(1)])
    store.put_filter(1, "k1", b"f1", now=1.0)
    store.put_users([user(2)])
    store.put_filter(2, "k1", b"f2", now=2.0)
    store.put_users([user(3)])
    store.put_filter(3, "k1", b"f3", now=3.0)
    store.compact_filters(2)
    assert store.get_filter(1) is None
    assert store.filter_delta(1) is None
    d = store.filter_delta(2)
    assert d is not None
    assert d.added == [token(3)]
    store.compact_filters(99)  # unknown version: nothing happens
    assert store.get_filter(2) is not None


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


def test_reprs_hide_tokens_and_ciphertexts(store: BaseStore) -> None:
    u = user(1)
    store.put_users([u])
    rec = store.lookup_tokens([u.token])[0]
    for text in (repr(rec), repr(u), str(store.filter_delta(1))):
        assert u.token.hex() not in text
        assert repr(u.token) not in text
        assert repr(u.number_ct) not in text


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
    store.put_filter(1, "k1", b"f", now=1.0)
    d = store.filter_delta(1)
    assert d is not None
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
    "bad key id": lambda s: s.put_users([replace(GOOD, key_id="k 1")]),
    "bad discoverability": lambda s: s.put_users([replace(GOOD, discoverability="friends")]),
    "nan timestamp": lambda s: s.put_users([replace(GOOD, created_at=math.nan)]),
    "negative timestamp": lambda s: s.put_users([replace(GOOD, updated_at=-1.0)]),
    "duplicate user in batch": lambda s: s.put_users([GOOD, replace(user(2), user_id="u0000001")]),
    "duplicate token in batch": lambda s: s.put_users([GOOD, replace(GOOD, user_id="other")]),
    "changes not a mapping": lambda s: s.set_discoverability([("u1", "nobody")], now=1.0),
    "rekey not a Rekey": lambda s: s.rekey_users([GOOD], now=1.0),
    "scan limit zero": lambda s: s.scan_users(None, 0),
    "scan limit bool": lambda s: s.scan_users(None, True),
    "take negative cost": lambda s: s.take("u1", "q", -1, capacity=1, refill_per_s=1, now=1.0),
    "take zero capacity": lambda s: s.take("u1", "q", 1, capacity=0, refill_per_s=1, now=1.0),
    "take bad quota": lambda s: s.take("u1", "q q", 1, capacity=1, refill_per_s=1, now=1.0),
    "seen fp too short": lambda s: s.add_seen("u1", [b"abc"]),
    "unseen fp str": lambda s: s.count_unseen("u1", ["abcdefgh"]),
    "filter version zero": lambda s: s.put_filter(0, "k1", b"x", now=1.0),
    "filter blob str": lambda s: s.put_filter(1, "k1", "x", now=1.0),
    "delta until before since": lambda s: s.filter_delta(5, 4),
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
