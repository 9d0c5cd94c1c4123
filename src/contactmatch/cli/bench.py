"""``contactmatch bench``: compare scheme pairs on one synthetic workload (a table or JSON).

``--plot PATH`` also writes the PNG that ``benchmarks/bench_schemes.py`` (``make bench``)
writes, drawn by the same code (:mod:`contactmatch.lab.plots`, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from contactmatch.cli._args import positive_int

if TYPE_CHECKING:
    from contactmatch.lab.compare import Comparison

__all__ = ["add_parser", "run"]

_COLUMNS = ("scheme", "rounds", "KiB up", "KiB down", "KiB setup", "client ms", "server ms")


def run(args: argparse.Namespace) -> int:
    """Run :func:`contactmatch.lab.compare` and render its results."""
    from contactmatch.cli._output import (
        new_table,
        print_table,
        progress_bar,
        stdout_console,
        write_json,
    )
    from contactmatch.lab.compare import compare, workload
    from contactmatch.schemes.base import get_scheme, scheme_names

    names = scheme_names() if args.schemes == "all" else args.schemes.split(",")
    for name in names:
        get_scheme(name)  # fail on a typo before building the workload
    if args.plot is not None:
        from contactmatch.lab.plots import require_matplotlib

        require_matplotlib()  # fail before the run, not after it
    registered, book = workload(args.registry, args.book)
    with progress_bar("schemes", len(names)) as advance:
        results = list(
            compare(names, registered, book, anonymity=args.anonymity, on_done=lambda: advance(1))
        )
    if args.plot is not None:
        _plot(args.plot, results, len(registered), len(book), args.anonymity)
    if args.json:
        write_json(
            {
                "registered": len(registered),
                "contacts": len(book),
                "anonymity": args.anonymity,
                "schemes": [c.as_dict() for c in results],
            }
        )
        return 0
    table = new_table(
        f"{len(registered):,} registered, {len(book):,} contacts", _COLUMNS, left=("scheme",)
    )
    for c in results:
        r = c.report
        table.add_row(
            r.scheme + ("" if c.agrees else " [red](disagrees)[/]"),
            str(r.rounds),
            f"{r.bytes_up / 1024:,.1f}",
            f"{r.bytes_down / 1024:,.1f}",
            f"{r.bytes_setup / 1024:,.1f}",
            f"{r.client_cpu * 1000:,.1f}",
            f"{r.server_cpu * 1000:,.1f}",
        )
    console = stdout_console()
    print_table(console, table)
    if args.plot is not None:
        console.print(f"Plot written to {args.plot}", markup=False, highlight=False)
    return 0


def _plot(path: Path, results: list[Comparison], registry: int, book: int, anonymity: int) -> None:
    from contactmatch.lab.plots import save_schemes_plot, schemes_title

    rows = [
        {
            "scheme": c.report.scheme,
            "kb_up": c.report.bytes_up / 1024,
            "kb_down": c.report.bytes_down / 1024,
        }
        for c in results
    ]
    save_schemes_plot(rows, path, title=schemes_title(registry, book, anonymity))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "bench",
        help="compare matching schemes on a synthetic workload",
        description="Run scheme pairs in-process on one synthetic registry and phone book and "
        "print bytes up/down, round trips and CPU on each side.",
    )
    p.add_argument(
        "--registry", type=positive_int, default=20_000, help="registered users (20,000)"
    )
    p.add_argument(
        "--book", type=positive_int, default=1_000, help="contacts in the phone book (1,000)"
    )
    p.add_argument("--anonymity", type=positive_int, default=64, help="target bucket size (64)")
    p.add_argument("--schemes", default="all", help="comma-separated scheme names, or 'all'")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="also write the PNG plot of bytes per discovery, as `make bench` does "
        "(needs the bench extra: pip install 'contactmatch[bench]')",
    )
    p.set_defaults(handler=run)
