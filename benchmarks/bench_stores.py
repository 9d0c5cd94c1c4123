"""Store adapters against their bare drivers: bulk-load rows/s and the time to look up 1,000 tokens.

For every adapter the same registrations are loaded twice into fresh namespaces, once through
``put_users`` and once through the driver alone doing the same writes (plain dict inserts,
``executemany``, binary ``COPY``, a non-transactional pipeline), in alternating order. Inputs
are built before timing for both sides (tuples for the driver, ``UserRecord`` for the adapter,
which validates on construction). Goal: adapter >= 0.8x the bare driver's rows/s.
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
from contactmatch.stores import Discoverability, UserRecord, open_store
from contactmatch.stores.base import BaseStore

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
        # The same structures MemoryStore keeps: users and the token index.
        users: dict[str, Row] = {}
        by_token: dict[bytes, str] = {}
        for batch in batches:
            for row in batch:
                users[row[0]] = row
                by_token[row[1]] = row[0]
            advance(len(batch))
        self.state["by_token"] = by_token

    def _bare_sqlite(
        self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]
    ) -> None:
        conn = self.state["conn"]
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)", [r[:7] for r in batch]
            )
            conn.executemany("INSERT INTO user_keys VALUES (?, ?)", [(r[0], r[7]) for r in batch])
            conn.execute("COMMIT")
            advance(len(batch))

    def _bare_postgres(
        self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]
    ) -> None:
        conn = self.state["conn"]
        cols = "user_id, token, key_id, number_ct, disc, created_at, updated_at"
        types = ["text", "bytea", "text", "bytea", "int2", "float8", "float8"]
        for batch in batches:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY users ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(types)
                    for row in batch:
                        cp.write_row(row[:7])
                with cur.copy("COPY user_keys (user_id, wrapped) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "bytea"])
                    for row in batch:
                        cp.write_row((row[0], row[7]))
            advance(len(batch))

    def _bare_redis(self, batches: Sequence[Sequence[Row]], advance: Callable[[int], None]) -> None:
        r = self.state["conn"]
        p = self.tag
        g = "{" + p + ":g}"
        for batch in batches:
            pipe = r.pipeline(transaction=False)
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
    )
    if args.quick:
        args.rows, args.batch, args.repeat = 5_000, 1_000, 1
    report = Report("bench_stores", args)
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

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
