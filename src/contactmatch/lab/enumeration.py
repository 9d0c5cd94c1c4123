"""Enumeration by many accounts: scrapers sweep the numbering plan through the real service.

A scraper with many accounts sweeps the plan through the real
:class:`~contactmatch.service.DiscoveryServer` (real store, real rate limiter, a simulated
clock), and the registered users it learns each day are compared with the bound the quotas
imply (:func:`~contactmatch.ratelimit.daily_bounds`). What the simulation shows is only as good
as its scrapers, so they are good ones: each knows the published quotas and its own history,
sends the largest batch that fits, and holds back when a global ceiling refuses anyone.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.lab._sim import EPOCH, SimClock, lab_key
from contactmatch.lab.plan import load_plan
from contactmatch.ratelimit import (
    DAY,
    Quota,
    RateLimits,
    binding_quota,
    daily_bounds,
    scheme_quotas,
)
from contactmatch.schemes.base import get_scheme
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import open_store
from contactmatch.stores.leaky import leak

__all__ = ["EnumerationDay", "EnumerationReport", "simulate_enumeration"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnumerationDay:
    """One simulated day of a sweep (counts, not numbers)."""

    day: int
    #: Candidate numbers whose discovery completed that day.
    swept: int
    #: Registered users learned that day for the first time (distinct over all accounts).
    learned: int
    learned_total: int
    #: Requests the service refused with RateLimited.
    refused: int
    #: Allowance the quotas released that day (see :func:`~contactmatch.ratelimit.daily_bounds`).
    bound: float
    #: Allowance released since the sweep began: a hard bound on swept and learned so far.
    cumulative_bound: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EnumerationReport:
    """What a many-account scraper achieved against the quotas, day by day."""

    scheme: str
    accounts: int
    days: int
    registry_size: int
    plan_size: int
    servers: int
    binding: str
    rows: tuple[EnumerationDay, ...]
    wall_seconds: float = 0.0

    @property
    def swept_total(self) -> int:
        return sum(r.swept for r in self.rows)

    @property
    def learned_total(self) -> int:
        return self.rows[-1].learned_total if self.rows else 0

    @property
    def fraction_learned(self) -> float:
        """Share of the registered population learned over the whole sweep."""
        return self.learned_total / self.registry_size

    @property
    def fraction_learned_per_day(self) -> list[float]:
        """Share of the registered population newly learned on each day."""
        return [r.learned / self.registry_size for r in self.rows]

    @property
    def bound_per_day(self) -> list[float]:
        """The quota allowance of each day as a share of the registered population."""
        return [r.bound / self.registry_size for r in self.rows]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``contactmatch audit --json``); counts only.

        An unbounded allowance is ``None``: JSON has no infinity.
        """

        def num(x: float) -> float | None:
            return None if math.isinf(x) else x

        return {
            "scheme": self.scheme,
            "accounts": self.accounts,
            "days": self.days,
            "registry_size": self.registry_size,
            "plan_size": self.plan_size,
            "servers": self.servers,
            "binding": self.binding,
            "swept_total": self.swept_total,
            "learned_total": self.learned_total,
            "fraction_learned": self.fraction_learned,
            "wall_seconds": self.wall_seconds,
            "rows": [
                {
                    "day": r.day,
                    "swept": r.swept,
                    "refused": r.refused,
                    "learned": r.learned,
                    "learned_total": r.learned_total,
                    "bound": num(r.bound),
                    "cumulative_bound": num(r.cumulative_bound),
                }
                for r in self.rows
            ],
        }


class _BucketModel:
    """A scraper's own model of one of its leaky buckets, from public quotas and its history.

    The scraper cannot read the server's bucket; it replays the published leaky-bucket rule
    over what it has been charged, as a real operator would.
    """

    def __init__(self, quota: Quota, now: float) -> None:
        self.quota = quota
        self.level = 0.0
        self.updated = now

    def _level(self, now: float) -> float:
        return leak(self.level, self.updated, now, self.quota.refill_per_s)

    def available(self, now: float) -> float:
        return self.quota.capacity - self._level(now)

    def wait(self, n: float, now: float) -> float:
        return max(0.0, (self._level(now) + n - self.quota.capacity) / self.quota.refill_per_s)

    def charge(self, n: float, now: float) -> None:
        self.level = self._level(now) + n
        self.updated = now


@dataclass
class _Scraper:
    uid: str
    client: DiscoveryClient
    evals: _BucketModel | None
    lookups: _BucketModel | None
    max_batch: int
    #: Keeps no model of its quotas: sends what it can and learns only from refusals.
    greedy: bool = False
    leftover: list[str] = field(default_factory=list)


class _Sweep:
    """The shared state of one operator's accounts: the plan cursor and what was learned."""

    def __init__(
        self,
        servers: Sequence[DiscoveryServer],
        clock: SimClock,
        plan_size: int,
        min_batch: int,
        rng: random.Random,
    ) -> None:
        self.servers = servers
        self.clock = clock
        self.plan = load_plan()
        self.plan_size = plan_size
        self.cursor = 0
        self.min_batch = min_batch
        self.rng = rng
        self.sent = 0
        self.learned: set[str] = set()
        self.swept = 0
        self.refused = 0
        # The operator learns a global ceiling from any account's refusal (the error names
        # the quota) and holds every account back until it clears, instead of letting a
        # hundred accounts hammer it.
        self.global_until = 0.0

    def _send(self, uid: str) -> Callable[[bytes], bytes]:
        def send(request: bytes) -> bytes:
            # Requests rotate over the server processes, as a load balancer would spread them.
            srv = self.servers[self.sent % len(self.servers)]
            self.sent += 1
            return srv.discover(uid, request)

        return send

    def _take_numbers(self, s: _Scraper, n: int) -> list[str]:
        out = s.leftover[:n]
        s.leftover = s.leftover[n:]
        while len(out) < n and self.cursor < self.plan_size:
            out.append(self.plan.number(self.plan.swept, self.cursor))
            self.cursor += 1
        return out

    def step(self, s: _Scraper) -> float | None:
        """One attempt by ``s`` now; returns when it next acts, or None once the plan is done."""
        now = self.clock.now
        if now < self.global_until:
            return self.global_until + self.rng.uniform(0.0, 60.0)
        models = [m for m in (s.evals, s.lookups) if m is not None]
        avail = min([float(s.max_batch), *(m.available(now) for m in models)])
        batch = int(avail + 1e-6)
        if batch < min(self.min_batch, s.max_batch):
            if not s.leftover and self.cursor >= self.plan_size:
                return None
            need = min(self.min_batch, s.max_batch)
            return now + max(m.wait(need, now) for m in models) + 1.0
        numbers = self._take_numbers(s, batch)
        if not numbers:
            return None
        key_id = s.client.info.key_id
        uncached = sum((key_id, n) not in s.client.cache for n in numbers)
        try:
            result = s.client.discover(numbers, self._send(s.uid))
        except RateLimited as exc:
            self.refused += 1
            evaluated = uncached - sum((key_id, n) not in s.client.cache for n in numbers)
            if s.evals is not None:
                s.evals.charge(evaluated, now)
            s.leftover = numbers + s.leftover
            if exc.quota.startswith("global"):
                self.global_until = max(self.global_until, now + exc.retry_after)
            elif math.isinf(exc.retry_after) or (s.greedy and s.max_batch > self.min_batch):
                # Larger than the bucket (only smaller ones ever fit), or a greedy account
                # probing for whatever smaller batch fits right now.
                s.max_batch = max(1, s.max_batch // 2)
                return now + 1.0
            return now + exc.retry_after + 1.0
        if s.evals is not None:
            s.evals.charge(uncached, now)
        if s.lookups is not None:
            s.lookups.charge(len(numbers), now)
        self.swept += len(numbers)
        self.learned.update(result.matches.values())
        return now + 1.0


def simulate_enumeration(
    *,
    accounts: int,
    days: int,
    scheme: str,
    registry_size: int,
    plan_size: int,
    settings: ServiceSettings | None = None,
    seed: int = 0,
    store_url: str = "memory://",
    servers: int = 1,
    min_batch: int | None = None,
    strategy: str = "informed",
    on_day: Callable[[EnumerationDay], None] | None = None,
) -> EnumerationReport:
    """Simulate ``accounts`` scraper accounts sweeping a numbering plan for ``days`` days.

    ``registry_size`` users are registered at random numbers of a plan of ``plan_size``
    numbers (the plan file's swept range, e.g. ``+98912`` and 7 digits); the scrapers,
    registered users too, sweep the plan in order through :class:`DiscoveryClient` against
    real servers on one store, under a clock that only the simulation advances. Each account
    sends the largest batch its quotas allow (it knows the published quotas and its own
    history, never the server's state), waits for ``min_batch`` to fit otherwise, and resends
    a refused request only once its retry-after has passed.

    Args:
        accounts: scraper accounts run by one operator.
        days: simulated days.
        scheme: the scheme served and attacked (keyed ones are rate-limited).
        registry_size: registered users in the plan.
        plan_size: numbers in the plan (at most one range of the plan, 10^7 for Iran).
        settings: service settings (quotas); the served schemes are replaced by ``scheme``.
        seed: seeds the registry draw and the server key.
        store_url: a fresh store; a shared one (``sqlite:///file``) for ``servers`` > 1.
        servers: server processes over the store; requests rotate over them.
        min_batch: smallest batch worth a request (default: a tenth of a day's refill).
        strategy: ``informed`` accounts model their own quotas from the published ones and
            send exactly what fits; ``greedy`` ones model nothing, send the largest batch and
            halve it on refusal (what exploits servers that do not share state).
        on_day: called with each finished day (progress bars).

    Returns:
        An :class:`EnumerationReport` with one row per day.

    Raises:
        InvalidInput: a size is out of range, or several servers over ``memory://``.
    """
    plan = load_plan()
    if accounts < 1 or days < 1 or servers < 1:
        raise InvalidInput("accounts, days and servers must be at least 1")
    if not 0 < registry_size <= plan_size <= plan.range_size:
        raise InvalidInput(f"need 0 < registry_size <= plan_size <= {plan.range_size}")
    if strategy not in ("informed", "greedy"):
        raise InvalidInput("strategy must be 'informed' or 'greedy'")
    if servers > 1 and store_url.startswith("memory:"):
        raise InvalidInput("several servers share state only through a persistent store")
    started = time.perf_counter()
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    cfg = replace(settings or ServiceSettings(), schemes=(scheme,))
    limits = cfg.limits
    own, _ = scheme_quotas(scheme, limits)
    if not own:
        raise InvalidInput(f"{scheme} is swept offline; no quota applies to simulate")
    clock = SimClock(EPOCH)
    key = lab_key(scheme, seed)
    data_key = DataKey.generate("dk-audit")
    stores = [open_store(store_url) for _ in range(servers)]
    try:
        first = DiscoveryServer(stores[0], key, data_key, settings=cfg, _clock=clock)
        registered = rng.sample(range(plan_size), registry_size)
        scraper_ids = [f"scraper-{k}" for k in range(accounts)]
        first.register_many(
            [(f"user-{i}", plan.number(plan.swept, i)) for i in registered]
            + [(uid, plan.number(plan.scrapers, k)) for k, uid in enumerate(scraper_ids)]
        )
        # Further servers start after the registrations, as processes restarted on the same
        # database would: they load the registry from the store.
        fleet = [first] + [
            DiscoveryServer(st, key, data_key, settings=cfg, _clock=clock) for st in stores[1:]
        ]
        daily_refill = min(q.refill_per_s for q in own) * DAY
        sweep = _Sweep(fleet, clock, plan_size, min_batch or max(1, int(daily_refill / 10)), rng)
        scrapers = _make_scrapers(first, scheme, limits, scraper_ids, greedy=strategy == "greedy")
        bounds = daily_bounds(scheme, limits, accounts=accounts, days=days)
        rows = _run_days(sweep, scrapers, bounds, on_day)
    finally:
        for st in stores:
            st.close()
    return EnumerationReport(
        scheme=scheme,
        accounts=accounts,
        days=days,
        registry_size=registry_size,
        plan_size=plan_size,
        servers=servers,
        binding=binding_quota(scheme, limits, accounts=accounts, seconds=days * DAY),
        rows=tuple(rows),
        wall_seconds=time.perf_counter() - started,
    )


def _make_scrapers(
    server: DiscoveryServer,
    scheme: str,
    limits: RateLimits,
    uids: Sequence[str],
    *,
    greedy: bool,
) -> list[_Scraper]:
    s = get_scheme(scheme)
    own, _ = scheme_quotas(scheme, limits)
    info = server.info(scheme)
    blob = server.published_filter(scheme) if s.publishes_filter else None
    # The largest request the service could ever accept: no bucket holds more than its
    # capacity, and no request more than max_items.
    largest = int(min([float(limits.max_items), *(q.capacity for q in own)]))
    if greedy:  # knows only the published request size limit
        largest = limits.max_items
    informed = not greedy
    return [
        _Scraper(
            uid=uid,
            client=DiscoveryClient(info, filter_blob=blob),
            evals=_BucketModel(limits.evaluations, EPOCH) if s.interactive and informed else None,
            lookups=_BucketModel(limits.new_tokens, EPOCH)
            if s.sends_every_token and informed
            else None,
            max_batch=largest,
            greedy=greedy,
        )
        for uid in uids
    ]


def _run_days(
    sweep: _Sweep,
    scrapers: Sequence[_Scraper],
    bounds: Sequence[float],
    on_day: Callable[[EnumerationDay], None] | None,
) -> list[EnumerationDay]:
    """Advance the simulated clock event by event, one day at a time, recording each day."""
    # Accounts start a second apart so that their first requests do not share an instant.
    queue = [(EPOCH + k * 1.0, k) for k in range(len(scrapers))]
    heapq.heapify(queue)
    rows: list[EnumerationDay] = []
    cumulative = 0.0
    for d, bound in enumerate(bounds):
        end = EPOCH + (d + 1) * DAY
        swept0, learned0, refused0 = sweep.swept, len(sweep.learned), sweep.refused
        while queue and queue[0][0] < end:
            when, k = heapq.heappop(queue)
            sweep.clock.now = when
            nxt = sweep.step(scrapers[k])
            if nxt is not None:
                heapq.heappush(queue, (max(nxt, when + 1e-3), k))
        cumulative += bound
        row = EnumerationDay(
            day=d + 1,
            swept=sweep.swept - swept0,
            learned=len(sweep.learned) - learned0,
            learned_total=len(sweep.learned),
            refused=sweep.refused - refused0,
            bound=bound,
            cumulative_bound=cumulative,
        )
        rows.append(row)
        if on_day is not None:
            on_day(row)
    return rows
