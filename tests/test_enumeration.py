"""Anti-enumeration evidence: scrapers with many accounts against the real service.

The sweeps run in a 1/20-scale world (quotas, plan and registry shrunk together) so that a
hundred accounts sweep for days in seconds; the normal user runs under the default quotas.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.keys import ServerKey
from contactmatch.lab import EnumerationReport, normal_user_check, simulate_enumeration
from contactmatch.oprf import Mode
from contactmatch.ratelimit import DAY, Quota, RateLimits, daily_bounds, quota_bound, scale_limits
from contactmatch.service import DEFAULT_SCHEMES, DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import BaseStore, open_store

SCALE = 0.05
LIMITS = scale_limits(RateLimits(), SCALE)
# A global ceiling that ten accounts stay under and a hundred exceed (at this scale).
CEILING = 10 * LIMITS.evaluations.capacity
CEILING_LIMITS = replace(
    LIMITS,
    global_evaluations=Quota(name="global-eval", capacity=CEILING, period=DAY),
    global_new_tokens=Quota(name="global-lookup", capacity=CEILING, period=DAY),
    # The ceiling is the subject here: one account may hold a large share of it, and no
    # reserve is held back for light accounts (tests/test_enumeration_holes.py covers that).
    max_account_share=1.0,
    reserve_share=0.0,
)
REGISTRY, PLAN, DAYS = 3_000, 300_000, 3


def sweep(accounts: int, **kw: object) -> EnumerationReport:
    args: dict[str, object] = {
        "accounts": accounts,
        "days": DAYS,
        "scheme": "hmac+lookup",
        "registry_size": REGISTRY,
        "plan_size": PLAN,
        "settings": ServiceSettings(limits=CEILING_LIMITS),
    }
    args.update(kw)
    return simulate_enumeration(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ten() -> EnumerationReport:
    return sweep(10)


@pytest.fixture(scope="module")
def hundred() -> EnumerationReport:
    return sweep(100)


def assert_within_bounds(rep: EnumerationReport, tightness: float) -> None:
    """Every day under the quota bound; the whole sweep close to it (the scraper is good)."""
    swept = 0
    for row, frac, bound in zip(
        rep.rows, rep.fraction_learned_per_day, rep.bound_per_day, strict=True
    ):
        swept += row.swept
        assert row.learned <= row.bound
        assert frac <= bound
        assert row.learned_total <= swept <= row.cumulative_bound, row
    assert swept >= tightness * rep.rows[-1].cumulative_bound
    # The bound is the sum of the days' allowances and equals the closed form.
    limits = CEILING_LIMITS if rep.scheme == "hmac+lookup" else LIMITS
    assert rep.rows[-1].cumulative_bound == pytest.approx(
        quota_bound(rep.scheme, limits, accounts=rep.accounts, seconds=rep.days * DAY)
    )


def assert_learns_what_it_sweeps(rep: EnumerationReport) -> None:
    # Registered users are spread at random over the plan: a blind sweep learns the density.
    expected = rep.swept_total * rep.registry_size / rep.plan_size
    assert 0.5 * expected <= rep.learned_total <= 1.5 * expected


def test_quota_bound_closed_form() -> None:
    lim = RateLimits()
    ev, gev = lim.evaluations, lim.global_evaluations
    for accounts in (1, 10, 100, 10_000):
        for days in (1, 10):
            t = days * DAY
            per_account = ev.capacity + ev.capacity / ev.period * t
            expected = min(accounts * per_account, gev.capacity + gev.capacity / gev.period * t)
            assert quota_bound("oprf+filter", lim, accounts=accounts, seconds=t) == expected
    # Lookups with public tokens are bounded by the lookup quota; offline schemes not at all.
    lk = lim.new_tokens
    assert quota_bound("sha256+lookup", lim, accounts=1, seconds=DAY) == lk.bound(DAY)
    assert quota_bound("sha256+filter", lim, accounts=1, seconds=DAY) == float("inf")
    per_day = daily_bounds("oprf+bucket", lim, accounts=7, days=10)
    assert sum(per_day) == pytest.approx(
        quota_bound("oprf+bucket", lim, accounts=7, seconds=10 * DAY)
    )
    assert per_day[0] > per_day[1] == pytest.approx(7 * ev.capacity / ev.period * DAY)


def test_ten_accounts_are_held_to_their_quotas(ten: EnumerationReport) -> None:
    assert ten.binding == "per-account quota"
    assert_within_bounds(ten, tightness=0.9)
    assert_learns_what_it_sweeps(ten)
    assert ten.fraction_learned < 0.1
    # Day 1 spends the full buckets; afterwards only the refill, every day.
    refill = ten.accounts * LIMITS.evaluations.refill_per_s * DAY
    for row in ten.rows[1:]:
        assert row.swept <= refill + ten.accounts * LIMITS.evaluations.capacity / 10


def test_hundred_accounts_hit_the_global_ceiling(
    ten: EnumerationReport, hundred: EnumerationReport
) -> None:
    assert hundred.binding == "global ceiling"
    assert_within_bounds(hundred, tightness=0.85)
    assert_learns_what_it_sweeps(hundred)
    ceiling = CEILING_LIMITS.global_evaluations
    for row in hundred.rows:
        assert row.cumulative_bound == pytest.approx(ceiling.bound(row.day * DAY))
        assert row.cumulative_bound < 0.5 * 100 * LIMITS.evaluations.bound(row.day * DAY)
    # Ten times the accounts buy far less than ten times the numbers: the ceiling holds.
    assert hundred.swept_total < 5 * ten.swept_total
    assert hundred.fraction_learned < 0.25
    assert sum(r.refused for r in hundred.rows) > 0  # the ceiling is what refused them


def test_default_oprf_flow_hits_the_same_wall() -> None:
    rep = simulate_enumeration(
        accounts=4,
        days=3,
        scheme="oprf+filter",
        registry_size=2_000,
        plan_size=200_000,
        settings=ServiceSettings(limits=LIMITS),
    )
    assert rep.binding == "per-account quota"
    assert_within_bounds(rep, tightness=0.9)
    assert rep.learned_total > 0


def test_two_servers_share_one_quota(tmp_path: Path) -> None:
    """A greedy scraper rotating over two processes on one SQLite file gets no more."""
    reports = [
        sweep(
            3,
            registry_size=1_000,
            plan_size=100_000,
            settings=ServiceSettings(limits=LIMITS),
            servers=servers,
            store_url=f"sqlite:///{tmp_path / f'shared-{servers}.db'}",
            strategy="greedy",
        )
        for servers in (1, 2)
    ]
    for rep in reports:
        assert_within_bounds(rep, tightness=0.85)
        assert sum(r.refused for r in rep.rows) > 0  # greedy: it did push against the quota
    one, two = reports
    assert two.servers == 2
    assert two.swept_total <= one.swept_total * 1.02


def _pair(stores: tuple[BaseStore, BaseStore]) -> tuple[DiscoveryServer, DiscoveryServer]:
    key = ServerKey.derive(b"\x07" * 32, b"shared", Mode.OPRF)
    data_key = DataKey.generate("dk-shared")
    cfg = ServiceSettings(schemes=("hmac+lookup",), limits=LIMITS)
    clock = lambda: 1_700_000_000.0  # noqa: E731 - a frozen clock: no refill between calls
    a = DiscoveryServer(stores[0], key, data_key, settings=cfg, _clock=clock)
    a.register("scraper", "+989350000000")
    b = DiscoveryServer(stores[1], key, data_key, settings=cfg, _clock=clock)
    if stores[1] is not stores[0] and not stores[1].get_users(["scraper"])[0]:
        b.register("scraper", "+989350000000")  # separate stores: register there too
    return a, b


@pytest.mark.parametrize("shared", [True, False], ids=["one-sqlite-file", "separate-memory"])
def test_quota_state_lives_in_the_store(tmp_path: Path, shared: bool) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    stores = (open_store(url), open_store(url)) if shared else (
        open_store("memory://"), open_store("memory://"))  # fmt: skip
    try:
        a, b = _pair(stores)
        cap = int(LIMITS.evaluations.capacity)
        numbers = [f"+98912{i:07d}" for i in range(cap + 1)]
        client = DiscoveryClient(a.info("hmac+lookup"))
        first = client.finalize(a.discover("scraper", client.prepare(numbers[:cap])))
        assert first.next_request is not None  # evaluated: the whole bucket is spent
        request = DiscoveryClient(b.info("hmac+lookup")).prepare(numbers[cap:])
        if shared:
            with pytest.raises(RateLimited) as exc:
                b.discover("scraper", request)
            assert exc.value.retry_after > 0
            assert exc.value.quota == LIMITS.evaluations.name
        else:  # the control: servers that keep state apart let the scraper through
            b.discover("scraper", request)
    finally:
        for st in stores:
            st.close()


@pytest.mark.parametrize("scheme", DEFAULT_SCHEMES)
def test_normal_user_is_never_rate_limited(scheme: str) -> None:
    rep = normal_user_check(scheme=scheme, book_size=5_000, resyncs=10)
    assert len(rep.rows) == 11
    assert not rep.ever_rate_limited
    assert rep.all_correct
    first, *later = rep.rows
    assert first.contacts == 5_000
    assert first.matches == rep.registered_in_book == round(5_000 * 0.3)
    assert first.evaluations == 5_000
    for prev, row in zip(rep.rows, later, strict=False):
        # The token cache: a re-sync evaluates only the contacts added since the last one.
        assert row.evaluations == row.contacts - prev.contacts
        assert row.new_tokens <= row.contacts - prev.contacts
        assert row.requests <= 2
    used = rep.used()
    assert max(used.values()) < 0.5
    assert rep.requests <= 2 * len(rep.rows)


def test_normal_user_check_notices_quotas_too_tight() -> None:
    # At 1/50 of the defaults an account evaluates fewer numbers than a 500-contact book holds.
    rep = normal_user_check(
        book_size=500, resyncs=0, settings=ServiceSettings(limits=scale_limits(RateLimits(), 0.02))
    )
    assert rep.ever_rate_limited


def test_simulation_rejects_what_it_cannot_simulate() -> None:
    with pytest.raises(InvalidInput):
        sweep(1, servers=2)  # memory:// cannot be shared by two processes
    with pytest.raises(InvalidInput):
        sweep(1, scheme="sha256+filter")  # offline: no quota to simulate against
    with pytest.raises(InvalidInput):
        sweep(1, registry_size=10, plan_size=5)
    with pytest.raises(InvalidInput):
        sweep(1, strategy="polite")
