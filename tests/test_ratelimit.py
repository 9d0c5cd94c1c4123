"""The rate limiter's seen sets: what a re-sync costs the store, and when items count again."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from contactmatch.errors import RateLimited
from contactmatch.ratelimit import RateLimiter, RateLimits
from contactmatch.stores.memory import MemoryStore


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.seen_writes = 0

    def add_seen(self, subject: str, fingerprints: Sequence[bytes], *, now: float) -> int:
        self.seen_writes += 1
        return super().add_seen(subject, fingerprints, now=now)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def limiter() -> tuple[RateLimiter, CountingStore, Clock]:
    store, clock = CountingStore(), Clock()
    return RateLimiter(store, RateLimits(), b"k" * 32, clock), store, clock


def tokens(n: int, start: int = 0) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(start, start + n)]


def test_resync_of_an_unchanged_book_writes_nothing() -> None:
    rl, store, _ = limiter()
    subject = rl.account_subject("alice")
    rl.new_tokens(subject, tokens(300))
    assert store.seen_writes == 1
    for _ in range(5):
        rl.new_tokens(subject, tokens(300))
    assert store.seen_writes == 1
    rl.new_tokens(subject, tokens(301))  # one new contact: the whole book is refreshed
    assert store.seen_writes == 2


def test_unrefreshed_items_count_again_after_the_ttl() -> None:
    rl, _, clock = limiter()
    subject = rl.account_subject("alice")
    quota = rl.limits.new_tokens
    book = tokens(int(quota.capacity))
    rl.new_tokens(subject, book)  # drains the bucket
    with pytest.raises(RateLimited):
        rl.new_tokens(subject, tokens(1, start=10**6))
    rl.new_tokens(subject, book)  # all seen: free
    clock.now += rl.seen_ttl + 1  # the bucket has refilled; the entries have lapsed
    rl.new_tokens(subject, book)  # charged again, once, and affordable
    with pytest.raises(RateLimited):
        rl.new_tokens(subject, tokens(1, start=10**6))
