"""`pir` against `filter` (two rounds and one) and `bucket` on one registry: costs and what leaks.

For each registry size (10^5 and 10^6 registered; 10^7 with ``--full``) one registry of OPRF
tokens is shared by ``oprf+pir``, ``oprf+filter``, ``oprf+localfilter`` and ``oprf+bucket``,
as a :class:`~contactmatch.service.DiscoveryServer` shares it. Registered users other than the
book's are random 64-byte tokens (what OPRF outputs look like) with 15-character user ids.
Measured through each scheme's own request/response bytes (``SchemeServer.handle``):

* one request of 64 padded PIR retrievals: server CPU (best of 3, process time, BLAS threads
  included), client CPU to make the queries and to decode the answers, bytes up and down;
* the hint (downloaded once) and the hint delta after 1,000 users change (500 leave, 500
  join), which is what a client downloads instead of the hint;
* a whole discovery of a 1,000-contact book with 300 registered, per scheme: rounds, bytes
  up and down, bytes fetched once (filter, hint), client and server CPU;
* the one-round ``localfilter``'s filter bytes (ε = 2^-34, sized so a 10,000-contact sync
  misreports with probability at most 2^-20).

Goals (at 10^6): a 64-retrieval request costs <= 250 ms of server CPU and <= 2 MiB each way;
the hint <= 64 MiB; a 1,000-user hint delta <= 1/10 of the hint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _common import Report, console, parse_args
from contactmatch.hazmat.pir import query, recover
from contactmatch.keys import ServerKey
from contactmatch.lab.compare import run_discovery, workload
from contactmatch.oprf import Mode
from contactmatch.registry.pir import BATCH
from contactmatch.registry.shared import TokenRegistry
from contactmatch.registry.table import RegistryTable
from contactmatch.schemes.pirclient import PirHint
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.tokens import make_server_tokens
from contactmatch.schemes.wire import PirRequest, PirResponse, decode

SCHEMES = ("oprf+pir", "oprf+filter", "oprf+localfilter", "oprf+bucket")
MIB = 1024 * 1024


def cpu(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best process time (s) of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def one_size(n: int, book_size: int, sync: Report) -> dict[str, Any]:
    """Every figure at one registry size; returns the PIR row."""
    key = ServerKey.derive(b"\x07" * 32, b"bench-pir", Mode.OPRF)
    fn = make_server_tokens("oprf", key)
    hits, book = workload(int(book_size * 0.3), book_size)  # 300 registered, 700 not
    hit_tokens = fn.tokens(hits)
    others = n - len(hits)
    rng = np.random.default_rng(n)
    random_tokens = rng.bytes(64 * others)
    uids = [f"user-{i:010d}" for i in range(n)]
    tokens = [random_tokens[i * 64 : (i + 1) * 64] for i in range(others)] + hit_tokens
    owner = dict(zip(hit_tokens, uids[others:], strict=True))
    t0 = time.process_time()
    table = RegistryTable.build(uids, tokens, key_id=fn.key_id)
    t_table = time.process_time() - t0
    del tokens, random_tokens
    registry = TokenRegistry(table, version=1, confirm=lambda ts: [owner.get(t) for t in ts])
    servers = {s: SchemeServer(s, fn, registry=registry) for s in SCHEMES}
    pir_server = servers["oprf+pir"]
    build_s, pub = cpu(registry.pir)
    hint_s, hint = cpu(pir_server.published_hint)
    shape = pub.shape
    console.print(
        f"  {n:,}: table {t_table:.1f} s, PIR database {build_s:.1f} s, hint {hint_s:.1f} s "
        f"({shape.rows} x {shape.cols}, {len(hint) / MIB:.1f} MiB)"
    )

    # One request of 64 padded retrievals, through the scheme server's bytes path.
    cols = np.random.default_rng(1).integers(0, shape.cols, BATCH)
    q_s, (state, queries) = cpu(lambda: query(pub.params, pub.seed, cols))
    request = PirRequest(
        scheme="oprf+pir",
        key_id=fn.key_id,
        version=pub.version,
        batch=BATCH,
        queries=queries.astype("<u4").tobytes(),
    ).encode()
    server_s, response = cpu(lambda: pir_server.handle(request), repeat=3)
    msg = decode(response, PirResponse)
    hint_matrix = PirHint(hint).matrix
    answers = np.frombuffer(msg.answers, dtype="<u4").reshape(BATCH, shape.rows)
    r_s, values = cpu(lambda: recover(pub.params, hint_matrix, state, answers))
    truth = pub.database.columns(cols)  # every retrieved column is checked
    if not np.array_equal(values, truth):
        raise SystemExit("a PIR retrieval did not decode to its column")
    pir_row = {
        "registered": n,
        "rows": shape.rows,
        "cols": shape.cols,
        "slot_bytes": shape.slot_bytes,
        "server_ms_64": server_s * 1000,
        "client_query_ms_64": q_s * 1000,
        "client_decode_ms_64": r_s * 1000,
        "kib_up_64": len(request) / 1024,
        "kib_down_64": len(response) / 1024,
        "hint_mib": len(hint) / MIB,
        "build_s": build_s + hint_s,
    }

    # Whole discoveries of the same book, side by side.
    expected = set(hits)
    for name in SCHEMES:
        run = run_discovery(servers[name], book)
        if set(run.result.matches) != expected:
            raise SystemExit(f"{name} disagrees with the reference at {n:,}")
        sync.row(
            registered=n,
            scheme=name,
            rounds=run.rounds,
            kib_up=run.bytes_up / 1024,
            kib_down=run.bytes_down / 1024,
            kib_once=run.bytes_setup / 1024,
            client_ms=run.client_cpu * 1000,
            server_ms=run.server_cpu * 1000,
        )
    local_filter = len(servers["oprf+localfilter"].published_filter())
    two_round_filter = len(servers["oprf+filter"].published_filter())

    # 1,000 users change: 500 leave, 500 join; the delta a client downloads instead.
    before = pub.version
    leave = uids[:500]
    join_tokens = [rng.bytes(64) for _ in range(500)]
    t_apply, _ = cpu(
        lambda: registry.apply(
            [(f"join-{i:010d}", t) for i, t in enumerate(join_tokens)], leave, version=2
        )
    )
    delta = pir_server.published_hint(since=before)
    pir_row |= {
        "delta_kib_1000": len(delta) / 1024,
        "delta_share": len(delta) / len(hint),
        "apply_1000_ms": t_apply * 1000,
        "filter_kib": two_round_filter / 1024,
        "localfilter_kib": local_filter / 1024,
    }
    return pir_row


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0] if __doc__ else "",
        full=(int, 0, "1: also 10^7 registered (about 12 GB of memory)"),
        sizes=(str, "", "comma-separated registry sizes (overrides the defaults)"),
        book=(int, 1_000, "contacts in the phone book (30 % registered)"),
    )
    sizes = [100_000, 1_000_000] + ([10_000_000] if args.full else [])
    if args.quick:
        sizes, args.book = [2_000, 20_000], 200
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    title = (
        f"{args.book:,}-contact book with 30% registered, 64 padded retrievals per request, "
        f"registries of {', '.join(f'{x:,}' for x in sizes)}"
    )
    report = Report("bench_pir", args, title=f"oprf+pir, one request and the hint: {title}")
    sync = Report(
        "bench_pir_sync",
        args,
        title=f"One discovery: oprf+pir vs filter (2 rounds, 1 round) and bucket: {title}",
    )
    report.params = sync.params = {
        "sizes": ",".join(str(x) for x in sizes),
        "book": args.book,
        "batch": BATCH,
        "cores": os.cpu_count() or 1,
    }
    pir_rows = [one_size(n, args.book, sync) for n in sizes]
    for row in pir_rows:
        report.row(**row)
    goal_at = next((r for r in pir_rows if r["registered"] == 1_000_000), pir_rows[-1])
    where = f" at {goal_at['registered']:,}"
    report.goal(
        f"server ms, one 64-retrieval request{where}", goal_at["server_ms_64"], 250, at_least=False
    )
    report.goal(f"KiB up, one request{where}", goal_at["kib_up_64"], 2048, at_least=False)
    report.goal(f"KiB down, one request{where}", goal_at["kib_down_64"], 2048, at_least=False)
    report.goal(f"hint MiB{where}", goal_at["hint_mib"], 64, at_least=False)
    report.goal(f"1,000-user hint delta / hint{where}", goal_at["delta_share"], 0.1, at_least=False)
    report.note(
        "One request of 64 padded retrievals: server_ms_64 is the scheme server's whole "
        "handling of the request bytes; the client's CPU is split into making the queries and "
        "decoding the answers. hint_mib is downloaded once; delta_kib_1000 is what a client "
        "downloads instead after 500 users leave and 500 join. filter_kib and localfilter_kib "
        "are the published filters of oprf+filter (2^-20) and oprf+localfilter (2^-34 per "
        "test: 2^-20 per 10,000-contact sync)."
    )
    sync.note(
        "kib_once is fetched once and then patched by deltas (the filter; for pir the filter "
        "and the hint). CPU is process time, worker threads included."
    )

    def plot_pir(ax: Any) -> None:
        n = [r["registered"] for r in pir_rows]
        ax.plot(n, [r["server_ms_64"] for r in pir_rows], "o-", label="server ms, 64 retrievals")
        ax.plot(n, [r["kib_up_64"] / 1024 for r in pir_rows], "s-", label="MiB up, one request")
        ax.plot(n, [r["kib_down_64"] / 1024 for r in pir_rows], "^-", label="MiB down")
        ax.plot(n, [r["hint_mib"] for r in pir_rows], "d-", label="hint MiB (once)")
        ax.plot(
            n, [r["delta_kib_1000"] / 1024 for r in pir_rows], "v-", label="1,000-user delta MiB"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("registered users")

    def plot_sync(ax: Any) -> None:
        big = max(sizes)
        rows = [r for r in sync.rows if r["registered"] == big]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["kib_up"] + r["kib_down"] for r in rows], 0.4, label="KiB per sync")
        ax.bar(x + 0.2, [r["server_ms"] for r in rows], 0.4, label="server CPU ms per sync")
        ax.set_xticks(x, [r["scheme"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel(f"per discovery at {big:,} registered (log)")

    status = report.finish(plot_pir)
    return max(status, sync.finish(plot_sync))


if __name__ == "__main__":
    raise SystemExit(main())
