"""The attack lab: enumeration by many accounts, reversal of unsalted hashes, what leaks.

Three attacks a contact-discovery service must be judged against, run for real:

- **Enumeration.** A scraper with many accounts sweeps the numbering plan through the real
  :class:`~contactmatch.service.DiscoveryServer` (real store, real rate limiter, a simulated
  clock), and the registered users it learns each day are compared with the bound the quotas
  imply. :func:`normal_user_check` shows a person's first sync and daily re-syncs stay clear of
  the same quotas.
- **Hash reversal.** A database thief holding unsalted ``sha256`` tokens hashes the numbering
  plan and reads the numbers back (:func:`reverse_sha256`); keyed tokens (HMAC, OPRF) resist.
- **Leakage.** :func:`leakage_report` states what each scheme reveals, and the quota bounds in
  words.

``contactmatch audit`` (:func:`audit_command`) runs them with rich tables and progress bars.
Numbers never leave this module unmasked in anything printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.schemes.base import get_scheme, leakage_table, scheme_names
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import open_store
from contactmatch.stores.base import RegistryStore, TakeResult, leak

__all__ = [
    "DAY",
    "EnumerationDay",
    "EnumerationReport",
    "NormalUserReport",
    "ReversalReport",
    "SyncRow",
    "audit_command",
    "daily_bounds",
    "leakage_report",
    "normal_user_check",
    "quota_bound",
    "reverse_sha256",
    "scale_limits",
    "simulate_enumeration",
]

DAY = 86_400.0
#: The synthetic numbering plan: an Iranian mobile operator prefix followed by 7 digits.
PLAN_PREFIX = "+98912"
PLAN_DIGITS = 7
#: Scraper accounts and a normal user's unregistered contacts live outside the swept plan.
SCRAPER_PREFIX = "+98935"
OTHER_PREFIX = "+98919"
#: Simulated time starts here (any positive instant works; this one reads as a 2023 date).
EPOCH = 1_700_000_000.0
#: Size of a national mobile plan that reversal timings are extrapolated to.
NATIONAL_PLAN = 10**9


# -- quota arithmetic ---------------------------------------------------------------------------
def scale_limits(limits: RateLimits, factor: float) -> RateLimits:
    """The same quotas with every number-counting capacity and ``max_items`` times ``factor``.

    Periods stay, so per-day shapes are preserved; the request, write and registration quotas
    stay too, because they count requests, not numbers. Tests and quick audits use this to
    sweep a plan scaled by the same factor in seconds rather than hours.

    Raises:
        InvalidInput: ``factor`` is not positive.
    """
    if not factor > 0:
        raise InvalidInput("a quota scale factor must be positive")

    def s(q: Quota) -> Quota:
        return Quota(name=q.name, capacity=q.capacity * factor, period=q.period)

    return dataclasses.replace(
        limits,
        evaluations=s(limits.evaluations),
        new_tokens=s(limits.new_tokens),
        new_buckets=s(limits.new_buckets),
        global_evaluations=s(limits.global_evaluations),
        global_new_tokens=s(limits.global_new_tokens),
        light_allowance=s(limits.light_allowance),
        max_items=max(1, round(limits.max_items * factor)),
    )


def _scheme_quotas(scheme: str, limits: RateLimits) -> tuple[list[Quota], list[Quota]]:
    """Per-account and global quotas every swept number of ``scheme`` is charged against."""
    s = get_scheme(scheme)
    own: list[Quota] = []
    ceilings: list[Quota] = []
    if s.interactive:  # one evaluation per candidate number, blinded or not
        own.append(limits.evaluations)
        ceilings.append(limits.global_evaluations)
    if s.method == "lookup":  # and one never-seen token per candidate
        own.append(limits.new_tokens)
        ceilings.append(limits.global_new_tokens)
    # Public tokens with a filter or buckets need no per-number server work at all: the
    # scraper hashes the plan offline, so ``own`` stays empty and nothing bounds it.
    return own, ceilings


def quota_bound(scheme: str, limits: RateLimits, *, accounts: int, seconds: float) -> float:
    """Most candidate numbers ``accounts`` accounts can test in ``seconds`` from full quotas.

    ``min(accounts × min_q q.bound(seconds), min_g g.bound(seconds))`` over the per-account
    quotas ``q`` and global ceilings ``g`` that charge each number of ``scheme``, where
    ``Quota.bound(t) = capacity + capacity / period × t``. Each tested number reveals at most
    one registered user, so this also bounds the users learned. Infinite for schemes a scraper
    runs offline (public tokens with a filter or buckets).
    """
    own, ceilings = _scheme_quotas(scheme, limits)
    if not own:
        return math.inf
    per_account = min(q.bound(seconds) for q in own)
    return min([accounts * per_account, *(g.bound(seconds) for g in ceilings)])


def daily_bounds(scheme: str, limits: RateLimits, *, accounts: int, days: int) -> list[float]:
    """The allowance the quotas release on each day: ``C(d) − C(d−1)``, ``C`` = quota_bound.

    Day 1 carries the full buckets (the first-sync burst); later days the refill rate. The
    cumulative sum over days 1..d is ``C(d)``, a bound no scraper strategy can beat.
    """
    out: list[float] = []
    prev = 0.0
    for d in range(1, days + 1):
        cum = quota_bound(scheme, limits, accounts=accounts, seconds=d * DAY)
        out.append(cum - prev)
        prev = cum
    return out


def _binding(scheme: str, limits: RateLimits, accounts: int, seconds: float) -> str:
    own, ceilings = _scheme_quotas(scheme, limits)
    if not own:
        return "none (offline)"
    per_account = accounts * min(q.bound(seconds) for q in own)
    ceiling = min((g.bound(seconds) for g in ceilings), default=math.inf)
    return "global ceiling" if ceiling < per_account else "per-account quota"


# -- enumeration simulation ---------------------------------------------------------------------
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
    #: Allowance the quotas released that day (see :func:`daily_bounds`).
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


class _SimClock:
    """The simulated wall clock handed to the server's ``_clock`` hook."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class _Mirror:
    """A scraper's own model of one of its leaky buckets, from public quotas and its history."""

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
    evals: _Mirror | None
    lookups: _Mirror | None
    max_batch: int
    #: Keeps no model of its quotas: sends what it can and learns only from refusals.
    greedy: bool = False
    leftover: list[str] = field(default_factory=list)


class _Sweep:
    """The shared state of one operator's accounts: the plan cursor and what was learned."""

    def __init__(
        self,
        servers: Sequence[DiscoveryServer],
        clock: _SimClock,
        plan_size: int,
        min_batch: int,
        rng: random.Random,
    ) -> None:
        self.servers = servers
        self.clock = clock
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
            out.append(f"{PLAN_PREFIX}{self.cursor:0{PLAN_DIGITS}d}")
            self.cursor += 1
        return out

    def step(self, s: _Scraper) -> float | None:
        """One attempt by ``s`` now; returns when it next acts, or None once the plan is done."""
        now = self.clock.now
        if now < self.global_until:
            return self.global_until + self.rng.uniform(0.0, 60.0)
        mirrors = [m for m in (s.evals, s.lookups) if m is not None]
        avail = min([float(s.max_batch), *(m.available(now) for m in mirrors)])
        batch = int(avail + 1e-6)
        if batch < min(self.min_batch, s.max_batch):
            if not s.leftover and self.cursor >= self.plan_size:
                return None
            need = min(self.min_batch, s.max_batch)
            return now + max(m.wait(need, now) for m in mirrors) + 1.0
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


def _server_key(scheme: str, seed: int) -> ServerKey:
    mode = Mode.VOPRF if get_scheme(scheme).token == "voprf" else Mode.OPRF
    return ServerKey.derive(seed.to_bytes(8, "big") * 4, b"contactmatch/audit", mode)


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
    numbers (``+98912`` and 7 digits); the scrapers, registered users too, sweep the plan in
    order through :class:`DiscoveryClient` against real servers on one store, under a clock
    that only the simulation advances. Each account sends the largest batch its quotas allow
    (it knows the published quotas and its own history, never the server's state), waits for
    ``min_batch`` to fit otherwise, and resends a refused request only once its retry-after
    has passed.

    Args:
        accounts: scraper accounts run by one operator.
        days: simulated days.
        scheme: the scheme served and attacked (keyed ones are rate-limited).
        registry_size: registered users in the plan.
        plan_size: numbers in the plan (at most 10^7).
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
    if accounts < 1 or days < 1 or servers < 1:
        raise InvalidInput("accounts, days and servers must be at least 1")
    if not 0 < registry_size <= plan_size <= 10**PLAN_DIGITS:
        raise InvalidInput(f"need 0 < registry_size <= plan_size <= 10^{PLAN_DIGITS}")
    if strategy not in ("informed", "greedy"):
        raise InvalidInput("strategy must be 'informed' or 'greedy'")
    if servers > 1 and store_url.startswith("memory:"):
        raise InvalidInput("several servers share state only through a persistent store")
    started = time.perf_counter()
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    cfg = replace(settings or ServiceSettings(), schemes=(scheme,))
    limits = cfg.limits
    own, _ = _scheme_quotas(scheme, limits)
    if not own:
        raise InvalidInput(f"{scheme} is swept offline; no quota applies to simulate")
    clock = _SimClock(EPOCH)
    key = _server_key(scheme, seed)
    data_key = DataKey.generate("dk-audit")
    stores = [open_store(store_url) for _ in range(servers)]
    try:
        first = DiscoveryServer(stores[0], key, data_key, settings=cfg, _clock=clock)
        registered = rng.sample(range(plan_size), registry_size)
        scraper_ids = [f"scraper-{k}" for k in range(accounts)]
        first.register_many(
            [(f"user-{i}", f"{PLAN_PREFIX}{i:0{PLAN_DIGITS}d}") for i in registered]
            + [(uid, f"{SCRAPER_PREFIX}{k:07d}") for k, uid in enumerate(scraper_ids)]
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
        binding=_binding(scheme, limits, accounts, days * DAY),
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
    own, _ = _scheme_quotas(scheme, limits)
    info = server.info(scheme)
    blob = server.published_filter(scheme) if s.method == "filter" else None
    # The largest request the service could ever accept: no bucket holds more than its
    # capacity, and no request more than max_items.
    largest = int(min([float(limits.max_items), *(q.capacity for q in own)]))
    if greedy:  # knows only the published request size limit
        largest = limits.max_items
    return [
        _Scraper(
            uid=uid,
            client=DiscoveryClient(info, filter_blob=blob),
            evals=_Mirror(limits.evaluations, EPOCH) if s.interactive and not greedy else None,
            lookups=_Mirror(limits.new_tokens, EPOCH)
            if s.method == "lookup" and not greedy
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


# -- a normal user ------------------------------------------------------------------------------
class _MeteredStore:
    """A store that passes everything through and tallies the quota units actually charged."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self.charged: Counter[tuple[str, str]] = Counter()

    def take(
        self,
        subject: str,
        quota: str,
        cost: float,
        *,
        capacity: float,
        refill_per_s: float,
        now: float,
    ) -> TakeResult:
        res = self._store.take(
            subject, quota, cost, capacity=capacity, refill_per_s=refill_per_s, now=now
        )
        if res.allowed:
            self.charged[(subject, quota)] += int(cost)
        return res

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRow:
    """One sync of the normal user: what it cost against each quota."""

    day: int
    contacts: int
    requests: int
    #: Units charged to the user's quotas by this sync.
    evaluations: int
    new_tokens: int
    new_buckets: int
    matches: int
    #: The matches equal the registered contacts of the book.
    correct: bool
    rate_limited: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalUserReport:
    """A person's first sync and daily re-syncs, and how much of each quota they used."""

    scheme: str
    book_size: int
    registered_in_book: int
    limits: RateLimits
    rows: tuple[SyncRow, ...]

    @property
    def ever_rate_limited(self) -> bool:
        return any(r.rate_limited for r in self.rows)

    @property
    def all_correct(self) -> bool:
        return all(r.correct for r in self.rows)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rows)

    def used(self) -> dict[str, float]:
        """Units charged over all syncs as a share of each quota's capacity."""
        lim = self.limits
        return {
            lim.evaluations.name: sum(r.evaluations for r in self.rows) / lim.evaluations.capacity,
            lim.new_tokens.name: sum(r.new_tokens for r in self.rows) / lim.new_tokens.capacity,
            lim.new_buckets.name: sum(r.new_buckets for r in self.rows) / lim.new_buckets.capacity,
            lim.requests.name: max((r.requests for r in self.rows), default=0)
            / lim.requests.capacity,
        }


def normal_user_check(
    *,
    scheme: str = "oprf+filter",
    book_size: int = 5_000,
    registered_fraction: float = 0.3,
    resyncs: int = 10,
    registry_size: int | None = None,
    new_contacts_per_day: int = 5,
    joins_per_day: int = 20,
    settings: ServiceSettings | None = None,
    seed: int = 0,
    store_url: str = "memory://",
) -> NormalUserReport:
    """A person's first sync of ``book_size`` contacts and ``resyncs`` daily re-syncs.

    Every day some people join (a few of them in the book), the book gains a few contacts and
    the client re-syncs with its token cache and, for filter schemes, a filter delta. The
    quotas are the service's (defaults unless ``settings`` says otherwise).

    Args:
        scheme: the flow (``oprf+filter`` or ``oprf+bucket`` are the defaults a backend runs).
        book_size: contacts in the phone book at the first sync.
        registered_fraction: share of the book registered at the first sync.
        resyncs: daily re-syncs after the first sync.
        registry_size: registered users in total (default: twice the book's registered ones).
        new_contacts_per_day: contacts added to the book each day.
        joins_per_day: new registrations each day (one in ten is in the book).
        settings: service settings; the served schemes are replaced by ``scheme``.
        seed: seeds the workload and the key.
        store_url: a fresh store.

    Returns:
        A :class:`NormalUserReport` with one row per sync.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    cfg = replace(settings or ServiceSettings(), schemes=(scheme,))
    clock = _SimClock(EPOCH)
    in_book = round(book_size * registered_fraction)
    total = registry_size if registry_size is not None else max(2 * in_book, in_book + 1)
    if not 0 <= in_book <= total or not 0 <= in_book <= book_size:
        raise InvalidInput("the registry must hold the book's registered contacts")
    metered = _MeteredStore(open_store(store_url))
    try:
        server = DiscoveryServer(
            cast(RegistryStore, metered), _server_key(scheme, seed), DataKey.generate(),
            settings=cfg, _clock=clock,
        )  # fmt: skip
        # Registered numbers (now and later joiners) come from the plan, the book's other
        # contacts from another prefix, so the two never collide.
        picks = iter(rng.sample(range(10**PLAN_DIGITS), total + resyncs * joins_per_day))
        fresh = iter(rng.sample(range(10**PLAN_DIGITS), book_size + resyncs * new_contacts_per_day))
        registry = {f"{PLAN_PREFIX}{next(picks):07d}": f"user-{i}" for i in range(total)}
        server.register_many([(u, n) for n, u in registry.items()])
        server.register(_NORMAL_USER, f"{SCRAPER_PREFIX}0000000")
        book = rng.sample(list(registry), in_book)
        book += [f"{OTHER_PREFIX}{next(fresh):07d}" for _ in range(book_size - in_book)]
        rng.shuffle(book)
        syncer = _Syncer(server, scheme, metered, cfg.limits)
        rows = [syncer.sync(0, book, registry)]
        for day in range(1, resyncs + 1):
            clock.now = EPOCH + day * DAY
            newcomers = {f"{PLAN_PREFIX}{next(picks):07d}": f"joined-{day}-{j}"
                         for j in range(joins_per_day)}  # fmt: skip
            server.register_many([(u, n) for n, u in newcomers.items()])
            registry.update(newcomers)
            book += list(newcomers)[: max(1, joins_per_day // 10)]
            book += [f"{OTHER_PREFIX}{next(fresh):07d}" for _ in range(new_contacts_per_day)]
            rows.append(syncer.sync(day, book, registry))
    finally:
        metered.close()
    return NormalUserReport(
        scheme=scheme,
        book_size=book_size,
        registered_in_book=in_book,
        limits=cfg.limits,
        rows=tuple(rows),
    )


_NORMAL_USER = "normal-user"


class _Syncer:
    """The normal user's app: one token cache and filter kept across daily syncs."""

    def __init__(
        self, server: DiscoveryServer, scheme: str, metered: _MeteredStore, limits: RateLimits
    ) -> None:
        self.server = server
        self.scheme = scheme
        self.metered = metered
        self.limits = limits
        self.cache: dict[tuple[str, str], bytes] = {}
        self.client: DiscoveryClient | None = None
        self.sent = 0

    def _send(self, request: bytes) -> bytes:
        self.sent += 1
        return self.server.discover(_NORMAL_USER, request)

    def _charged(self) -> Counter[str]:
        # Quotas are charged to the user's number (a keyed hash of its token), not its id.
        rec = self.server.store.get_users([_NORMAL_USER])[0]
        if rec is None:
            return Counter()
        subject = self.server.limiter.number_subject(rec.token)
        return Counter({q: c for (s, q), c in self.metered.charged.items() if s == subject})

    def sync(self, day: int, book: Sequence[str], registry: dict[str, str]) -> SyncRow:
        srv, scheme = self.server, self.scheme
        is_filter = get_scheme(scheme).method == "filter"
        if is_filter and self.client is not None:  # a delta since the filter held
            self.client.update_filter(
                srv.published_filter(scheme, since=self.client.filter_version)
            )
        else:  # first sync, or buckets whose bits may move: fresh info, same token cache
            blob = srv.published_filter(scheme) if is_filter else None
            self.client = DiscoveryClient(srv.info(scheme), filter_blob=blob, cache=self.cache)
        before, self.sent = self._charged(), 0
        limited = False
        matches: dict[str, str] = {}
        try:
            matches = self.client.discover(book, self._send).matches
        except RateLimited:
            limited = True
        spent = self._charged()
        spent.subtract(before)
        lim = self.limits
        return SyncRow(
            day=day,
            contacts=len(book),
            requests=self.sent,
            evaluations=spent[lim.evaluations.name],
            new_tokens=spent[lim.new_tokens.name],
            new_buckets=spent[lim.new_buckets.name],
            matches=len(matches),
            correct=matches == {n: registry[n] for n in book if n in registry},
            rate_limited=limited,
        )


# -- hash reversal ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ReversalReport:
    """Outcome of brute-forcing unsalted SHA-256 tokens over a numbering range."""

    tokens: int
    candidates: int
    seconds: float
    #: token -> the E.164 number behind it (the attack's loot; never print it unmasked).
    found: dict[bytes, str]

    def __repr__(self) -> str:
        return (
            f"ReversalReport(tokens={self.tokens}, candidates={self.candidates}, "
            f"found=<{len(self.found)}>, hashes_per_s={self.hashes_per_s:,.0f})"
        )

    @property
    def hashes_per_s(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else math.inf

    def seconds_for(self, plan_size: int = NATIONAL_PLAN) -> float:
        """Extrapolated time for one core to hash a plan of ``plan_size`` numbers."""
        return plan_size / self.hashes_per_s


def _suffix_block(start: int, stop: int, digits: int) -> list[bytes]:
    """The ``digits``-digit ASCII suffixes ``start`` .. ``stop - 1``, built once per block and
    reused for every prefix."""
    return [b"%0*d" % (digits, i) for i in range(start, stop)]


def reverse_sha256(
    tokens: Sequence[bytes],
    prefixes: Sequence[str],
    *,
    digits: int = PLAN_DIGITS,
    block: int = 200_000,
    progress: Callable[[int], None] | None = None,
) -> ReversalReport:
    """Recover the numbers behind unsalted SHA-256 tokens by hashing a numbering range.

    Every number ``prefix + d`` for each prefix and each ``digits``-digit ``d`` is hashed and
    tested against the token set: what a thief does with a leaked ``sha256`` database (or any
    client with a ``sha256+filter``). Keyed tokens (HMAC, OPRF) yield nothing, because
    without the key the candidates' tokens cannot be computed.

    Args:
        tokens: the stolen tokens.
        prefixes: E.164 prefixes (``+`` and digits) of the range, e.g. ``["+98912"]``.
        digits: digits after each prefix (10^digits candidates per prefix).
        block: candidates per batch (bounds memory; ``progress`` is called per batch).
        progress: called with the number of candidates hashed after each batch.

    Returns:
        A :class:`ReversalReport` with the found numbers and the hash rate.

    Raises:
        InvalidInput: a prefix is not ``+`` and digits, or the numbers would not be E.164.
    """
    if not 1 <= digits <= 12:
        raise InvalidInput("digits must be between 1 and 12")
    raw_prefixes: list[bytes] = []
    for text in prefixes:
        digits_part = text[1:]
        ok = text.startswith("+") and digits_part.isascii() and digits_part.isdigit()
        if not ok or digits_part.startswith("0"):
            raise InvalidInput("prefixes must be '+' followed by digits (a country code)")
        if not 7 <= len(digits_part) + digits <= 15:
            raise InvalidInput("prefix and digits must make 7 to 15 digit E.164 numbers")
        raw_prefixes.append(text.encode("ascii"))
    targets = frozenset(tokens)
    found: dict[bytes, str] = {}
    sha = hashlib.sha256
    space = 10**digits
    hashed = 0
    t0 = time.perf_counter()
    for start in range(0, space, block):
        suffixes = _suffix_block(start, min(space, start + block), digits)
        for p in raw_prefixes:
            # The tight loop: one hash and one set probe per candidate, hits kept aside.
            hits = [s for s in suffixes if sha(p + s).digest() in targets]
            for s in hits:
                found[sha(p + s).digest()] = (p + s).decode("ascii")
            hashed += len(suffixes)
            if progress is not None:
                progress(len(suffixes))
    return ReversalReport(
        tokens=len(targets), candidates=hashed, seconds=time.perf_counter() - t0, found=found
    )


# -- what leaks ---------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "unbounded" if math.isinf(x) else f"{x:,.0f}"


def leakage_report(limits: RateLimits | None = None) -> str:
    """The what-leaks table of every scheme, then the enumeration bounds of ``limits`` in words.

    Returns:
        Markdown text.
    """
    lim = limits or RateLimits()
    ev, ge = lim.evaluations, lim.global_evaluations
    per_day = ev.refill_per_s * DAY
    lines = [
        "## What each scheme leaks",
        "",
        leakage_table(),
        "## What the quotas bound",
        "",
        f"Every candidate number costs one evaluation for keyed schemes (`{ev.name}`: "
        f"{_fmt(ev.capacity)} at once, refilling {_fmt(per_day)} a day per account) and one "
        f"never-seen lookup for lookup schemes (`{lim.new_tokens.name}`: "
        f"{_fmt(lim.new_tokens.capacity)} at once, {_fmt(lim.new_tokens.refill_per_s * DAY)} "
        "a day). Each tested number reveals at most one registered user, so over t seconds "
        "A accounts learn at most",
        "",
        "    min(A × (capacity + capacity/period × t), global_capacity + global_refill × t)",
        "",
        f"numbers: one account {_fmt(ev.bound(DAY))} on its first day and {_fmt(per_day)} on "
        f"each later day; 10 accounts {_fmt(quota_bound('oprf+filter', lim, accounts=10, seconds=DAY))} "  # noqa: E501
        f"on the first day; 100 accounts "
        f"{_fmt(quota_bound('oprf+filter', lim, accounts=100, seconds=DAY))}; every account "
        f"together at most {_fmt(ge.bound(DAY))} on a day from a full global ceiling and "
        f"{_fmt(ge.refill_per_s * DAY)} a day after that (`{ge.name}`). A request carries "
        f"at most {lim.max_items:,} items; an account makes at most "
        f"{_fmt(lim.requests.capacity)} requests per {_fmt(lim.requests.period)} s.",
        "",
        "Schemes with public tokens and a filter or buckets (`plain`, `sha256` with `filter` "
        "or `bucket`) are not bounded at all: the numbering plan is hashed offline "
        f"({'`' + '`, `'.join(n for n in scheme_names() if math.isinf(quota_bound(n, lim, accounts=1, seconds=DAY))) + '`'}).",  # noqa: E501
        "",
    ]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------
@contextmanager
def _bar(console: Any, description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[bold]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


def _enumeration(args: argparse.Namespace, console: Any) -> None:
    from rich.table import Table

    limits = scale_limits(RateLimits(), args.quota_scale)
    for accounts in args.accounts:
        with _bar(console, f"{accounts} accounts", args.days) as advance:
            rep = simulate_enumeration(
                accounts=accounts,
                days=args.days,
                scheme=args.scheme,
                registry_size=args.registry,
                plan_size=args.plan,
                settings=ServiceSettings(limits=limits),
                seed=args.seed,
                store_url=args.store,
                on_day=lambda _row: advance(1),
            )
        t = Table(
            title=f"{rep.scheme}: {accounts} scraper accounts, quotas × {args.quota_scale:g} "
            f"(binding: {rep.binding})"
        )
        for c in ("day", "swept", "refused", "learned", "learned %", "bound", "bound %",
                  "cum. learned", "cum. bound"):  # fmt: skip
            t.add_column(c, justify="right")
        for r in rep.rows:
            t.add_row(
                str(r.day), f"{r.swept:,}", f"{r.refused:,}", f"{r.learned:,}",
                f"{100 * r.learned / rep.registry_size:.2f}", _fmt(r.bound),
                f"{100 * r.bound / rep.registry_size:.2f}", f"{r.learned_total:,}",
                _fmt(r.cumulative_bound),
            )  # fmt: skip
        console.print(t)
        console.print(
            f"learned {100 * rep.fraction_learned:.2f}% of {rep.registry_size:,} registered "
            f"users in {rep.days} days ({rep.wall_seconds:.1f} s)"
        )


def _normal_user(args: argparse.Namespace, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"a {args.book:,}-contact phone book, default quotas")
    for c in ("scheme", "syncs", "requests", "evaluations", "new lookups", "new buckets",
              "rate limited", "correct"):  # fmt: skip
        t.add_column(c, justify="right")
    for scheme in ("oprf+filter", "oprf+bucket"):
        with _bar(console, scheme, 1) as advance:
            rep = normal_user_check(
                scheme=scheme, book_size=args.book, resyncs=args.resyncs, seed=args.seed
            )
            advance(1)
        used = rep.used()
        lim = rep.limits
        t.add_row(
            scheme, str(len(rep.rows)), str(rep.requests),
            f"{sum(r.evaluations for r in rep.rows):,} ({100 * used[lim.evaluations.name]:.0f}%)",
            f"{sum(r.new_tokens for r in rep.rows):,} ({100 * used[lim.new_tokens.name]:.0f}%)",
            f"{sum(r.new_buckets for r in rep.rows):,} ({100 * used[lim.new_buckets.name]:.0f}%)",
            "yes" if rep.ever_rate_limited else "no", "yes" if rep.all_correct else "NO",
        )  # fmt: skip
    console.print(t)


def _hash_reversal(args: argparse.Namespace, console: Any) -> None:
    from contactmatch.schemes.factory import make_server_tokens

    rng = random.Random(args.seed)  # noqa: S311 - synthetic victims, not a secret
    victims = [f"{args.prefix}{rng.randrange(10**args.digits):0{args.digits}d}"
               for _ in range(100)]  # fmt: skip
    for name in ("sha256", "hmac", "oprf"):
        fn = make_server_tokens(
            name, _server_key("oprf+lookup", args.seed) if name != "sha256" else None
        )
        tokens = fn.tokens(victims)
        with _bar(console, f"hashing for {name} tokens", 10**args.digits) as advance:
            rep = reverse_sha256(tokens, [args.prefix], digits=args.digits, progress=advance)
        console.print(
            f"{name:>6}: {len(rep.found)} of {len(set(tokens))} tokens reversed; "
            f"{rep.candidates:,} candidates in {rep.seconds:.2f} s = "
            f"{rep.hashes_per_s:,.0f} hashes/s per core; a {NATIONAL_PLAN:.0e}-number plan "
            f"takes {rep.seconds_for() / 60:.0f} min on one core"
        )


def audit_command(args: argparse.Namespace) -> int:
    """Run ``contactmatch audit``: the attacks chosen by flags (all of them by default).

    Returns:
        The exit status (0).
    """
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    chosen = [args.leakage, args.enumeration, args.normal_user, args.hash_reversal]
    run_all = not any(chosen)
    if args.leakage or run_all:
        console.print(Markdown(leakage_report()))
    if args.enumeration or run_all:
        _enumeration(args, console)
    if args.normal_user or run_all:
        _normal_user(args, console)
    if args.hash_reversal or run_all:
        _hash_reversal(args, console)
    return 0
