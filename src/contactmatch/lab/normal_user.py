"""A normal user against the same quotas: a first sync and daily re-syncs stay well clear.

Quotas that stop scrapers are only acceptable if people never meet them. This runs one
person's phone book through the real service for days (people join, the book grows, the
client re-syncs from its token cache and, for filter schemes, a filter delta) and counts what
each sync was charged, by metering the quota store the rate limiter writes to.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.lab._sim import EPOCH, SimClock, lab_key
from contactmatch.lab.plan import load_plan
from contactmatch.ratelimit import DAY, RateLimits
from contactmatch.schemes.base import get_scheme
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import QuotaStore, TakeResult, open_store

__all__ = ["MeteredQuotas", "NormalUserReport", "SyncRow", "normal_user_check"]

_NORMAL_USER = "normal-user"


class MeteredQuotas:
    """A :class:`~contactmatch.stores.QuotaStore` that tallies the units it allowed.

    It wraps the quota role only: the lab needs to know what a sync cost, and the rate
    limiter talks to its store through that role alone.

    Args:
        inner: the quota store that decides.
    """

    def __init__(self, inner: QuotaStore) -> None:
        self.inner = inner
        #: ``(subject, quota) -> units charged`` by allowed takes.
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
        res = self.inner.take(
            subject, quota, cost, capacity=capacity, refill_per_s=refill_per_s, now=now
        )
        if res.allowed:
            self.charged[(subject, quota)] += int(cost)
        return res

    def count_unseen(
        self, subject: str, fingerprints: Sequence[bytes], *, now: float, ttl: float
    ) -> int:
        return self.inner.count_unseen(subject, fingerprints, now=now, ttl=ttl)

    def add_seen(self, subject: str, fingerprints: Sequence[bytes], *, now: float) -> int:
        return self.inner.add_seen(subject, fingerprints, now=now)

    def reset_seen(self, subject: str) -> None:
        self.inner.reset_seen(subject)

    def expire_rate_state(self, now: float, seen_ttl: float) -> int:
        return self.inner.expire_rate_state(now, seen_ttl)


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

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``contactmatch audit --json``); counts only."""
        return {
            "scheme": self.scheme,
            "book_size": self.book_size,
            "registered_in_book": self.registered_in_book,
            "syncs": len(self.rows),
            "requests": self.requests,
            "ever_rate_limited": self.ever_rate_limited,
            "all_correct": self.all_correct,
            "used": self.used(),
            "rows": [
                {
                    "day": r.day,
                    "contacts": r.contacts,
                    "requests": r.requests,
                    "evaluations": r.evaluations,
                    "new_tokens": r.new_tokens,
                    "new_buckets": r.new_buckets,
                    "matches": r.matches,
                    "correct": r.correct,
                    "rate_limited": r.rate_limited,
                }
                for r in self.rows
            ],
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

    Raises:
        InvalidInput: the registry cannot hold the book's registered contacts.
    """
    plan = load_plan()
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    cfg = replace(settings or ServiceSettings(), schemes=(scheme,))
    clock = SimClock(EPOCH)
    in_book = round(book_size * registered_fraction)
    total = registry_size if registry_size is not None else max(2 * in_book, in_book + 1)
    if not 0 <= in_book <= total or not 0 <= in_book <= book_size:
        raise InvalidInput("the registry must hold the book's registered contacts")
    store = open_store(store_url)
    try:
        server = DiscoveryServer(
            store, lab_key(scheme, seed), DataKey.generate(), settings=cfg, _clock=clock
        )
        # The limiter's quota role is all that is metered: registrations and discovery run
        # on the store itself.
        metered = MeteredQuotas(server.limiter.store)
        server.limiter.store = metered
        # Registered numbers (now and later joiners) come from the plan, the book's other
        # contacts from another range, so the two never collide.
        space = plan.range_size
        picks = iter(rng.sample(range(space), total + resyncs * joins_per_day))
        fresh = iter(rng.sample(range(space), book_size + resyncs * new_contacts_per_day))
        registry = {plan.number(plan.swept, next(picks)): f"user-{i}" for i in range(total)}
        server.register_many([(u, n) for n, u in registry.items()])
        server.register(_NORMAL_USER, plan.number(plan.scrapers, 0))
        book = rng.sample(list(registry), in_book)
        book += [plan.number(plan.others, next(fresh)) for _ in range(book_size - in_book)]
        rng.shuffle(book)
        syncer = _Syncer(server, scheme, metered, cfg.limits)
        rows = [syncer.sync(0, book, registry)]
        for day in range(1, resyncs + 1):
            clock.now = EPOCH + day * DAY
            newcomers = {plan.number(plan.swept, next(picks)): f"joined-{day}-{j}"
                         for j in range(joins_per_day)}  # fmt: skip
            server.register_many([(u, n) for n, u in newcomers.items()])
            registry.update(newcomers)
            book += list(newcomers)[: max(1, joins_per_day // 10)]
            book += [plan.number(plan.others, next(fresh)) for _ in range(new_contacts_per_day)]
            rows.append(syncer.sync(day, book, registry))
    finally:
        store.close()
    return NormalUserReport(
        scheme=scheme,
        book_size=book_size,
        registered_in_book=in_book,
        limits=cfg.limits,
        rows=tuple(rows),
    )


class _Syncer:
    """The normal user's app: one token cache and filter kept across daily syncs."""

    def __init__(
        self, server: DiscoveryServer, scheme: str, metered: MeteredQuotas, limits: RateLimits
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
        is_filter = get_scheme(scheme).publishes_filter
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
