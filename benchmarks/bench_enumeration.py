"""Many-account scrapers against the quotas: the share of the registry learned, day by day.

Each account count sweeps the +98912 numbering plan through the real service (hmac+lookup:
charged by the same evaluation and new-token quotas as OPRF, at a thousandth of the CPU) under
a simulated clock, and every day's learned users are set against the bound the quotas imply.
With the default quotas and plan this is the real-world figure; ``--scale`` shrinks quotas for
a faster look. The only goal: no day's cumulative sweep exceeds the quota bound.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args, progress
from contactmatch.lab import simulate_enumeration
from contactmatch.ratelimit import DAY, RateLimits, scale_limits
from contactmatch.service import ServiceSettings


def main() -> int:
    args = parse_args(
        __doc__ or "",
        accounts=(str, "1,10,100", "comma-separated scraper account counts"),
        days=(int, 10, "simulated days"),
        scheme=(str, "hmac+lookup", "scheme attacked"),
        registry=(int, 20_000, "registered users in the plan"),
        plan=(int, 10**7, "numbers in the plan (+98912 and 7 digits)"),
        scale=(float, 1.0, "multiply the default quotas by this"),
    )
    if args.quick:
        args.accounts, args.days, args.registry, args.plan, args.scale = (
            "1,10",
            3,
            500,
            50_000,
            0.01,
        )
    counts = [int(a) for a in args.accounts.split(",")]
    limits = scale_limits(RateLimits(), args.scale)
    ev, ge = limits.evaluations, limits.global_evaluations
    report = Report(
        "bench_enumeration",
        args,
        title=(
            f"Enumeration under the quotas: plan tested and registry learned per day\n"
            f"({args.scheme}, {args.accounts} scraper accounts, {args.registry:,} registered "
            f"in a plan of {args.plan:,}, {args.days} days, quotas x{args.scale:g})"
        ),
    )
    report.params = {
        "scheme": args.scheme,
        "registry": args.registry,
        "plan": args.plan,
        "days": args.days,
        "quota_scale": args.scale,
        "eval_quota": f"{ev.capacity:,.0f} per {ev.period / DAY:g} d",
        "global_ceiling": f"{ge.capacity:,.0f} per {ge.period / DAY:g} d",
    }
    curves: dict[int, tuple[list[float], list[float], list[float]]] = {}
    worst = 0.0
    with progress("scraper days", len(counts) * args.days) as advance:
        for accounts in counts:
            rep = simulate_enumeration(
                accounts=accounts,
                days=args.days,
                scheme=args.scheme,
                registry_size=args.registry,
                plan_size=args.plan,
                settings=ServiceSettings(limits=limits),
                on_day=lambda _row: advance(1),
            )
            swept = 0
            tested_curve, learned_curve, bound_curve = [], [], []
            for row in rep.rows:
                swept += row.swept
                worst = max(worst, swept / row.cumulative_bound)
                learned_pct = 100 * row.learned_total / rep.registry_size
                # The most a blind sweep can expect to learn: the plan share the bound covers.
                blind_pct = 100 * min(1.0, row.cumulative_bound / rep.plan_size)
                tested_curve.append(100 * swept / rep.plan_size)
                learned_curve.append(learned_pct)
                bound_curve.append(blind_pct)
                report.row(
                    accounts=accounts,
                    day=row.day,
                    swept=row.swept,
                    refused=row.refused,
                    learned=row.learned,
                    learned_pct_day=100 * row.learned / rep.registry_size,
                    bound_day=row.bound,
                    learned_pct_total=learned_pct,
                    blind_bound_pct_total=blind_pct,
                    binding=rep.binding,
                )
            curves[accounts] = (tested_curve, learned_curve, bound_curve)
    report.goal("max cumulative swept / quota bound", worst, 1.0, at_least=False)
    report.note(
        "Bound on numbers tested (each reveals at most one user) by A accounts in t seconds: "
        "min(A × (capacity + capacity/period × t), global_capacity + global_refill × t). "
        f"Here: {ev.bound(DAY):,.0f} per account on day 1, {ev.refill_per_s * DAY:,.0f} per "
        f"account per later day; the global ceiling binds above "
        f"{ge.bound(DAY) / ev.bound(DAY):,.0f} accounts on day 1 and "
        f"{ge.refill_per_s / ev.refill_per_s:,.0f} accounts in steady state."
    )
    report.note(
        "learned_pct_total: share of registered users learned; blind_bound_pct_total: share "
        "of the plan the quotas let the accounts test, which is what a sweep without a "
        "candidate list can expect to learn."
    )

    def plot(ax: Any) -> None:
        days = list(range(1, args.days + 1))
        for accounts, (tested, learned, bound) in curves.items():
            (line,) = ax.plot(days, tested, label=f"{accounts} accounts: plan tested")
            color = line.get_color()
            ax.plot(days, bound, ls="--", color=color, label=f"{accounts}: quota bound")
            ax.plot(
                days, learned, ls="", marker="o", color=color, label=f"{accounts}: registry learned"
            )
        ax.set_xlabel("day")
        ax.set_ylabel("% of plan tested / of registry learned (cumulative)")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=3, loc="lower right")

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
