"""What leaks: every scheme's leakage and what the quotas bound, as text and as data.

Both forms are computed from the scheme registry and the quotas given, never written by hand,
so the audit, the docs and ``contactmatch audit --json`` cannot drift from the code.
"""

from __future__ import annotations

import math
from typing import Any

from contactmatch.ratelimit import DAY, RateLimits, binding_quota, quota_bound
from contactmatch.schemes.base import get_scheme, leakage_table, scheme_names

__all__ = ["leakage_data", "leakage_report", "offline_schemes"]


def _fmt(x: float) -> str:
    return "unbounded" if math.isinf(x) else f"{x:,.0f}"


def offline_schemes(limits: RateLimits | None = None) -> list[str]:
    """Schemes no quota bounds: public tokens whose plan a scraper hashes offline."""
    lim = limits or RateLimits()
    return [n for n in scheme_names() if math.isinf(quota_bound(n, lim, accounts=1, seconds=DAY))]


def leakage_report(limits: RateLimits | None = None) -> str:
    """The what-leaks table of every scheme, then the enumeration bounds of ``limits`` in words.

    Returns:
        Markdown text.
    """
    lim = limits or RateLimits()
    ev, ge = lim.evaluations, lim.global_evaluations
    per_day = ev.refill_per_s * DAY
    ten, hundred = (
        _fmt(quota_bound("oprf+filter", lim, accounts=a, seconds=DAY)) for a in (10, 100)
    )
    offline = "`" + "`, `".join(offline_schemes(lim)) + "`"
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
        f"each later day; 10 accounts {ten} on the first day; 100 accounts {hundred}; every "
        f"account together at most {_fmt(ge.bound(DAY))} on a day from a full global ceiling "
        f"and {_fmt(ge.refill_per_s * DAY)} a day after that (`{ge.name}`). A request carries "
        f"at most {lim.max_items:,} items; an account makes at most "
        f"{_fmt(lim.requests.capacity)} requests per {_fmt(lim.requests.period)} s.",
        "",
        "Schemes with public tokens and a filter or buckets (`plain`, `sha256` with `filter` "
        f"or `bucket`) are not bounded at all: the numbering plan is hashed offline ({offline}).",
        "",
    ]
    return "\n".join(lines)


def leakage_data(limits: RateLimits | None = None) -> dict[str, Any]:
    """The same report as JSON-ready values: per scheme, what leaks and the day-1 bounds.

    Unbounded figures are ``None`` (JSON has no infinity).
    """
    lim = limits or RateLimits()

    def num(x: float) -> float | None:
        return None if math.isinf(x) else x

    schemes: dict[str, Any] = {}
    for name in scheme_names():
        leak = get_scheme(name).leakage
        schemes[name] = {
            "server_learns": leak.server_learns,
            "client_learns": leak.client_learns,
            "thief_learns": leak.thief_learns,
            "enumeration_cost": leak.enumeration_cost,
            "first_day_bound": {
                str(a): num(quota_bound(name, lim, accounts=a, seconds=DAY)) for a in (1, 10, 100)
            },
            "binding_at_100_accounts": binding_quota(name, lim, accounts=100, seconds=DAY),
        }
    ev, ge = lim.evaluations, lim.global_evaluations
    return {
        "schemes": schemes,
        "offline": offline_schemes(lim),
        "quotas": {
            "evaluations": {"name": ev.name, "capacity": ev.capacity, "period": ev.period},
            "new_tokens": {
                "name": lim.new_tokens.name,
                "capacity": lim.new_tokens.capacity,
                "period": lim.new_tokens.period,
            },
            "global_evaluations": {"name": ge.name, "capacity": ge.capacity, "period": ge.period},
            "max_items": lim.max_items,
        },
    }
