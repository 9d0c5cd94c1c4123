"""Store adapters against their bare drivers: bulk-load rows/s and the time to look up 1,000 tokens.

For every adapter the same registrations are loaded twice into fresh namespaces, once through
``put_users`` and once through the driver alone doing the same writes (plain dict inserts,
``executemany``, binary ``COPY``, a non-transactional pipeline), in alternating order. Both
sides write the same tables: the users, their wrapped keys, the change feed (one entry per
user, numbered from the head counter) and the key census. Inputs are built before timing for
both sides (tuples for the driver, ``UserRecord`` for the adapter, which validates on
construction). Goal: adapter >= 0.8x the bare driver's rows/s.

Two more reports from the same run:

* ``bench_store_bytes``: bytes per registered user of a SQLite file and a PostgreSQL schema at
  each ``--bytes-rows`` size, with realistic records (64-byte OPRF tokens, number ciphertexts
  and wrapped per-user keys made by ``atrest.DataKey.seal_number``, 16-character key ids,
  10-character user ids), right after loading (the feed holds one entry per user) and after
  the feed is compacted and the file/tables rewritten; per table and index, and per column.
* ``bench_feed_cost``: PostgreSQL and SQLite registration throughput with the change feed
  (and, PostgreSQL, its commit-order serialisation and the census triggers) against the same
  adapter with them switched off: bulk batches, and single-user registrations from 4 threads.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import Report, best_of, parse_args, progress
from _store_sizes import feed_cost, postgres_bytes, realistic_records, sqlite_bytes
from contactmatch.stores import Discoverability, UserRecord, open_store
from contactmatch.stores.base import BaseStore, census_deltas

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_BASE = "redis://127.0.0.1:6379/0"
SERVICES = {"postgres": ("127.0.0.1", 5432), "redis": ("127.0.0.1", 6379)}
DISC = (Discoverability.EVERYONE, Discoverability.CONTACTS, Discoverability.NOBODY)

Row = tuple[str, bytes, str, bytes, int, float, float, bytes]


def make_rows(n: int, seed: int = 7) -> list[Row]:
    """Registrations as raw tuples: 90% discoverable by everyone, like a real directory."""
    rnd = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        r = rnd.random()
        disc = 0 if r < 0.9 else (1 if r < 0.95 else 2)
        # number_ct and the wrapped per-user key at their real sizes (atrest v2).
        out.append(
            (
                f"u{i:09d}",
                rnd.randbytes(32),
                "k1",
                rnd.randbytes(48),
                disc,
                1e9 + i,
                1e9 + i,
                rnd.randbytes(72),
            )
        )
    return out


def as_records(rows: Sequence[Row]) -> list[UserRecord]:
    return [
        UserRecord(
            user_id=u,
            token=t,
            key_id=k,
            number_ct=c,
            discoverability=DISC[d],
            created_at=a,
            updated_at=b,
            wrapped_key=w,
        )
        for u, t, k, c, d, a, b, w in rows
    ]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# -- one adapter: namespaces, bare loads, bare lookups -------------------------------------


class Side:
    """A fresh namespace for one load: the URL, a bare loader, a bare lookup, cleanup."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.tag = "bench" + uuid.uuid4().hex[:10]
        if backend == "memory":
            self.url = "memory://"
        elif backend == "sqlite":
            self.url = f"sqlite:///{workdir}/{self.tag}.db"
        elif backend == "postgres":
            self.url = f"{PG_BASE}?schema={self.tag}"
        else:
            self.url = f"{REDIS_BASE}?prefix={self.tag}"
        self.state: dict[str, Any] = {}

    def open(self) -> BaseStore:
        """Open the adapter on this namespace (this also creates the schema for bare loads)."""
        return open_store(self.url)

    def prepare_bare(self) -> None:
        """Untimed: create the schema (via the adapter) and the driver's own connection.

        The adapter side also connects and migrates before its clock starts.
        """
        if self.backend == "memory":
            return
        self.open().close()  # schema and triggers, so both sides write the same tables
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA cache_size = -65536")  # what the adapter sets, to be fair
            self.state["conn"] = conn
        elif self.backend == "postgres":
            import psycopg

            self.state["conn"] = psycopg.connect(PG_BASE, options=f"-c search_path={self.tag}")
        else:
            import redis

            self.state["conn"] = redis.Redis.from_url(REDIS_BASE)

    def bare_load(self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]) -> None:
        """Timed: write the same rows with the driver alone."""
        getattr(self, f"_bare_{self.backend}")(batches, advance)

    def _bare_memory(
        self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]
    ) -> None:
        # The same structures MemoryStore keeps: users, the token index, the feed, the census.
        users: dict[str, Row] = {}
        by_token: dict[bytes, str] = {}
        feed: list[tuple[int, str, int]] = []
        census: dict[tuple[int, str], int] = {}
        head = 0
        for batch in batches:
            for row in batch:
                users[row[0]] = row
                by_token[row[1]] = row[0]
            at = int(time.time())
            feed.extend((head + i, row[0], at) for i, row in enumerate(batch, 1))
            head += len(batch)
            for k, n in census_deltas((r[2], r[7]) for r in batch).items():
                census[k] = census.get(k, 0) + n
            advance(len(batch))
        self.state["by_token"] = by_token

    def _bare_sqlite(
        self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]
    ) -> None:
        conn = self.state["conn"]
        conn.execute("INSERT OR IGNORE INTO key_ids (key_id) VALUES ('k1')")
        code = conn.execute("SELECT code FROM key_ids WHERE key_id = 'k1'").fetchone()[0]
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO users (user_id, token, kid, number_ct, disc, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r[0], r[1], code, r[3], r[4], r[5], None if r[6] == r[5] else r[6])
                    for r in batch
                ],
            )
            conn.executemany("INSERT INTO user_keys VALUES (?, ?)", [(r[0], r[7]) for r in batch])
            conn.executemany(
                "INSERT INTO key_census VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key_id) DO UPDATE SET n = n + excluded.n",
                [(k, i, n) for (k, i), n in census_deltas((r[2], r[7]) for r in batch).items()],
            )
            head = conn.execute(
                "UPDATE meta SET value = value + ? WHERE name = 'feed_head' RETURNING value",
                (len(batch),),
            ).fetchone()[0] - len(batch)
            at = int(time.time())
            conn.executemany(
                "INSERT INTO feed VALUES (?, ?, ?)",
                [(head + i, r[0], at) for i, r in enumerate(batch, 1)],
            )
            conn.execute("COMMIT")
            advance(len(batch))

    def _bare_postgres(
        self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]
    ) -> None:
        conn = self.state["conn"]
        cols = "user_id, token, kid, number_ct, disc, created_at, updated_at"
        types = ["text", "bytea", "int2", "bytea", "int2", "float8", "float8"]
        conn.execute("INSERT INTO key_ids (key_id) VALUES ('k1') ON CONFLICT DO NOTHING")
        code = conn.execute("SELECT code FROM key_ids WHERE key_id = 'k1'").fetchone()[0]
        conn.commit()
        for batch in batches:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY users ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(types)
                    for r in batch:
                        cp.write_row((*r[:2], code, *r[3:6], None if r[6] == r[5] else r[6]))
                with cur.copy("COPY user_keys (user_id, wrapped) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "bytea"])
                    for row in batch:
                        cp.write_row((row[0], row[7]))
                cur.execute(
                    "UPDATE feed_state SET value = value + %s WHERE name = 'head' RETURNING value",
                    (len(batch),),
                )
                head = cur.fetchone()[0] - len(batch)
                cur.execute(
                    "INSERT INTO feed (seq, at, user_id) SELECT %s + o, %s, u "
                    "FROM unnest(%s::text[]) WITH ORDINALITY AS t(u, o)",
                    (head, int(time.time()), [r[0] for r in batch]),
                )
                census = census_deltas((r[2], r[7]) for r in batch)
                cur.execute(
                    "INSERT INTO key_census SELECT * FROM unnest(%s::int2[], %s::text[], "
                    "%s::int8[]) ON CONFLICT (kind, key_id) DO UPDATE "
                    "SET n = key_census.n + excluded.n",
                    ([k for k, _ in census], [i for _, i in census], list(census.values())),
                )
            advance(len(batch))

    def _bare_redis(self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]) -> None:
        r = self.state["conn"]
        p = self.tag
        g = "{" + p + ":g}"
        for batch in batches:
            pipe = r.pipeline(transaction=False)
            head = r.incrby(g + ":seq", len(batch)) - len(batch)
            at = int(time.time())
            pipe.rpush(g + ":feed", *(f"{head + i}|{at}|{b[0]}" for i, b in enumerate(batch, 1)))
            for (kind, kid), n in census_deltas((b[2], b[7]) for b in batch).items():
                pipe.hincrby(g + ":census", f"{kind}:{kid}", n)
            for uid, tok, kid, ct, disc, cat, uat, wk in batch:
                hexed = tok.hex()
                uk = "{" + p + ":u:" + uid + "}"
                pipe.hset(
                    uk,
                    mapping={
                        "tok": tok,
                        "hex": hexed,
                        "kid": kid,
                        "ct": ct,
                        "disc": str(disc),
                        "cat": repr(cat),
                        "uat": repr(uat),
                    },
                )
                pipe.set(uk + ":k", wk)
                pipe.set("{" + p + ":t:" + hexed + "}", uid)
                pipe.zadd(g + ":ids", {uid: 0})
            pipe.execute()
            advance(len(batch))

    def bare_lookup(self, tokens: Sequence[bytes]) -> int:
        """Look tokens up with the driver alone; returns the number found."""
        b = self.backend
        if b == "memory":
            by_token = self.state["by_token"]
            return sum(t in by_token for t in tokens)
        if b == "sqlite":
            conn = self.state["conn"]
            found = 0
            for i in range(0, len(tokens), 500):
                chunk = tokens[i : i + 500]
                q = f"SELECT * FROM users WHERE token IN ({', '.join('?' * len(chunk))})"
                found += len(conn.execute(q, chunk).fetchall())
            return found
        if b == "postgres":
            rows = self.state["conn"].execute(
                "SELECT * FROM users WHERE token = ANY(%s::bytea[])", (list(tokens),)
            )
            return len(rows.fetchall())
        r = self.state["conn"]
        uids = r.mget(["{" + self.tag + ":t:" + t.hex() + "}" for t in tokens])
        pipe = r.pipeline(transaction=False)
        for u in uids:
            if u is not None:
                pipe.hgetall("{" + self.tag + ":u:" + u.decode() + "}")
        return len(pipe.execute())

    def cleanup(self) -> None:
        """Drop the namespace so the next load starts empty (and memory is given back)."""
        conn = self.state.pop("conn", None)
        if conn is not None:
            conn.close()
        self.state.clear()
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(PG_BASE, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{self.tag}" CASCADE')
        elif self.backend == "redis":
            import redis

            r = redis.Redis.from_url(REDIS_BASE)
            batch: list[bytes] = []
            for key in r.scan_iter(match="{" + self.tag + ":*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    r.unlink(*batch)
                    batch.clear()
            if batch:
                r.unlink(*batch)
            r.close()


def measure(
    backend: str,
    rows: list[Row],
    records: list[UserRecord],
    args: Any,
    workdir: Path,
) -> dict[str, Any]:
    """Best-of-``repeat`` rows/s for adapter and bare driver, then 1,000-token lookups."""
    n, size = len(rows), args.batch
    row_batches = [rows[i : i + size] for i in range(0, n, size)]
    rec_batches = [records[i : i + size] for i in range(0, n, size)]
    rnd = random.Random(11)
    present = [rows[i][1] for i in rnd.sample(range(n), min(n, args.lookups * 9 // 10))]
    probe = present + [rnd.randbytes(32) for _ in range(args.lookups - len(present))]
    best = {"adapter": float("inf"), "bare": float("inf")}
    lookup_ms = bare_lookup_ms = 0.0
    for rep in range(args.repeat):
        # Alternate who goes first so neither side always gets the warmer machine.
        order = ("bare", "adapter") if rep % 2 == 0 else ("adapter", "bare")
        for who in order:
            side = Side(backend, workdir)
            gc.collect()
            gc.disable()  # as timeit does: no collector pauses inside a timed load
            try:
                with progress(f"{backend} {who} load {rep + 1}", n) as advance:
                    if who == "bare":
                        side.prepare_bare()
                        t0 = time.perf_counter()
                        side.bare_load(row_batches, advance)
                        elapsed = time.perf_counter() - t0
                        if rep == args.repeat - 1:
                            found = side.bare_lookup(probe)
                            assert found == len(present), (found, len(present))
                            bare_lookup_ms = 1e3 * best_of(lambda s=side: s.bare_lookup(probe))
                    else:
                        store = side.open()
                        try:
                            t0 = time.perf_counter()
                            for batch in rec_batches:
                                store.put_users(batch)
                                advance(len(batch))
                            elapsed = time.perf_counter() - t0
                            assert store.count_users() == n
                            if rep == args.repeat - 1:
                                got = store.lookup_tokens(probe)
                                assert sum(g is not None for g in got) == len(present)
                                lookup_ms = 1e3 * best_of(lambda s=store: s.lookup_tokens(probe))
                        finally:
                            store.close()
                best[who] = min(best[who], elapsed)
            finally:
                gc.enable()
                side.cleanup()
    return {
        "adapter": backend,
        "rows": n,
        "adapter rows/s": n / best["adapter"],
        "bare rows/s": n / best["bare"],
        "ratio": best["bare"] / best["adapter"],
        f"lookup {args.lookups} ms": lookup_ms,
        f"bare lookup {args.lookups} ms": bare_lookup_ms,
    }


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        rows=(int, 1_000_000, "registrations loaded per adapter and side"),
        batch=(int, 10_000, "registrations per put_users call / transaction"),
        lookups=(int, 1_000, "tokens per lookup call"),
        repeat=(int, 2, "loads per side; the best is kept"),
        backends=(str, "memory,sqlite,postgres,redis", "comma-separated adapters"),
        bytes_rows=(str, "100000,1000000", "sizes for store bytes per user ('' to skip)"),
        cost_rows=(int, 100_000, "registrations per feed-cost load (0 to skip)"),
        cost_singles=(int, 2_000, "single-user registrations per feed-cost run"),
    )
    if args.quick:
        args.rows, args.batch, args.repeat = 5_000, 1_000, 1
        args.bytes_rows, args.cost_rows, args.cost_singles = "2000", 2_000, 200
    report = Report(
        "bench_stores",
        args,
        title=(
            "Store bulk load: rows/s by adapter, contactmatch vs the bare driver\n"
            f"({args.rows:,} registrations in batches of {args.batch:,}, best of {args.repeat})"
        ),
    )
    report.params = {"rows": args.rows, "batch": args.batch, "repeat": args.repeat}
    ci = os.environ.get("CI", "").lower() == "true"
    rows = make_rows(args.rows)
    records = as_records(rows)
    # The inputs are millions of long-lived objects; left to the collector, every full
    # collection rescans them and lands on whichever side happens to allocate at that moment.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="bench_stores_") as tmp:
        for backend in args.backends.split(","):
            host_port = SERVICES.get(backend)
            if host_port and not reachable(*host_port) and not ci:
                report.note(f"{backend}: skipped, server unreachable at {host_port}")
                continue
            row = measure(backend, rows, records, args, Path(tmp))
            report.row(**row)
            report.goal(f"{backend} bulk load / bare driver", row["ratio"], 0.8, at_least=True)
    report.note(
        "ratio = bare seconds / adapter seconds for the same rows (best of the repeats); "
        "bare = dict inserts / executemany / binary COPY / pipeline writing the same keys; "
        "inputs built before timing and frozen (gc.freeze), collector off while timing."
    )

    def plot(ax: Any) -> None:
        names = [r["adapter"] for r in report.rows]
        xs = range(len(names))
        ax.bar(
            [x - 0.2 for x in xs],
            [r["adapter rows/s"] for r in report.rows],
            0.4,
            label="contactmatch adapter",
        )
        ax.bar(
            [x + 0.2 for x in xs], [r["bare rows/s"] for r in report.rows], 0.4, label="bare driver"
        )
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("registrations loaded per second")
        ax.set_yscale("log")
        ax.legend()

    status = report.finish(plot)
    with tempfile.TemporaryDirectory(prefix="bench_stores_") as tmp:
        status |= store_bytes(args, ci, Path(tmp))
        status |= feed_costs(args, ci, Path(tmp))
    return status


def store_bytes(args: Any, ci: bool, workdir: Path) -> int:
    """The ``bench_store_bytes`` report: SQLite file and PostgreSQL schema bytes per user."""
    sizes = [int(x) for x in args.bytes_rows.split(",") if x]
    if not sizes:
        return 0
    report = Report(
        "bench_store_bytes",
        args,
        title=f"Stored bytes per user by store and table (sizes {args.bytes_rows})",
    )
    report.params = {"sizes": args.bytes_rows}
    pg = reachable(*SERVICES["postgres"]) or ci
    for n in sizes:
        records = realistic_records(n)
        rows = sqlite_bytes(records, workdir) + (postgres_bytes(records) if pg else [])
        for row in rows:
            columns = row.pop("columns")
            report.row(**row)
            if row["phase"].startswith("feed compacted"):
                report.note(f"{row['store']}, {n:,} users, stored bytes per column: {columns}.")
        del records
    if not pg:
        report.note("postgres: skipped, server unreachable")
    report.note(
        "bytes/user = file size (SQLite, WAL checkpointed) or the sum of every relation of the "
        "schema incl. TOAST (PostgreSQL), divided by the users; the other columns split it by "
        "table and index. Records: 64-byte tokens, DataKey.seal_number ciphertexts and wrapped "
        "keys, 16-character key ids, 10-character user ids in random order, batches of 10,000."
    )
    return report.finish()


def feed_costs(args: Any, ci: bool, workdir: Path) -> int:
    """The ``bench_feed_cost`` report: writers with and without the change feed."""
    if not args.cost_rows:
        return 0
    report = Report(
        "bench_feed_cost",
        args,
        title=(
            "Change feed cost: writer time with and without the feed "
            f"({args.cost_rows:,} rows, {args.cost_singles:,} single writes)"
        ),
    )
    report.params = {"rows": args.cost_rows, "singles": args.cost_singles, "repeat": args.repeat}
    records = realistic_records(args.cost_rows, seed=5)
    backends = ["sqlite"] + (["postgres"] if reachable(*SERVICES["postgres"]) or ci else [])
    for backend in backends:
        for row in feed_cost(backend, records, args.cost_singles, max(args.repeat, 1), workdir):
            report.row(**row)
    report.note(
        "shipped = feed entries numbered in commit order (SQLite: under its one writer lock; "
        "PostgreSQL: the head counter's row lock, taken last and held to commit) + key census "
        "(counted from the rows written and replaced, moved in the same transaction). "
        "'no feed' drops the feed append on the same handle; 'no feed, no census' also the "
        "census. Single-user calls: 4 threads, one put_users call (one transaction) per user. "
        "Best of the repeats, alternating order."
    )
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
