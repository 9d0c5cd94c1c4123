"""``contactmatch audit``: run the attack lab and render its reports (tables, or JSON).

The attacks are :mod:`contactmatch.lab`'s; this module only chooses them from the flags,
shows progress, and draws what they return. Reports hold counts and rates, never a number.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from contactmatch.cli._args import positive_int

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_audit_arguments", "add_parser", "audit_command"]


def _fmt(x: float) -> str:
    return "unbounded" if math.isinf(x) else f"{x:,.0f}"


def _enumeration(args: argparse.Namespace, console: Console | None) -> list[dict[str, Any]]:
    from contactmatch.cli._output import new_table, print_table, progress_bar
    from contactmatch.lab.enumeration import simulate_enumeration
    from contactmatch.ratelimit import RateLimits, scale_limits
    from contactmatch.service import ServiceSettings

    limits = scale_limits(RateLimits(), args.quota_scale)
    out: list[dict[str, Any]] = []
    for accounts in args.accounts:
        with progress_bar(f"{accounts} accounts", args.days) as advance:
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
        out.append({**rep.as_dict(), "quota_scale": args.quota_scale})
        if console is None:
            continue
        t = new_table(
            f"{rep.scheme}: {accounts} scraper accounts, quotas × {args.quota_scale:g} "
            f"(binding: {rep.binding})",
            ("day", "swept", "refused", "learned", "learned %", "bound", "bound %",
             "cum. learned", "cum. bound"),
        )  # fmt: skip
        for r in rep.rows:
            t.add_row(
                str(r.day), f"{r.swept:,}", f"{r.refused:,}", f"{r.learned:,}",
                f"{100 * r.learned / rep.registry_size:.2f}", _fmt(r.bound),
                f"{100 * r.bound / rep.registry_size:.2f}", f"{r.learned_total:,}",
                _fmt(r.cumulative_bound),
            )  # fmt: skip
        print_table(console, t)
        console.print(
            f"learned {100 * rep.fraction_learned:.2f}% of {rep.registry_size:,} registered "
            f"users in {rep.days} days ({rep.wall_seconds:.1f} s)"
        )
    return out


def _normal_user(args: argparse.Namespace, console: Console | None) -> list[dict[str, Any]]:
    from contactmatch.cli._output import new_table, print_table, progress_bar
    from contactmatch.lab.normal_user import normal_user_check

    t = new_table(
        f"a {args.book:,}-contact phone book, default quotas",
        ("scheme", "syncs", "requests", "evaluations", "new lookups", "new buckets",
         "rate limited", "correct"),
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    for scheme in ("oprf+filter", "oprf+bucket"):
        with progress_bar(scheme, 1) as advance:
            rep = normal_user_check(
                scheme=scheme, book_size=args.book, resyncs=args.resyncs, seed=args.seed
            )
            advance(1)
        out.append(rep.as_dict())
        used = rep.used()
        lim = rep.limits
        t.add_row(
            scheme, str(len(rep.rows)), str(rep.requests),
            f"{sum(r.evaluations for r in rep.rows):,} ({100 * used[lim.evaluations.name]:.0f}%)",
            f"{sum(r.new_tokens for r in rep.rows):,} ({100 * used[lim.new_tokens.name]:.0f}%)",
            f"{sum(r.new_buckets for r in rep.rows):,} ({100 * used[lim.new_buckets.name]:.0f}%)",
            "yes" if rep.ever_rate_limited else "no", "yes" if rep.all_correct else "NO",
        )  # fmt: skip
    if console is not None:
        print_table(console, t)
    return out


def _hash_reversal(args: argparse.Namespace, console: Console | None) -> list[dict[str, Any]]:
    from contactmatch.cli._output import progress_bar
    from contactmatch.lab.plan import load_plan
    from contactmatch.lab.reversal import reversal_trials

    national = load_plan().mobile_numbers
    out: list[dict[str, Any]] = []
    names = ("sha256", "hmac", "oprf")
    for name in names:
        # One bar per token function, so each trial runs on its own.
        with progress_bar(f"hashing for {name} tokens", 10**args.digits) as advance:
            ((_, rep),) = reversal_trials(
                args.prefix,
                args.digits,
                seed=args.seed,
                token_functions=(name,),
                progress=lambda _name, n: advance(n),
            )
        out.append({"token_function": name, **rep.as_dict()})
        if console is not None:
            console.print(
                f"{name:>6}: {len(rep.found)} of {rep.tokens} tokens reversed; "
                f"{rep.candidates:,} candidates in {rep.seconds:.2f} s = "
                f"{rep.hashes_per_s:,.0f} hashes/s per core; a {national:.0e}-number plan "
                f"takes {rep.seconds_for() / 60:.0f} min on one core"
            )
    return out


def audit_command(args: argparse.Namespace) -> int:
    """Handler of ``contactmatch audit``: the attacks chosen by flags (all by default).

    Returns:
        The exit status (0).
    """
    from contactmatch.cli._output import print_markdown, stdout_console, write_json
    from contactmatch.lab.report import leakage_data, leakage_report

    console = None if args.json else stdout_console()
    chosen = [args.leakage, args.enumeration, args.normal_user, args.hash_reversal]
    run_all = not any(chosen)
    doc: dict[str, Any] = {}
    if args.leakage or run_all:
        doc["leakage"] = leakage_data()
        if console is not None:
            print_markdown(console, leakage_report())
    if args.enumeration or run_all:
        doc["enumeration"] = _enumeration(args, console)
    if args.normal_user or run_all:
        doc["normal_user"] = _normal_user(args, console)
    if args.hash_reversal or run_all:
        doc["hash_reversal"] = _hash_reversal(args, console)
    if args.json:
        write_json(doc)
    return 0


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``contactmatch audit`` options to ``parser``."""
    parser.add_argument("--enumeration", action="store_true", help="simulate many-account scrapers")
    parser.add_argument(
        "--hash-reversal", action="store_true", help="reverse unsalted sha256 tokens"
    )
    parser.add_argument("--leakage", action="store_true", help="print the what-leaks table")
    parser.add_argument(
        "--normal-user", action="store_true", help="check a person's syncs stay under quota"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    g = parser.add_argument_group("enumeration")
    g.add_argument("--accounts", type=positive_int, nargs="+", default=[10, 100], help="(10 100)")
    g.add_argument("--days", type=positive_int, default=5, help="simulated days (5)")
    g.add_argument("--scheme", default="hmac+lookup", help="scheme attacked (hmac+lookup)")
    g.add_argument("--registry", type=positive_int, default=5_000, help="registered users (5000)")
    g.add_argument(
        "--plan", type=positive_int, default=500_000, help="numbers in the plan (500000)"
    )
    g.add_argument(
        "--quota-scale",
        type=float,
        default=0.05,
        help="multiply the default quotas by this (0.05: a 1/20-scale world that runs in "
        "seconds; 1 for the real quotas)",
    )
    g.add_argument("--store", default="memory://", help="store URL (memory://)")
    g.add_argument("--book", type=positive_int, default=5_000, help="normal user's contacts (5000)")
    g.add_argument("--resyncs", type=int, default=10, help="normal user's daily re-syncs (10)")
    h = parser.add_argument_group("hash reversal")
    h.add_argument("--prefix", default="+98912", help="E.164 prefix of the range (+98912)")
    h.add_argument("--digits", type=int, default=6, help="digits after the prefix (6)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (0)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "audit",
        help="attack lab: many-account enumeration, sha256 reversal, what leaks",
        description="Run the attack lab against the real service: scrapers with many accounts "
        "under a simulated clock (--enumeration), a normal user's syncs (--normal-user), "
        "brute-force reversal of unsalted sha256 tokens (--hash-reversal) and the what-leaks "
        "table with the quota bounds (--leakage); all of them by default.",
    )
    add_audit_arguments(p)
    p.set_defaults(handler=audit_command)
