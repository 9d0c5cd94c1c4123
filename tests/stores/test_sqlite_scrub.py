"""SQLite erasure under a long reader: deletion never waits for it, the WAL empties after it.

A reader holding an old snapshot keeps the deleted user's bytes in the WAL (and the database
file) alive: a truncating checkpoint must wait for it. The store therefore runs only a
non-blocking checkpoint on the request path and retries the truncating one in the background.
The bounds below are correctness bounds for a noisy 2-core machine, not benchmarks.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from contactmatch.stores import open_store
from contactmatch.stores.sqlite import SCRUB_MAX_INTERVAL, SQLiteStore
from tests.stores._helpers import subject, token, user

T = TypeVar("T")
VICTIM = 42
#: A call the store serves while a reader holds a snapshot must return within this.
QUICK = 2.0
#: After the last old reader ends, the files hold none of the user's bytes within this.
SCRUB_BOUND = SCRUB_MAX_INTERVAL + 4.0


@pytest.fixture
def sstore(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(f"sqlite:///{tmp_path}/scrub.db")
    assert isinstance(s, SQLiteStore)
    yield s
    s.close()


def files(store: SQLiteStore) -> bytes:
    path = Path(store.path)
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def needles(i: int, upload: bytes) -> list[bytes]:
    u = user(i)
    return [u.token, u.token[:8], u.number_ct, u.wrapped_key, u.user_id.encode(), upload]


def timed(fn: Callable[[], T], limit: float) -> tuple[T, float]:
    """Run ``fn`` in a thread; fail if it has not returned within ``limit`` seconds."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    start = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    took = time.monotonic() - start
    if th.is_alive():
        pytest.fail(f"blocked for more than {limit} s")
    if "error" in out:
        raise out["error"]
    return out["value"], took


def reader(store: SQLiteStore) -> sqlite3.Connection:
    """Another connection holding a read snapshot taken now, until it commits or closes."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("BEGIN")
    assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
    return conn


def setup_victim(store: SQLiteStore) -> list[bytes]:
    store.put_users([user(i) for i in range(200)])
    upload = token(9, "victim-upload")
    store.replace_contacts(user(VICTIM).user_id, [upload], "k1")
    ns = needles(VICTIM, upload)
    assert all(n in files(store) for n in ns)
    return ns


def test_delete_returns_at_once_while_a_reader_holds_a_snapshot(sstore: SQLiteStore) -> None:
    ns = setup_victim(sstore)
    held = reader(sstore)
    try:
        _, took = timed(lambda: sstore.delete_account(user(VICTIM).user_id), QUICK)
        assert sstore.get_users([user(VICTIM).user_id]) == [None]
        # the change feed names the user until it is compacted; compacting must not wait either
        _, compacted = timed(lambda: sstore.compact_feed(before_seq=sstore.feed_head() + 1), QUICK)
        assert compacted < QUICK
        # the reader's snapshot still needs the old frames: the bytes are there for now
        assert any(n in files(sstore) for n in ns)
        time.sleep(0.5)  # the scrubber keeps trying (and failing) meanwhile
        assert any(n in files(sstore) for n in ns)
    finally:
        held.close()  # the last reader of the old snapshot ends here
    released = time.monotonic()
    while any(n in files(sstore) for n in ns):
        if time.monotonic() - released > SCRUB_BOUND:
            left = [n.hex()[:8] for n in ns if n in files(sstore)]
            pytest.fail(f"user bytes still in the files {SCRUB_BOUND} s after release: {left}")
        time.sleep(0.02)
    scrubbed_after = time.monotonic() - released
    wal = Path(sstore.path + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert took < QUICK
    print(f"delete took {took:.3f} s; files clean {scrubbed_after:.3f} s after the reader ended")


def test_other_calls_are_not_blocked_by_a_reader(sstore: SQLiteStore) -> None:
    setup_victim(sstore)
    held = reader(sstore)
    try:
        sstore.delete_account(user(VICTIM).user_id)  # starts the background scrub
        calls: list[Callable[[], object]] = [
            lambda: sstore.get_users(["u0000001"]),
            lambda: sstore.lookup_tokens([token(2)]),
            lambda: sstore.put_users([user(500)]),
            lambda: sstore.take(subject(1), "q", 1, capacity=5, refill_per_s=1, now=1.0),
            lambda: sstore.add_seen(subject(1), [b"fp-00001"], now=1.0),
            lambda: sstore.replace_contacts("u0000003", [token(7)], "k1"),
            lambda: sstore.delete_account("u0000004"),
            lambda: sstore.purge_contacts("k2"),
            lambda: sstore.expire_rate_state(1e9, 1.0),
            lambda: sstore.changes(0, 10),
            lambda: sstore.compact_feed(older_than=1e12),
            sstore.key_census,
            sstore.count_users,
        ]
        for call in calls:
            timed(call, QUICK)
        assert sstore.count_users() == 199
    finally:
        held.close()


def test_close_stops_the_scrubber_even_while_a_reader_holds(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/close.db")
    assert isinstance(s, SQLiteStore)
    setup_victim(s)
    held = reader(s)
    try:
        s.delete_account(user(VICTIM).user_id)
        scrubber = s._scrubber
        assert scrubber is not None
        thread = scrubber._thread
        assert thread is not None
        assert thread.is_alive()
        timed(s.close, QUICK)
        assert not thread.is_alive()
    finally:
        held.close()
    # the next open finds the WAL and checkpoints it; a deletion's bytes go with it
    with open_store(f"sqlite:///{tmp_path}/close.db") as again:
        assert again.get_users([user(VICTIM).user_id]) == [None]
        assert again.count_users() == 199


def test_a_second_process_writing_meanwhile_loses_nothing(sstore: SQLiteStore) -> None:
    # The scrubber's checkpoints run beside other connections' writes (another process's
    # store on the same file) without losing or blocking them.
    setup_victim(sstore)
    other = open_store(f"sqlite:///{sstore.path}")
    try:
        for i in range(20):
            sstore.delete_account(user(i).user_id)
            other.put_users([user(1_000 + i)])
        assert sstore.count_users() == 200
        assert other.get_users(["u0001019"]) == [user(1_019)]
    finally:
        other.close()


def test_memory_database_has_no_scrubber() -> None:
    with open_store("sqlite://") as s:
        assert isinstance(s, SQLiteStore)
        s.put_users([user(1)])
        s.delete_account("u0000001")
        assert s._scrubber is None
