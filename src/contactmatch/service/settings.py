"""How a discovery server behaves: the settings a backend passes, and the default flows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from contactmatch.ratelimit import RateLimits

__all__ = ["DEFAULT_SCHEMES", "NumberVerifier", "ServiceSettings"]

#: The flows a backend serves by default: OPRF with a client-side filter, or with k-anonymity
#: buckets for clients that do not hold the filter.
DEFAULT_SCHEMES: Final = ("oprf+filter", "oprf+bucket")

#: Proof that a user possesses a number: ``(user_id, e164, proof) -> bool``. It receives the
#: normalised E.164 number that will be registered — never the raw input, which the verifier
#: might normalise differently — and the client's ``proof`` (e.g. the SMS code it was sent).
NumberVerifier = Callable[[str, str, str | None], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """How a :class:`~contactmatch.service.DiscoveryServer` behaves; the defaults suit a
    messenger backend."""

    #: Schemes served; None serves the default flows (filter and bucket) in the key's mode:
    #: ``oprf+filter``/``oprf+bucket`` for an OPRF key, ``voprf+…`` for a VOPRF key. Keyed
    #: schemes must match the key's mode; plain/sha256/hmac may be added for comparisons.
    schemes: tuple[str, ...] | None = None
    #: Default region for numbers written without a country code.
    region: str | None = None
    #: Target anonymity set (registered users per bucket) of bucket schemes.
    anonymity: int = 64
    #: False-positive rate of published filters.
    filter_fpr: float = 2.0**-20
    limits: RateLimits = field(default_factory=RateLimits)
    #: Threads one OPRF batch is evaluated on: None uses every core (one server process
    #: per machine); ``serve --workers N`` gives each worker ``cores // N`` so the workers
    #: together use each core once instead of N times over.
    oprf_threads: int | None = None
