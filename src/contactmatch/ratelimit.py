"""Anti-enumeration quotas: leaky buckets per number, per account and globally, kept in the store.

A scraper sweeping the numbering plan needs one evaluation (keyed schemes) or one lookup per
candidate number; a person re-syncing a phone book needs almost none after the first sync,
because the client caches its tokens and, where the server sees tokens, only numbers *new to
that requester* are charged (Signal's rule). So the quotas can be generous to people and
still bound scrapers: by default a first sync of up to 20,000 contacts, then about 20,000 new
numbers per 10 days per account, under global ceilings that cap what many accounts can do
together. Bucket state lives in the store, so several server processes share it.

Subjects (whose bucket is charged) live in namespaces no user id can reach, because user ids
never contain ``:``:

- ``n:<hex>`` — a registered **number**: a keyed hash of its token. Discovery and write
  quotas are charged here, so deleting the account and registering the same number again
  inherits the spent quota instead of resetting it. The bucket disappears once it has
  drained (at most one quota period after the last charge): it is the one derived value that
  outlives an erasure, and only for that long.
- ``u:<hex>`` — an **account** (a keyed hash of its user id) for registration attempts, which
  happen before the account has a number.
- ``g:all`` — the global ceilings (the quota names tell them apart).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.stores.records import TakeResult
from contactmatch.stores.roles import QuotaStore

__all__ = [
    "GLOBAL_SUBJECT",
    "Quota",
    "RateLimiter",
    "RateLimits",
    "binding_quota",
    "daily_bounds",
    "quota_bound",
    "scale_limits",
    "scheme_quotas",
]

DAY = 86_400.0
HOUR = 3_600.0
#: Subject under which global ceilings are kept; the ``g:`` namespace is unreachable by user ids.
GLOBAL_SUBJECT = "g:all"
_SUBJECT_BYTES = 16  # 128-bit keyed hashes: collisions between numbers are out of reach


@dataclass(frozen=True, slots=True, kw_only=True)
class Quota:
    """A leaky bucket: ``capacity`` units at once, refilling ``capacity`` per ``period`` s."""

    name: str
    capacity: float
    period: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.period <= 0:
            raise InvalidInput("a quota needs a positive capacity and period")

    @property
    def refill_per_s(self) -> float:
        return self.capacity / self.period

    def bound(self, seconds: float) -> float:
        """Most units one subject can spend in ``seconds`` starting from a full bucket."""
        return self.capacity + self.refill_per_s * seconds

    def scaled(self, factor: float, name: str | None = None) -> Quota:
        """The same period with ``factor`` times the capacity (and optionally a new name)."""
        return Quota(name=name or self.name, capacity=self.capacity * factor, period=self.period)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """The quotas a discovery service enforces (defaults in the region the product asks).

    Raises:
        InvalidInput: one account could take more than ``max_account_share`` of a global
            ceiling in its period, or ``reserve_share`` is not in [0, 1).
    """

    #: Elements evaluated (OPRF/HMAC): blinded, so every element counts.
    evaluations: Quota = field(
        default_factory=lambda: Quota(name="eval", capacity=20_000, period=10 * DAY)
    )
    #: Tokens looked up that this requester never looked up before.
    new_tokens: Quota = field(
        default_factory=lambda: Quota(name="lookup", capacity=20_000, period=10 * DAY)
    )
    #: Bucket prefixes this requester never asked before.
    new_buckets: Quota = field(
        default_factory=lambda: Quota(name="bucket", capacity=20_000, period=10 * DAY)
    )
    #: Requests of any kind (stops hammering; a sync takes two).
    requests: Quota = field(
        default_factory=lambda: Quota(name="requests", capacity=120, period=HOUR)
    )
    #: Ceilings over all requesters together.
    global_evaluations: Quota = field(
        default_factory=lambda: Quota(name="global-eval", capacity=5_000_000, period=DAY)
    )
    global_new_tokens: Quota = field(
        default_factory=lambda: Quota(name="global-lookup", capacity=5_000_000, period=DAY)
    )
    #: Registration and number-change attempts, charged per account and per target number
    #: *before* possession is checked, so neither the verifier (SMS codes) nor the answers can
    #: be ground through.
    registrations: Quota = field(
        default_factory=lambda: Quota(name="register", capacity=10, period=DAY)
    )
    global_registrations: Quota = field(
        default_factory=lambda: Quota(name="global-register", capacity=1_000_000, period=DAY)
    )
    #: Writes that change no registration: settings and contact uploads.
    writes: Quota = field(default_factory=lambda: Quota(name="writes", capacity=60, period=HOUR))
    #: Share of each global ceiling held back for *light* accounts (below), so that accounts
    #: flooding the shared ceiling cannot lock new users out of their first sync.
    reserve_share: float = 0.2
    #: What one account may draw from that reserve per period: a first sync's worth.
    light_allowance: Quota = field(
        default_factory=lambda: Quota(name="light", capacity=5_000, period=10 * DAY)
    )
    #: Largest share of a global ceiling one account may take within the ceiling's period.
    max_account_share: float = 0.01
    #: Largest number of items (elements, tokens, prefixes) in one request.
    max_items: int = 25_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.reserve_share < 1.0:
            raise InvalidInput("reserve_share must be in [0, 1)")
        if not 0.0 < self.max_account_share <= 1.0:
            raise InvalidInput("max_account_share must be in (0, 1]")
        for own, ceiling in (
            (self.evaluations, self.global_evaluations),
            (self.new_tokens, self.global_new_tokens),
            (self.registrations, self.global_registrations),
        ):
            share = self.account_share(own, ceiling)
            if share > self.max_account_share:
                raise InvalidInput(
                    f"one account could take {share:.1%} of the {ceiling.name} ceiling; "
                    f"the bound is {self.max_account_share:.1%} (raise the ceiling or lower "
                    f"the {own.name} quota)"
                )

    @staticmethod
    def account_share(own: Quota, ceiling: Quota) -> float:
        """Most of ``ceiling``'s capacity one account can spend within ``ceiling.period``."""
        return own.bound(ceiling.period) / ceiling.capacity


class RateLimiter:
    """Charges requests against :class:`RateLimits`; raises :class:`RateLimited` when out.

    Args:
        store: where bucket levels and seen sets live (shared by server processes).
        limits: the quotas.
        secret: keys the subjects and the seen-set fingerprints, so the store never holds a
            token, a number or a user id in its rate state (a database thief cannot match it).
        clock: returns the current time in seconds (a private hook for tests).
    """

    def __init__(
        self,
        store: QuotaStore,
        limits: RateLimits,
        secret: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.limits = limits
        self._secret = secret
        self._fp_key = hmac.digest(secret, b"contactmatch/seen-fingerprint/v2", "sha256")
        self._clock = clock

    def __repr__(self) -> str:
        return f"<RateLimiter store={type(self.store).__name__}>"

    def __reduce__(self) -> NoReturn:
        # Its secret keys the rate subjects; a pickle would carry it into caches and dumps.
        raise TypeError("a RateLimiter holds a secret and cannot be pickled")

    # -- subjects ---------------------------------------------------------------------------
    def _keyed(self, domain: bytes, value: bytes) -> str:
        return hmac.digest(self._secret, domain + b"\x00" + value, "sha256")[:_SUBJECT_BYTES].hex()

    def number_subject(self, token: bytes) -> str:
        """The subject of a registered number, from its canonical token (the same number
        gives the same subject for every account that ever holds it, under one key)."""
        return "n:" + self._keyed(b"number", token)

    def account_subject(self, user_id: str) -> str:
        """The subject of an account id (registration attempts)."""
        return "u:" + self._keyed(b"account", user_id.encode("utf-8"))

    # -- charging ---------------------------------------------------------------------------
    def check_size(self, n: int) -> None:
        """Refuse a request with more items than any legitimate client sends at once."""
        if n > self.limits.max_items:
            raise InvalidInput(f"request has {n} items; the limit is {self.limits.max_items}")

    def _try(self, subject: str, quota: Quota, cost: float) -> TakeResult:
        return self.store.take(
            subject,
            quota.name,
            float(cost),
            capacity=quota.capacity,
            refill_per_s=quota.refill_per_s,
            now=self._clock(),
        )

    def _take(self, subject: str, quota: Quota, cost: float) -> None:
        if cost <= 0:
            return
        res = self._try(subject, quota, cost)
        if not res.allowed:
            raise RateLimited(
                f"{quota.name} quota exhausted", retry_after=res.retry_after, quota=quota.name
            )

    def _charge(self, subject: str, own: Quota, ceiling: Quota | None, n: float) -> None:
        """Charge ``n`` to the subject's own quota, then to the global ceiling.

        The order matters: charging the ceiling first would let an account that is already
        over its quota burn the shared ceiling with refused requests and lock everyone out.
        The ceiling is split: ``1 - reserve_share`` of it is shared by everyone; when that is
        full, an account may still draw on the reserve up to its ``light_allowance`` per
        period — enough for a new user's first sync, too little for a flood of accounts to
        drain it (it takes ``reserve / light_allowance`` fresh accounts per period).
        """
        if n <= 0:
            return
        self._take(subject, own, n)
        if ceiling is None:
            return
        share = self.limits.reserve_share
        shared = ceiling.scaled(1.0 - share) if share else ceiling
        first = self._try(GLOBAL_SUBJECT, shared, n)
        if first.allowed:
            return
        if share:
            light = self.limits.light_allowance
            if self._try(subject, light.scaled(1.0, f"{light.name}-{own.name}"), n).allowed:
                reserve = ceiling.scaled(share, f"{ceiling.name}-reserve")
                if self._try(GLOBAL_SUBJECT, reserve, n).allowed:
                    return
        raise RateLimited(
            f"{ceiling.name} quota exhausted", retry_after=first.retry_after, quota=ceiling.name
        )

    def request(self, subject: str) -> None:
        """Charge one request."""
        self._take(subject, self.limits.requests, 1)

    def write(self, subject: str) -> None:
        """Charge one write (a setting change, a contact upload)."""
        self._take(subject, self.limits.writes, 1)

    def registration(self, account: str, number: str) -> None:
        """Charge one registration or number-change attempt: per account, per target number
        and globally. Called before possession is verified, so failures cost the same."""
        self._take(account, self.limits.registrations, 1)
        self._take(number, self.limits.registrations, 1)
        self._take(GLOBAL_SUBJECT, self.limits.global_registrations, 1)

    def evaluations(self, subject: str, n: int) -> None:
        """Charge ``n`` evaluations (before any element is decoded or validated)."""
        self.check_size(n)
        self._charge(subject, self.limits.evaluations, self.limits.global_evaluations, n)

    def _fingerprints(self, domain: bytes, items: Sequence[bytes]) -> list[bytes]:
        # Keyed BLAKE2b (a PRF like HMAC, with the key in its parameter block) rather than
        # HMAC-SHA256: a lookup fingerprints every token it carries, and this is ~6x cheaper.
        key = self._fp_key
        blake = hashlib.blake2b
        return [blake(domain + t, key=key, digest_size=8).digest() for t in items]

    def new_tokens(self, subject: str, tokens: Sequence[bytes]) -> None:
        """Charge only the tokens this subject never looked up before, then remember them."""
        self.check_size(len(tokens))
        self._charge_new(subject, self._fingerprints(b"t", tokens), self.limits.new_tokens,
                         self.limits.global_new_tokens)  # fmt: skip

    def new_buckets(self, subject: str, bits: int, prefixes: Sequence[int]) -> None:
        """Charge only bucket prefixes this subject never asked before."""
        self.check_size(len(prefixes))
        raw = [bits.to_bytes(1, "big") + p.to_bytes(4, "big") for p in prefixes]
        self._charge_new(subject, self._fingerprints(b"b", raw), self.limits.new_buckets, None)

    @property
    def seen_ttl(self) -> float:
        """How long a seen-set entry is remembered: the longest "new items" quota period.

        Past it an item counts as new again, and the entry (a keyed fingerprint of a token
        that may belong to a since-deleted user) is removed by :meth:`expire`.
        """
        return max(self.limits.new_tokens.period, self.limits.new_buckets.period)

    def _charge_new(
        self, subject: str, fps: list[bytes], quota: Quota, ceiling: Quota | None
    ) -> None:
        fps = list(dict.fromkeys(fps))
        if not fps:
            return
        now = self._clock()
        # Count first, charge, and only then remember: remembering before a refused charge
        # would let a scraper retry the same numbers for free.
        new = self.store.count_unseen(subject, fps, now=now, ttl=self.seen_ttl)
        self._charge(subject, quota, ceiling, new)
        if new:
            # Nothing new (a re-sync of an unchanged book) writes nothing: the entries are
            # then not refreshed, so a book is charged again once per ``seen_ttl``, when
            # its quota has refilled anyway, and a re-sync costs the store a read only.
            self.store.add_seen(subject, fps, now=now)

    def expire(self) -> int:
        """Drop drained buckets and seen entries past :attr:`seen_ttl`; returns how many."""
        return self.store.expire_rate_state(self._clock(), self.seen_ttl)


# -- what the quotas bound ------------------------------------------------------------------
# The quota maths lives beside the quotas it reads, so the attack lab, the audit and the docs'
# figures all derive their bounds from one place. Imports are local: the limiter, which every
# server loads, needs neither the scheme registry nor dataclasses.replace.


def scale_limits(limits: RateLimits, factor: float) -> RateLimits:
    """The same quotas with every number-counting capacity and ``max_items`` times ``factor``.

    Periods stay, so per-day shapes are preserved; the request, write and registration quotas
    stay too, because they count requests, not numbers. Tests and quick audits use this to
    sweep a plan scaled by the same factor in seconds rather than hours.

    Raises:
        InvalidInput: ``factor`` is not positive.
    """
    import dataclasses

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


def scheme_quotas(scheme: str, limits: RateLimits) -> tuple[list[Quota], list[Quota]]:
    """Per-account quotas and global ceilings every swept number of ``scheme`` is charged.

    Raises:
        UnknownScheme: no scheme has this name.
    """
    from contactmatch.schemes.base import get_scheme

    s = get_scheme(scheme)
    own: list[Quota] = []
    ceilings: list[Quota] = []
    if s.interactive:  # one evaluation per candidate number, blinded or not
        own.append(limits.evaluations)
        ceilings.append(limits.global_evaluations)
    if s.sends_every_token:  # and one never-seen token per candidate
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
    own, ceilings = scheme_quotas(scheme, limits)
    if not own:
        return float("inf")
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


def binding_quota(scheme: str, limits: RateLimits, *, accounts: int, seconds: float) -> str:
    """Which side of :func:`quota_bound` binds: ``"per-account quota"``, ``"global
    ceiling"``, or ``"none (offline)"`` for schemes no quota charges."""
    own, ceilings = scheme_quotas(scheme, limits)
    if not own:
        return "none (offline)"
    per_account = accounts * min(q.bound(seconds) for q in own)
    ceiling = min((g.bound(seconds) for g in ceilings), default=float("inf"))
    return "global ceiling" if ceiling < per_account else "per-account quota"
