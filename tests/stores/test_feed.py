"""The change feed, the store identity and the key census, on every adapter.

What a follower relies on: every mutation of a registration appends one entry per affected
user in the same transaction; sequence numbers follow commit order (a reader never sees a
number at or below one it has already read appear later); compaction removes a prefix and is
detected (``complete=False``); the store's identity survives reopening; the census is exact.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from contactmatch.errors import Conflict, InvalidInput, UnknownUser
from contactmatch.stores import BaseStore, Discoverability, FeedPage, KeyCensus, Rekey, open_store
from contactmatch.stores.census import wrapped_key_id
from tests.services import BACKENDS
from tests.stores._helpers import subject, token, user, worker_churn, worker_register_forever

NOBODY = Discoverability.NOBODY


def feed(store: BaseStore, after: int = 0) -> list[tuple[int, str]]:
    """Every entry after ``after``, paging with a small limit."""
    out: list[tuple[int, str]] = []
    while True:
        page = store.changes(after, 3)
        assert page.complete
        out += page.entries
        if not page.entries:
            return out
        after = page.entries[-1][0]


def users_of(entries: list[tuple[int, str]]) -> list[str]:
    return [u for _, u in entries]


def per_call(entries: list[tuple[int, str]], sizes: list[int]) -> list[list[str]]:
    """User ids split by the calls that appended them (``sizes`` entries each), sorted within
    a call: one call's entries may come in any order among its users (Redis Cluster numbers
    them group by group)."""
    out, i = [], 0
    for n in sizes:
        out.append(sorted(users_of(entries[i : i + n])))
        i += n
    assert i == len(entries)
    return out


def census_by_scan(store: BaseStore) -> KeyCensus:
    """The key census the slow way: every registration read back."""
    oprf: Counter[str] = Counter()
    data: Counter[str] = Counter()
    after = None
    while page := store.scan_users(after, 100):
        for r in page:
            oprf[r.key_id] += 1
            data[wrapped_key_id(r.wrapped_key)] += 1
        after = page[-1].user_id
    return KeyCensus(oprf=dict(oprf), data=dict(data))


# entries per mutation ---------------------------------------------------------------------


def test_a_new_store_has_an_empty_feed(store: BaseStore) -> None:
    assert store.feed_head() == 0
    assert store.changes(0, 10) == FeedPage(entries=[], head=0, complete=True)
    assert store.key_census() == KeyCensus(oprf={}, data={})


def test_every_mutation_appends_one_entry_per_affected_user(store: BaseStore) -> None:
    store.put_users([user(1), user(2), user(3)])  # insert
    assert per_call(feed(store), [3]) == [["u0000001", "u0000002", "u0000003"]]
    assert [q for q, _ in feed(store)] == [1, 2, 3]
    store.put_users([user(1, disc=NOBODY)])  # replace
    store.put_users([user(2, salt="new number", uid="u0000002")])  # number change
    store.set_discoverability({"u0000003": NOBODY, "u0000001": Discoverability.EVERYONE}, 5.0)
    rekeys = [
        Rekey(user_id="u0000003", old_token=token(3), new_token=token(3, "k2"), key_id="k2"),
        Rekey(user_id="u0000001", old_token=token(9), new_token=token(1, "k2"), key_id="k2"),
    ]
    assert store.rekey_users(rekeys, now=6.0) == 1  # the stale one appends nothing
    store.delete_account("u0000002")
    # device transfer: the number's old account is erased, the new one registers its token
    store.delete_account("u0000003")
    store.put_users([user(3, salt="k2", uid="new-device", key_id="k2")])
    assert per_call(feed(store, 3), [1, 1, 2, 1, 1, 1, 1]) == [
        ["u0000001"],
        ["u0000002"],
        ["u0000001", "u0000003"],
        ["u0000003"],
        ["u0000002"],
        ["u0000003"],
        ["new-device"],
    ]
    assert store.feed_head() == 11
    # changes that are not registrations append nothing
    store.replace_contacts("u0000001", [token(50)], "k1")
    store.purge_contacts("k9")
    store.take(subject(1), "q", 1, capacity=5, refill_per_s=1, now=1.0)
    store.add_seen(subject(1), [b"fp-00001"], now=1.0)
    store.incr_stats({"x": 1})
    store.set_checkpoint("c", "v")
    assert store.rekey_users(rekeys[1:], now=7.0) == 0
    assert store.feed_head() == 11


def test_failed_mutations_append_nothing(store: BaseStore) -> None:
    store.put_users([user(1), user(2)])
    with pytest.raises(Conflict):
        store.put_users([user(3), user(1, uid="thief")])
    with pytest.raises(UnknownUser):
        store.set_discoverability({"u0000001": NOBODY, "ghost": NOBODY}, now=1.0)
    with pytest.raises(UnknownUser):
        store.delete_account("ghost")
    with pytest.raises(Conflict):
        store.rekey_users(
            [Rekey(user_id="u0000001", old_token=token(1), new_token=token(2), key_id="k2")],
            now=1.0,
        )
    assert store.feed_head() == 2
    assert per_call(feed(store), [2]) == [["u0000001", "u0000002"]]


def test_pages_ascend_without_gaps_and_report_the_head(store: BaseStore) -> None:
    for i in range(0, 25, 5):
        store.put_users([user(j) for j in range(i, i + 5)])
    seen: list[int] = []
    after = 0
    while page := store.changes(after, 7).entries:
        assert len(page) <= 7
        seen += [q for q, _ in page]
        after = page[-1][0]
    assert seen == list(range(1, 26))
    last = store.changes(20, 100)
    assert last.head == 25
    assert per_call(last.entries, [5]) == [[f"u{i:07d}" for i in range(20, 25)]]
    assert store.changes(25, 100) == FeedPage(entries=[], head=25, complete=True)


def test_entries_hold_user_ids_only(store: BaseStore) -> None:
    u = user(1)
    store.put_users([u])
    page = store.changes(0, 10)
    assert page.entries == [(1, "u0000001")]
    assert all(type(q) is int and type(uid) is str for q, uid in page.entries)
    text = repr(page).encode()
    assert u.token.hex().encode() not in text
    assert u.number_ct.hex().encode() not in text


# compaction -------------------------------------------------------------------------------


def test_compaction_removes_a_prefix_and_is_detected(store: BaseStore) -> None:
    store.put_users([user(i) for i in range(10)])
    assert store.compact_feed(before_seq=6) == 5
    assert store.changes(0, 100).complete is False  # 1..5 are gone: rescan
    assert store.changes(4, 100).complete is False
    page = store.changes(5, 100)
    assert page.complete
    assert [q for q, _ in page.entries] == [6, 7, 8, 9, 10]
    assert store.compact_feed(before_seq=6) == 0
    assert store.compact_feed(before_seq=1_000) == 5
    assert store.feed_head() == 10  # never lowered: numbers are not reused
    assert store.changes(10, 100) == FeedPage(entries=[], head=10, complete=True)
    assert store.changes(9, 100).complete is False
    store.put_users([user(99)])
    assert store.changes(10, 100).entries == [(11, "u0000099")]


def test_compaction_by_age_stops_at_the_first_young_entry(store: BaseStore) -> None:
    def at(t: float) -> None:
        store._clock = lambda: t

    at(100.0)
    store.put_users([user(i) for i in range(3)])  # 1..3 at t=100
    at(200.0)
    store.put_users([user(3)])  # 4 at t=200
    at(150.0)  # a writer whose clock lags
    store.put_users([user(4)])  # 5 at t=150
    at(300.0)
    store.put_users([user(5)])  # 6 at t=300
    assert store.compact_feed(older_than=175.0) == 3  # stops at seq 4, keeps 5
    assert [q for q, _ in store.changes(3, 10).entries] == [4, 5, 6]
    # with both limits an entry goes only if both allow it
    assert store.compact_feed(before_seq=5, older_than=1_000.0) == 1
    assert store.compact_feed(before_seq=1_000, older_than=250.0) == 1  # seq 5 (t=150)
    assert [q for q, _ in store.changes(5, 10).entries] == [6]
    assert store.compact_feed(older_than=300.0) == 0
    assert store.compact_feed(older_than=300.5) == 1
    assert store.changes(6, 10) == FeedPage(entries=[], head=6, complete=True)


def test_a_position_beyond_the_head_is_incomplete(store: BaseStore) -> None:
    store.put_users([user(1)])
    page = store.changes(5, 10)
    assert page == FeedPage(entries=[], head=1, complete=False)


BAD_FEED_CALLS: dict[str, Callable[[BaseStore], object]] = {
    "changes after negative": lambda s: s.changes(-1, 10),
    "changes after float": lambda s: s.changes(1.0, 10),  # type: ignore[arg-type]
    "changes after bool": lambda s: s.changes(True, 10),
    "changes limit zero": lambda s: s.changes(0, 0),
    "changes limit too big": lambda s: s.changes(0, 100_001),
    "changes after too big": lambda s: s.changes(2**63, 10),
    "compact without limits": lambda s: s.compact_feed(),
    "compact before negative": lambda s: s.compact_feed(before_seq=-1),
    "compact before str": lambda s: s.compact_feed(before_seq="5"),  # type: ignore[arg-type]
    "compact older nan": lambda s: s.compact_feed(older_than=math.nan),
    "compact older negative": lambda s: s.compact_feed(older_than=-1.0),
}


@pytest.mark.parametrize("call", BAD_FEED_CALLS.values(), ids=BAD_FEED_CALLS.keys())
def test_bad_feed_input_is_rejected(store: BaseStore, call: Callable[[BaseStore], object]) -> None:
    with pytest.raises(InvalidInput):
        call(store)


# identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "memory"])
def test_store_id_is_stable_across_reopen_and_differs_between_stores(
    store_url: str, store: BaseStore, open_again: Callable[[], BaseStore], tmp_path: Path
) -> None:
    sid = store.store_id()
    assert isinstance(sid, str)
    assert 16 <= len(sid) <= 64
    store.put_users([user(1)])
    assert open_again().store_id() == sid
    assert store.store_id() == sid
    with open_store(f"sqlite:///{tmp_path}/other.db") as other:
        assert other.store_id() != sid


def test_memory_stores_differ() -> None:
    with open_store("memory://") as a, open_store("memory://") as b:
        assert a.store_id() != b.store_id()
        assert a.store_id() == a.store_id()


# key census -------------------------------------------------------------------------------


def test_key_census_is_exact_through_every_kind_of_change(store: BaseStore) -> None:
    store.put_users([user(i, key_id="k1", data_key="dk-1") for i in range(10)])
    store.put_users([user(i, key_id="k2", data_key="dk-2") for i in range(10, 14)])
    store.put_users([user(14)])  # a wrapped key without a parsable header
    expected = KeyCensus(oprf={"k1": 11, "k2": 4}, data={"dk-1": 10, "dk-2": 4, "": 1})
    assert store.key_census() == expected == census_by_scan(store)
    # re-registration under other keys, deletion, a setting change
    store.put_users([user(i, key_id="k2", data_key="dk-2", uid=f"u{i:07d}") for i in (0, 1)])
    store.delete_account("u0000002")
    store.delete_account("u0000014")
    store.set_discoverability({"u0000003": NOBODY}, now=5.0)
    # rotation: new tokens under k3, one re-sealed under dk-3, one keeping its wrapped key
    store.rekey_users(
        [
            Rekey(
                user_id="u0000004",
                old_token=token(4),
                new_token=token(4, "k3"),
                key_id="k3",
                number_ct=b"new-ct",
                wrapped_key=user(4, data_key="dk-3").wrapped_key,
            ),
            Rekey(user_id="u0000005", old_token=token(5), new_token=token(5, "k3"), key_id="k3"),
            Rekey(user_id="u0000006", old_token=token(99), new_token=token(6, "k3"), key_id="k3"),
        ],
        now=6.0,
    )
    expected = KeyCensus(oprf={"k1": 5, "k2": 6, "k3": 2}, data={"dk-1": 6, "dk-2": 6, "dk-3": 1})
    assert store.key_census() == expected == census_by_scan(store)
    for u in [f"u{i:07d}" for i in (0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)]:
        store.delete_account(u)
    assert store.key_census() == KeyCensus(oprf={}, data={})


def test_wrapped_key_id_reads_the_atrest_header() -> None:
    from contactmatch.atrest import DataKey

    dk = DataKey.generate("dk-0123456789abc")
    _ct, wk = dk.seal_number("+989121234567", "alice", token(1))
    assert wrapped_key_id(wk) == "dk-0123456789abc"
    assert wrapped_key_id(b"") == ""
    assert wrapped_key_id(b"\x02") == ""
    assert wrapped_key_id(b"\x01\x02ab") == ""  # another version
    assert wrapped_key_id(b"\x02\x05ab") == ""  # shorter than it says
    assert wrapped_key_id(b"\x02\x00rest") == ""
    assert wrapped_key_id(b"\x02\x02a b") == ""  # not a key id
    assert wrapped_key_id(b"\x02\x02\xff\xfe") == ""


# concurrency ------------------------------------------------------------------------------


def _follow(store: BaseStore, stop: threading.Event, seen: list[tuple[int, str]]) -> None:
    """Read the feed while writers run: each page must start right after the last entry."""
    after = 0
    while True:
        done = stop.is_set()  # checked before the read: one more full pass after the stop
        page = store.changes(after, 17)
        assert page.complete
        if page.entries:
            assert [q for q, _ in page.entries] == list(
                range(after + 1, after + 1 + len(page.entries))
            ), "the feed skipped or reordered entries"
            assert page.entries[-1][0] <= page.head
            seen += page.entries
            after = page.entries[-1][0]
        elif done:
            return


def _check_followed(store: BaseStore, seen: list[tuple[int, str]], expected: int) -> None:
    assert len(seen) == expected == store.feed_head()
    # a follower that re-reads every user it saw in the feed holds exactly the store
    ids = sorted({u for _, u in seen})
    rows = dict(zip(ids, store.get_users(ids), strict=True))
    live = {u for u, r in rows.items() if r is not None}
    everyone: set[str] = set()
    after = None
    while page := store.scan_users(after, 500):
        everyone |= {r.user_id for r in page}
        after = page[-1].user_id
    assert live == everyone


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "memory"])
def test_a_follower_never_skips_an_entry_of_concurrent_processes(
    store_url: str, store: BaseStore
) -> None:
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_follow, args=(store, stop, seen))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _follow(store, stop, seen)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=run)
    reader.start()
    ctx = multiprocessing.get_context("spawn")
    try:
        with ctx.Pool(2) as pool:
            counts = pool.starmap(worker_churn, [(store_url, 0, 15), (store_url, 10_000, 15)])
    finally:
        stop.set()
        reader.join(60)
    assert not errors, errors
    _check_followed(store, seen, sum(counts))


def test_a_follower_never_skips_an_entry_of_concurrent_threads(store: BaseStore) -> None:
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            _follow(store, stop, seen)
        except BaseException as exc:
            errors.append(exc)

    def write(start: int) -> None:
        for i in range(start, start + 200, 20):
            store.put_users([user(j) for j in range(i, i + 20)])
            store.delete_account(f"u{i:07d}")

    reader = threading.Thread(target=follow)
    reader.start()
    writers = [threading.Thread(target=write, args=(k * 1_000,)) for k in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join(60)
    assert not errors, errors
    _check_followed(store, seen, 3 * 10 * 21)


# a writer killed mid-batch ----------------------------------------------------------------


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "memory"])
def test_kill_9_mid_write_leaves_every_change_in_the_feed(
    store_url: str, store: BaseStore, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=worker_register_forever, args=(store_url, str(ready)))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.is_alive(), "the writer died before the kill"
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no cleanup, no atexit, a batch possibly half sent
        child.join(10)
    entries = feed(store)
    assert [q for q, _ in entries] == list(range(1, len(entries) + 1))
    assert len(entries) >= 500
    registered: set[str] = set()
    after = None
    while page := store.scan_users(after, 1_000):
        registered |= {r.user_id for r in page}
        after = page[-1].user_id
    # every registration that is readable has its entry, and no entry names a user that is not
    assert set(users_of(entries)) == registered
    assert len(entries) == len(registered)
    census = store.key_census()
    assert census.oprf == {"k1": len(registered)}
    # the store goes on numbering after the crash
    store.put_users([user(10**6)])
    assert store.changes(len(entries), 10).entries == [(len(entries) + 1, "u1000000")]


# PostgreSQL: numbering waits for the commit of the previous writer ---------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_numbers_entries_in_commit_order(store: BaseStore) -> None:
    import psycopg

    from contactmatch.stores.postgres_schema import ADVANCE_HEAD
    from tests.services import PG_BASE

    store.put_users([user(1)])
    schema = store.schema  # type: ignore[attr-defined]
    result: list[BaseException | None] = []

    def write() -> None:
        try:
            store.put_users([user(3)])
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    with psycopg.connect(PG_BASE, options=f"-c search_path={schema}") as slow:
        with slow.transaction():
            # a writer that has numbered its entry (2) and not committed yet
            head = slow.execute(ADVANCE_HEAD, (1,)).fetchone()
            assert head == (2,)
            slow.execute("INSERT INTO feed (seq, at, user_id) VALUES (2, 0, 'slow-writer')")
            other = threading.Thread(target=write)
            other.start()
            time.sleep(0.5)
            assert other.is_alive(), "a second writer numbered entries before the first committed"
            # a reader meanwhile sees neither: nothing it reads can be overtaken later
            assert store.changes(1, 10) == FeedPage(entries=[], head=1, complete=True)
        other.join(10)
    assert result == [None]
    assert store.changes(1, 10).entries == [(2, "slow-writer"), (3, "u0000003")]
