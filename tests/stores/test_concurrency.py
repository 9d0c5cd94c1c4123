"""Concurrent writers: threads sharing one store, and processes each opening their own."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from contactmatch.stores import BaseStore
from tests.services import BACKENDS
from tests.stores._helpers import token, user, worker_register, worker_take


def _run_threads(n: int, fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(n)

    def go(i: int) -> object:
        barrier.wait()  # start together so the calls really overlap
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def test_threads_register_disjoint_users(store: BaseStore) -> None:
    def register(t: int) -> None:
        for b in range(5):
            base = t * 1000 + b * 40
            store.put_users([user(i) for i in range(base, base + 40)])

    _run_threads(6, register)
    assert store.count_users() == 6 * 5 * 40
    assert all(store.lookup_tokens([token(5 * 1000 + 4 * 40 + 39)]))


def test_threads_take_exactly_capacity(store: BaseStore) -> None:
    def take(_t: int) -> int:
        return sum(
            store.take("shared", "q", 1, capacity=30, refill_per_s=1e-9, now=100.0).allowed
            for _ in range(10)
        )

    # 8 x 10 attempts at a bucket of 30: atomic takes admit exactly 30
    assert sum(_run_threads(8, take)) == 30  # type: ignore[arg-type]


def test_threads_seen_set_counts_each_fingerprint_once(store: BaseStore) -> None:
    fps = [i.to_bytes(8, "big") for i in range(200)]
    counts = _run_threads(
        4, lambda t: store.add_seen("n:1", fps[t * 30 : t * 30 + 110], now=float(t))
    )
    assert sum(counts) == len(set(fps[: 3 * 30 + 110]))  # type: ignore[arg-type]


def test_threads_stats_and_contacts(store: BaseStore) -> None:
    store.put_users([user(i) for i in range(8)])

    def work(t: int) -> None:
        for _ in range(20):
            store.incr_stats({"lookups": 1, "hits": 2})
        store.replace_contacts(f"u{t:07d}", [token(100), token(200 + t)], "k1")

    _run_threads(8, work)
    assert store.get_stats() == {"lookups": 160, "hits": 320}
    assert store.contact_owners([token(100)]) == [[f"u{t:07d}" for t in range(8)]]


def test_threads_upsert_same_users_leave_consistent_indexes(store: BaseStore) -> None:
    # Everyone rewrites the same 20 users with their own tokens; whoever wins, each user must
    # be findable by exactly its stored token and by no stale one.
    def rewrite(t: int) -> None:
        for _ in range(3):
            store.put_users([user(i, salt=f"t{t}", uid=f"u{i:07d}") for i in range(20)])

    _run_threads(4, rewrite)
    recs = store.get_users([f"u{i:07d}" for i in range(20)])
    for r in recs:
        assert r is not None
        assert store.lookup_tokens([r.token]) == [r]
    stale = [token(i, f"t{t}") for t in range(4) for i in range(20)]
    assert sum(x is not None for x in store.lookup_tokens(stale)) == 20


@pytest.mark.slow
@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "memory"])
def test_processes_share_one_store(store_url: str, store: BaseStore) -> None:
    # No memory store here: it lives inside one process by design.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        takes = pool.starmap(worker_take, [(store_url, 25)] * 3)
        regs = pool.starmap(worker_register, [(store_url, k * 500, 200) for k in range(3)])
    assert sum(takes) == 40  # 75 attempts at a bucket of 40 across three processes
    assert sum(regs) == 600
    assert store.count_users() == 600
    assert store.get_stats() == {"registered": 600}
