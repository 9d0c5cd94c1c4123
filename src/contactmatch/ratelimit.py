"""Anti-enumeration quotas: leaky buckets per requester and globally, state kept in the store.

A scraper sweeping the numbering plan needs one evaluation (keyed schemes) or one lookup per
candidate number; a person re-syncing a phone book needs almost none after the first sync,
because the client caches its tokens and, where the server sees tokens, only numbers *new to
that requester* are charged (Signal's rule). So the quotas can be generous to people and
still bound scrapers: by default a first sync of up to 20,000 contacts, then about 20,000 new
numbers per 10 days per account, under global ceilings that cap what many accounts can do
together. Bucket state lives in the store, so several server processes share it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contactmatch.errors import InvalidInput, RateLimited
from contactmatch.stores.base import RegistryStore

__all__ = ["GLOBAL_SUBJECT", "Quota", "RateLimiter", "RateLimits"]

DAY = 86_400.0
#: Subject under which global ceilings are kept (quota names differ from per-user ones).
GLOBAL_SUBJECT = "all"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """The quotas a discovery service enforces (defaults in the region the product asks)."""

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
        default_factory=lambda: Quota(name="requests", capacity=120, period=3_600)
    )
    #: Ceilings over all requesters together.
    global_evaluations: Quota = field(
        default_factory=lambda: Quota(name="global-eval", capacity=5_000_000, period=DAY)
    )
    global_new_tokens: Quota = field(
        default_factory=lambda: Quota(name="global-lookup", capacity=5_000_000, period=DAY)
    )
    #: Largest number of items (elements, tokens, prefixes) in one request.
    max_items: int = 25_000


class RateLimiter:
    """Charges requests against :class:`RateLimits`; raises :class:`RateLimited` when out.

    Args:
        store: where bucket levels and seen sets live (shared by server processes).
        limits: the quotas.
        secret: keys the seen-set fingerprints, so the store never holds raw tokens of a
            user's contacts (a database thief cannot match them against tokens).
        clock: returns the current time in seconds (a private hook for tests).
    """

    def __init__(
        self,
        store: RegistryStore,
        limits: RateLimits,
        secret: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.limits = limits
        self._secret = secret
        self._clock = clock

    def check_size(self, n: int) -> None:
        """Refuse a request with more items than any legitimate client sends at once."""
        if n > self.limits.max_items:
            raise InvalidInput(f"request has {n} items; the limit is {self.limits.max_items}")

    def _take(self, subject: str, quota: Quota, cost: float) -> None:
        if cost <= 0:
            return
        res = self.store.take(
            subject,
            quota.name,
            float(cost),
            capacity=quota.capacity,
            refill_per_s=quota.refill_per_s,
            now=self._clock(),
        )
        if not res.allowed:
            raise RateLimited(f"{quota.name} quota exhausted", retry_after=res.retry_after,
                              quota=quota.name)  # fmt: skip

    def request(self, subject: str) -> None:
        """Charge one request."""
        self._take(subject, self.limits.requests, 1)

    def evaluations(self, subject: str, n: int) -> None:
        """Charge ``n`` evaluations: the account's own quota first, then the global ceiling.

        The order matters: charging the ceiling first would let an account that is already
        over its quota burn the shared ceiling with refused requests and lock everyone out.
        """
        self.check_size(n)
        self._take(subject, self.limits.evaluations, n)
        self._take(GLOBAL_SUBJECT, self.limits.global_evaluations, n)

    def _fingerprints(self, domain: bytes, items: Sequence[bytes]) -> list[bytes]:
        key = self._secret
        return [hmac.digest(key, domain + t, "sha256")[:8] for t in items]

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

    def _charge_new(
        self, subject: str, fps: list[bytes], quota: Quota, ceiling: Quota | None
    ) -> None:
        fps = list(dict.fromkeys(fps))
        if not fps:
            return
        # Count first, charge, and only then remember: remembering before a refused charge
        # would let a scraper retry the same numbers for free.
        new = self.store.count_unseen(subject, fps)
        self._take(subject, quota, new)  # own quota first: see evaluations()
        if ceiling is not None:
            self._take(GLOBAL_SUBJECT, ceiling, new)
        self.store.add_seen(subject, fps)
