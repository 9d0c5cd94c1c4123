"""Bulk import throughput: in this process vs a Dask LocalCluster of 1 and 2 workers.

What users run: ``contactmatch.bulk.import_file`` on a generated ``user_id,number`` file
into a real store, timed from the first line read to the last partition written. A cluster's
start-up is timed apart (a deployment starts it once). For every configuration the run
reports numbers/s, the scan and write passes, and where the workers' time went: computing
(normalisation, OPRF evaluation, sealing) or waiting on the store (reads of existing users,
the write transaction with its completion mark).

Goal (measured in the same run): 2 workers import at least 1.7x as fast as 1 worker.

Then, per store adapter, a 2-worker import shows the store-write share of the time, and the
bare OPRF evaluation rate of one core (``OprfServer(workers=1)``) is measured so that
docs/operations.md can turn the per-core rate into a plan for 10^8 and 10^9 numbers.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, console, parse_args

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
_URLS = {"postgres": PG, "redis": REDIS}


def write_input(path: Path, n: int, seed: int = 1) -> None:
    """``n`` distinct users and numbers (mobile ranges of +98), as a CSV with a header.

    Subscriber numbers are ``(i * a + seed) mod 8*10^7`` with ``a`` prime to the modulus:
    distinct for every ``i``, spread over the range, and cheap to make at 10^7 lines.
    """
    a, m = 2_654_435_761, 80_000_000
    with path.open("w") as fh:
        fh.write("user_id,number\n")
        for start in range(0, n, 100_000):
            idx = np.arange(start, min(n, start + 100_000), dtype=np.int64)
            subs = (idx * a + seed) % m + 10_000_000
            fh.write(
                "".join(
                    f"u{i:09d},+989{s // 10_000_000 + 10}{s % 10_000_000:07d}\n"
                    for i, s in zip(idx.tolist(), subs.tolist(), strict=True)
                )
            )


@contextmanager
def fresh_store(kind: str, tmp: Path) -> Iterator[str]:
    """An empty store of ``kind``, dropped afterwards."""
    tag = "bulk" + uuid.uuid4().hex[:10]
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/{tag}.db"
    elif kind == "postgres":
        yield f"{_URLS['postgres']}?schema={tag}"
        import psycopg

        with psycopg.connect(_URLS["postgres"], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
    elif kind == "redis":
        yield f"{_URLS['redis']}?prefix={tag}"
        import redis

        r = redis.Redis.from_url(_URLS["redis"])
        batch: list[bytes] = []
        for key in r.scan_iter(match="{" + tag + ":*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                r.delete(*batch)
                batch.clear()
        if batch:
            r.delete(*batch)
        r.close()
    else:
        raise SystemExit(f"unknown store {kind!r}")


def run_import(src: Path, url: str, keys: tuple[Path, Path], engine: Any, size: int) -> Any:
    from contactmatch.bulk import import_file

    return import_file(
        src, url, keys[0], keys[1], partition_size=size, engine=engine, report_path=None
    )


def oprf_rate(key_path: Path, n: int) -> float:
    """Numbers/s of one core evaluating tokens (the bulk work's floor)."""
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import OprfServer

    oprf = OprfServer(ServerKey.load(key_path), workers=1)
    inputs = [f"+98912{i:07d}".encode() for i in range(n)]
    t0 = time.perf_counter()
    oprf.evaluate_tokens(inputs)
    return n / (time.perf_counter() - t0)


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        numbers=(int, 1_000_000, "numbers in the scaling runs (default 10^6)"),
        store_numbers=(int, 200_000, "numbers in the per-adapter runs (default 200,000)"),
        stores=(str, "sqlite,postgres,redis", "adapters for the store-share runs"),
        scaling_store=(str, "postgres", "the store of the scaling runs (default postgres)"),
        partition=(int, 20_000, "lines per partition (default 20,000)"),
        pg=(str, PG, "PostgreSQL URL (a schema per run is created and dropped)"),
        redis=(str, REDIS, "Redis URL (a key prefix per run is created and deleted)"),
    )
    _URLS.update(postgres=args.pg, redis=args.redis)
    if args.quick:
        args.numbers, args.store_numbers, args.partition = 3_000, 2_000, 500
        args.scaling_store = "sqlite"
    from contactmatch.atrest import DataKey
    from contactmatch.bulk import DaskEngine, LocalEngine
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode

    report = Report(
        "bench_bulk",
        args,
        title=(
            "Bulk import: numbers/s by engine and store\n"
            f"({args.numbers:,} numbers into {args.scaling_store}, {args.store_numbers:,} per "
            f"store run, partitions of {args.partition:,} lines)"
        ),
    )
    report.params = {
        "numbers": args.numbers,
        "store_numbers": args.store_numbers,
        "partition": args.partition,
        "scaling_store": args.scaling_store,
    }
    results: dict[str, float] = {}
    store_wait: dict[str, float] = {}  # seconds a worker waited on the store per number
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as d:
        tmp = Path(d)
        key_path, data_path = tmp / "oprf.key", tmp / "data.key"
        ServerKey.generate(Mode.OPRF).save(key_path)
        DataKey.generate().save(data_path)
        keys = (key_path, data_path)
        big, small = tmp / "big.csv", tmp / "small.csv"
        console.print(f"writing {args.numbers:,} lines")
        write_input(big, args.numbers)
        write_input(small, args.store_numbers, seed=2)
        per_core = oprf_rate(key_path, 2_000 if args.quick else 20_000)
        report.note(f"Bare OPRF token evaluation, one core: {per_core:,.0f} numbers/s.")

        def measure(label: str, engine: Any, src: Path, kind: str, startup: float) -> None:
            with fresh_store(kind, tmp) as url:
                console.print(f"{label} on {kind}: importing")
                rep = run_import(src, url, keys, engine, args.partition)
            busy = rep.compute_seconds + rep.store_seconds
            rate = rep.imported / rep.seconds
            # Keyed by input too: the store-share runs (the small file, on the same store as
            # the scaling runs) must not replace the scaling run of the same engine.
            results[f"{label}/{kind}/{src.name}"] = rate
            report.row(
                run=label,
                store=kind,
                numbers=rep.imported,
                workers=rep.workers,
                startup_s=startup,
                scan_s=rep.scan_seconds,
                write_s=rep.write_seconds,
                total_s=rep.seconds,
                numbers_per_s=rate,
                per_worker_per_s=rate / rep.workers,
                store_share=rep.store_seconds / busy if busy else 0.0,
                store_us_per_number=rep.store_seconds / rep.imported * 1e6 if rep.imported else 0,
            )
            store_wait[f"{label}/{kind}/{src.name}"] = (
                rep.store_seconds / rep.imported if rep.imported else 0.0
            )

        measure("in-process", LocalEngine(), big, args.scaling_store, 0.0)
        for n in (1, 2):
            t0 = time.perf_counter()
            eng = DaskEngine(f"local:{n}")
            startup = time.perf_counter() - t0
            try:
                measure(f"local:{n}", eng, big, args.scaling_store, startup)
                if n == 2:
                    for kind in [s for s in args.stores.split(",") if s]:
                        measure("local:2", eng, small, kind, startup)
            finally:
                eng.close()
    one = results[f"local:1/{args.scaling_store}/big.csv"]
    two = results[f"local:2/{args.scaling_store}/big.csv"]
    report.goal("2 workers / 1 worker (numbers/s)", two / one, 1.7, at_least=True)
    report.note(
        f"One LocalCluster worker imports at {one / per_core:.0%} of the bare one-core OPRF "
        "rate (the rest: normalising, sealing, the store and the task overhead)."
    )
    # A plan for operators, derived from this run's two-worker rate per worker (which
    # includes waiting on the store): time = N / (machines x cores x rate).
    per_worker = two / 2
    plan = []
    for n_numbers in (10**8, 10**9):
        cells = []
        for machines in (1, 4, 16):
            seconds = n_numbers / (machines * 16 * per_worker)
            cells.append(
                f"{machines}x16 cores {seconds / 60:,.1f} min"
                if seconds < 3600
                else f"{machines}x16 cores {seconds / 3600:,.1f} h"
            )
        plan.append(f"10^{len(str(n_numbers)) - 1} numbers: " + ", ".join(cells))
    report.note(
        f"Plan at {per_worker:,.0f} numbers/s per worker core (the local:2 run): "
        + "; ".join(plan)
        + "."
    )
    ceilings = [
        f"{kind} {1 / wait:,.0f} numbers/s ({wait * 1e6:,.0f} us per number)"
        for key, wait in store_wait.items()
        if key.startswith("local:2/") and key.endswith("/small.csv") and wait
        for kind in (key.split("/")[1],)
    ]
    report.note(
        "If every store wait were serialised, one store would cap an import at: "
        + ", ".join(ceilings)
        + " (a bound for a single-threaded Redis primary; concurrent COPYs overlap in "
        "PostgreSQL, whose real ceiling is higher)."
    )

    def plot(ax: Any) -> None:
        labels = [f"{r['run']}\n{r['store']}\n{r['numbers']:,}" for r in report.rows]
        rates = [r["numbers_per_s"] for r in report.rows]
        bars = ax.bar(range(len(rates)), rates, color="#4c72b0")
        for b, r in zip(bars, report.rows, strict=True):
            ax.annotate(
                f"store {r['store_share']:.0%}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(rates)), labels, fontsize=7)
        ax.set_ylabel("numbers imported per second")
        ax.set_ylim(0, max(rates) * 1.2)
        ax.set_xlabel(f"engine, store, numbers (partitions of {args.partition:,} lines)")

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
