"""The rate limiter, directly: its bounds, the bucket rule, subjects, ceilings and expiry.

Against a memory store with an injected clock, so every decision is exact; the conformance
suite (``tests/stores/``) checks that every adapter keeps the state the same way.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from collections.abc import Sequence

import pytest

from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.ratelimit import GLOBAL_SUBJECT, Quota, RateLimiter, RateLimits
from contactmatch.stores.leaky import drain_time, leak, take_decision
from contactmatch.stores.memory import MemoryStore
from contactmatch.stores.records import check_subject, check_user_id

DAY = 86_400.0


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


# -- RateLimits: the bounds a configuration must respect ------------------------------------


def small_limits(**changes: object) -> RateLimits:
    """Quotas small enough to exhaust in a test: a 1,000-unit daily evaluation ceiling."""
    base: dict[str, object] = {
        "evaluations": Quota(name="eval", capacity=500, period=DAY),
        "global_evaluations": Quota(name="global-eval", capacity=1_000, period=DAY),
        "light_allowance": Quota(name="light", capacity=50, period=DAY),
        "reserve_share": 0.2,
        "max_account_share": 1.0,
    }
    base.update(changes)
    return RateLimits(**base)  # type: ignore[arg-type]


def test_default_limits_keep_every_account_within_its_share() -> None:
    limits = RateLimits()
    for own, ceiling in (
        (limits.evaluations, limits.global_evaluations),
        (limits.new_tokens, limits.global_new_tokens),
        (limits.registrations, limits.global_registrations),
    ):
        assert RateLimits.account_share(own, ceiling) <= limits.max_account_share


def test_an_account_quota_too_large_for_the_ceiling_is_refused() -> None:
    # 500 at once plus 500 refilled in the ceiling's day: 100% of a 1,000 ceiling.
    with pytest.raises(InvalidInput, match=r"100\.0% of the global-eval ceiling; the bound is 50"):
        small_limits(max_account_share=0.5)
    assert small_limits(max_account_share=1.0).max_account_share == 1.0


def test_account_share_counts_the_refill_over_the_ceiling_period() -> None:
    own = Quota(name="q", capacity=100, period=10 * DAY)
    ceiling = Quota(name="g", capacity=1_000, period=DAY)
    # 100 at once plus 10 per day refilled: 110 of the ceiling's 1,000 per day
    assert RateLimits.account_share(own, ceiling) == pytest.approx(0.11)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, float("nan")])
def test_max_account_share_must_be_in_zero_one(share: float) -> None:
    with pytest.raises(InvalidInput, match="max_account_share"):
        RateLimits(max_account_share=share)


@pytest.mark.parametrize("share", [-0.01, 1.0, 1.5, float("nan")])
def test_reserve_share_must_be_in_zero_one(share: float) -> None:
    with pytest.raises(InvalidInput, match="reserve_share"):
        RateLimits(reserve_share=share)


def test_reserve_share_zero_is_allowed() -> None:
    assert small_limits(reserve_share=0.0).reserve_share == 0.0


@pytest.mark.parametrize(("capacity", "period"), [(0, 1), (1, 0), (-1, 1)])
def test_a_quota_needs_a_positive_capacity_and_period(capacity: float, period: float) -> None:
    with pytest.raises(InvalidInput):
        Quota(name="q", capacity=capacity, period=period)


def test_quota_bound_and_scaling() -> None:
    q = Quota(name="q", capacity=100, period=10.0)
    assert q.refill_per_s == 10.0
    assert q.bound(0) == 100
    assert q.bound(5) == 150
    assert q.scaled(0.5) == Quota(name="q", capacity=50, period=10.0)
    assert q.scaled(2, "q2") == Quota(name="q2", capacity=200, period=10.0)


# -- the leaky-bucket rule every Python adapter applies ---------------------------------------


def test_leaky_bucket_rule_is_reexported_where_it_used_to_live() -> None:
    from contactmatch.stores import base

    assert (base.leak, base.take_decision, base.drain_time) == (leak, take_decision, drain_time)


def test_leak_drains_at_the_refill_rate_and_stops_at_zero() -> None:
    assert leak(10.0, updated=100.0, now=104.0, refill_per_s=2.0) == 2.0
    assert leak(10.0, updated=100.0, now=200.0, refill_per_s=2.0) == 0.0
    # a clock that went back drains nothing (and never fills)
    assert leak(10.0, updated=100.0, now=50.0, refill_per_s=2.0) == 10.0


def test_take_decision_allows_up_to_the_capacity() -> None:
    assert take_decision(6.0, 4.0, 10.0, 2.0) == (True, 0.0, 10.0)
    assert take_decision(0.0, 10.0, 10.0, 2.0) == (True, 0.0, 10.0)


def test_a_refused_take_changes_nothing_and_says_when_it_would_fit() -> None:
    # level 8 + cost 5 overflows a capacity of 10 by 3: at 2 per second, in 1.5 s
    assert take_decision(8.0, 5.0, 10.0, 2.0) == (False, 1.5, 8.0)


def test_a_cost_above_the_capacity_never_fits() -> None:
    allowed, retry, level = take_decision(0.0, 11.0, 10.0, 2.0)
    assert (allowed, level) == (False, 0.0)
    assert retry == math.inf


def test_drain_time_is_when_the_bucket_is_empty_again() -> None:
    assert drain_time(10.0, updated=100.0, refill_per_s=2.0) == 105.0
    assert drain_time(0.0, updated=100.0, refill_per_s=2.0) == 100.0
    # an empty bucket by then: leak agrees with drain_time
    assert leak(10.0, 100.0, drain_time(10.0, 100.0, 2.0), 2.0) == 0.0


# -- subjects: keyed, namespaced, never an identifier ------------------------------------------


def test_subjects_are_keyed_hashes_in_their_namespace() -> None:
    rl, _, _ = limiter()
    tok = b"t" * 32
    n, a = rl.number_subject(tok), rl.account_subject("alice")
    assert re.fullmatch(r"n:[0-9a-f]{32}", n)
    assert re.fullmatch(r"u:[0-9a-f]{32}", a)
    assert check_subject(n) == n
    assert check_subject(a) == a
    assert "alice" not in a
    assert tok.hex()[:8] not in n
    # deterministic under one secret, so every server process charges the same bucket ...
    assert rl.number_subject(tok) == n
    assert rl.account_subject("alice") == a
    # ... and unlinkable under another
    other = RateLimiter(MemoryStore(), RateLimits(), b"j" * 32, Clock())
    assert other.number_subject(tok) != n
    assert other.account_subject("alice") != a
    # the same bytes as a number and as an account never share a bucket
    assert rl.number_subject(b"alice")[2:] != rl.account_subject("alice")[2:]


def test_no_user_id_can_name_a_namespaced_subject() -> None:
    # User ids never contain ':', so no account is called "g:all", "n:..." or "u:...".
    for subj in (GLOBAL_SUBJECT, "n:" + "0" * 32, "u:" + "0" * 32):
        with pytest.raises(InvalidInput):
            check_user_id(subj)
        assert check_subject(subj) == subj


def test_seen_sets_hold_keyed_fingerprints_not_tokens() -> None:
    rl, store, _ = limiter()
    toks = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    rl.new_tokens(rl.account_subject("alice"), toks)
    held = b"".join(f for seen in store._seen.values() for f in seen)
    assert len(held) == 5 * 8
    assert not any(t[:8] in held or t[-8:] in held for t in toks)


# -- the global ceiling and its reserve for light accounts -------------------------------------


def ceiling_limiter(**changes: object) -> tuple[RateLimiter, MemoryStore]:
    store = MemoryStore()
    return RateLimiter(store, small_limits(**changes), b"k" * 32, Clock()), store


def test_heavy_accounts_cannot_lock_a_light_account_out() -> None:
    rl, _ = ceiling_limiter()
    # two heavy accounts fill the shared 80% (800 of 1,000) of the daily ceiling
    rl.evaluations("u:heavy1", 400)
    rl.evaluations("u:heavy2", 400)
    with pytest.raises(RateLimited) as info:
        rl.evaluations("u:heavy3", 100)  # more than a light allowance: no reserve for it
    assert info.value.quota == "global-eval"
    # the shared part would have room for 100 more after 100 / (800 / day) seconds
    assert info.value.retry_after == pytest.approx(100 / (800 / DAY))
    # a new account still gets its first sync, from the reserve ...
    rl.evaluations("u:new", 30)
    # ... but only up to its light allowance (50 per day)
    with pytest.raises(RateLimited, match="global-eval"):
        rl.evaluations("u:new", 30)
    rl.evaluations("u:new", 20)


def test_the_reserve_itself_is_bounded() -> None:
    rl, _ = ceiling_limiter()
    rl.evaluations("u:heavy1", 400)
    rl.evaluations("u:heavy2", 400)
    # the reserve is 20% of 1,000: four fresh accounts drawing 50 each exhaust it
    for i in range(4):
        rl.evaluations(f"u:light{i}", 50)
    with pytest.raises(RateLimited, match="global-eval"):
        rl.evaluations("u:light4", 1)


def test_without_a_reserve_a_full_ceiling_refuses_everyone() -> None:
    rl, _ = ceiling_limiter(reserve_share=0.0)
    rl.evaluations("u:heavy1", 500)
    rl.evaluations("u:heavy2", 500)
    with pytest.raises(RateLimited, match="global-eval"):
        rl.evaluations("u:new", 1)


def test_an_account_over_its_own_quota_does_not_burn_the_ceiling() -> None:
    rl, store = ceiling_limiter()
    rl.evaluations("u:greedy", 500)
    for _ in range(10):
        with pytest.raises(RateLimited) as info:
            rl.evaluations("u:greedy", 100)
        assert info.value.quota == "eval"
    # the own quota is charged first: the refused requests left the shared ceiling alone
    level, _updated, _drain = store._buckets[(GLOBAL_SUBJECT, "global-eval")]
    assert level == 500
    rl.evaluations("u:other", 300)


# -- expire: rate state goes once it no longer affects a decision -----------------------------


def test_expire_drops_drained_buckets_then_lapsed_seen_entries() -> None:
    rl, _, clock = limiter()
    start = clock.now
    rl.new_tokens(rl.account_subject("alice"), tokens(10))
    assert rl.expire() == 0  # nothing has drained or lapsed yet
    # the account's lookup bucket (10 of 20,000 per 10 days) drains in 432 s, the global one
    # sooner: both rows go, the seen entries stay
    clock.now = start + 1_000
    assert rl.expire() == 2
    clock.now = start + rl.seen_ttl - 1
    assert rl.expire() == 0
    clock.now = start + rl.seen_ttl  # an entry exactly seen_ttl old has lapsed
    assert rl.expire() == 10
    assert rl.expire() == 0


def test_expire_passes_the_clock_and_the_seen_ttl() -> None:
    calls: list[tuple[float, float]] = []

    class Recording(MemoryStore):
        def expire_rate_state(self, now: float, seen_ttl: float) -> int:
            calls.append((now, seen_ttl))
            return 7

    clock = Clock()
    limits = RateLimits(new_buckets=Quota(name="bucket", capacity=20_000, period=20 * DAY))
    rl = RateLimiter(Recording(), limits, b"k" * 32, clock)
    assert rl.seen_ttl == 20 * DAY  # the longest "new items" period
    assert rl.expire() == 7
    assert calls == [(clock.now, 20 * DAY)]


def test_a_limiter_keeps_its_secret() -> None:
    rl, _, _ = limiter()
    assert "k" * 8 not in repr(rl)
    with pytest.raises(TypeError):
        pickle.dumps(rl)
