"""Compare every scheme pair on one workload: bytes up/down, round trips, client and server CPU.

The researchers' table. One registry and one phone book (30% registered) for every pair (see
``contactmatch.lab.compare``); each discovery runs through the same bytes-in/bytes-out
path a network would carry and is repeated (best-of) to steady the CPU figures. No goals:
this benchmark describes trade-offs, it does not gate anything. The plot is drawn by
``contactmatch.lab.plots``, as ``contactmatch bench --plot`` draws it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args, progress
from contactmatch.lab.compare import compare, workload
from contactmatch.lab.plots import plot_schemes, schemes_title
from contactmatch.schemes import scheme_names


def main() -> int:
    args = parse_args(
        __doc__ or "",
        registry=(int, 100_000, "registered users"),
        book=(int, 1_000, "contacts in the phone book"),
        anonymity=(int, 64, "target bucket size (bucket method)"),
        repeat=(int, 3, "discoveries per scheme (best CPU kept)"),
    )
    if args.quick:
        args.registry, args.book, args.repeat = 2_000, 100, 1
    registered, book = workload(args.registry, args.book)
    report = Report(
        "bench_schemes",
        args,
        title=schemes_title(len(registered), len(book), args.anonymity),
    )
    report.params = {"registry": len(registered), "book": len(book), "anonymity": args.anonymity}
    names = scheme_names()
    with progress("schemes", len(names)) as advance:
        for c in compare(
            names, registered, book, anonymity=args.anonymity, repeat=args.repeat,
            on_done=advance,
        ):  # fmt: skip
            r = c.report
            if not c.agrees:
                raise SystemExit(f"{r.scheme} disagrees with the reference")
            report.row(
                scheme=r.scheme,
                rounds=r.rounds,
                kb_up=r.bytes_up / 1024,
                kb_down=r.bytes_down / 1024,
                kb_setup=r.bytes_setup / 1024,
                client_ms=r.client_cpu * 1000,
                server_ms=r.server_cpu * 1000,
                matches=len(r.result.matches),
            )
    report.note(
        "kb_setup is fetched once and cached (server info, and for `filter` the published "
        "filter, refreshed by deltas); CPU is process time, worker threads included."
    )

    return report.finish(lambda ax: plot_schemes(ax, report.rows))


if __name__ == "__main__":
    raise SystemExit(main())
