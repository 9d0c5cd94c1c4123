"""The registry at messenger scale: memory, start-up, refresh, store bytes, registration.

For each store (SQLite file, PostgreSQL schema) and each size N (10^5, 10^6; 10^7 with
``--full``) this builds a registry through the documented API (``register_many``, 50,000 per
call, default schemes ``oprf+filter`` and ``oprf+bucket``), then measures what an operator
sees, each server in a fresh process so its memory is its own:

- **memory**: anonymous RSS of a server process after start-up and 50 first syncs of
  1,000-contact books, minus its anonymous RSS after the imports, per registered user; the
  mapped snapshot file's bytes per user beside it (shared by worker processes);
- **start-up**: constructing ``DiscoveryServer`` on the populated store, from the newest
  snapshot (and, for comparison, from a full scan of the store);
- **refresh**: ``refresh()`` with no change, and after 1,000 changes made by another process;
- **store bytes per user**; **registration throughput**;
- an ``oprf+filter`` first sync and re-sync of a 1,000-contact book: server ms, bytes.

Beside it, in the same run, the naive design: a Python ``dict`` of the same tokens to user
ids, built from the same store scan, its memory per user and build time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, console, parse_args

PG = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 50_000
BOOK = 1_000
SYNCS = 50


def number(i: int) -> str:
    return f"+9891{i:08d}"  # 10^8 numbers: every N here fits


def stranger(i: int) -> str:
    return f"+98935{i:07d}"


def rss_anon() -> int:
    """Anonymous resident bytes of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


# -- child process: one server, measured -------------------------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Run in a fresh interpreter: import, start a server, sync, refresh; print JSON."""
    import gc

    import contactmatch  # noqa: F401 - the imports are the baseline
    from contactmatch.atrest import DataKey
    from contactmatch.keys import ServerKey
    from contactmatch.service import DiscoveryServer
    from contactmatch.stores import open_store

    gc.collect()
    base = rss_anon()
    out: dict[str, Any] = {}
    key = ServerKey.load(spec["key"])
    data_key = DataKey.load(spec["data_key"])
    store = open_store(spec["url"])
    if spec["mode"] == "naive":
        t0 = time.perf_counter()
        naive: dict[bytes, str] = {}
        after = None
        while True:
            batch = store.scan_users(after, 10_000)
            if not batch:
                break
            after = batch[-1].user_id
            for r in batch:
                naive[r.token] = r.user_id
        out["startup_s"] = time.perf_counter() - t0
        gc.collect()
        out["anon_per_user"] = (rss_anon() - base) / spec["n"]
        print(json.dumps(out), flush=True)
        return
    t0 = time.perf_counter()
    server = DiscoveryServer(
        store, key, data_key, snapshot_dir=spec["snapshot_dir"] if spec["mode"] == "snap" else None
    )
    out["startup_s"] = time.perf_counter() - t0
    out["started_from"] = server.started_from
    if spec["mode"] == "scan":
        print(json.dumps(out), flush=True)
        return
    # The clients run in the parent (their decoded filters are not the server's memory):
    # this process answers framed requests on stdin until an empty frame.
    blob = server.published_filter("oprf+filter")
    out["filter_bytes"] = len(blob)
    write_frame(server.info("oprf+filter"))
    write_frame(blob)
    seconds = 0.0
    while True:
        requester = read_frame().decode()
        if not requester:
            break
        req = read_frame()
        t = time.perf_counter()
        resp = server.discover(requester, req)
        seconds += time.perf_counter() - t
        write_frame(resp)
        write_frame(str(seconds).encode())
    gc.collect()
    out["anon_per_user"] = (rss_anon() - base) / spec["n"]
    t0 = time.perf_counter()
    server.refresh()
    out["refresh_nochange_ms"] = 1000 * (time.perf_counter() - t0)
    write_frame(json.dumps(out).encode())
    # The parent now makes 1,000 changes through another process's server, then says go.
    assert read_frame() == b"go"
    t0 = time.perf_counter()
    added, removed = server.refresh()
    out = {
        "refresh_1000_ms": 1000 * (time.perf_counter() - t0),
        "refresh_applied": added + removed,
    }
    write_frame(json.dumps(out).encode())


def write_frame(data: bytes, stream: Any = None) -> None:
    f = stream or sys.stdout.buffer
    f.write(len(data).to_bytes(4, "big") + data)
    f.flush()


def read_frame(stream: Any = None) -> bytes:
    f = stream or sys.stdin.buffer
    n = int.from_bytes(f.read(4), "big")
    return bytes(f.read(n))


def served_syncs(proc: Any, n: int, after_ready: Any) -> dict[str, Any]:
    """Drive a ``snap`` child: 50 first syncs and a re-sync from this process's clients."""
    from contactmatch.service import DiscoveryClient

    info, blob = read_frame(proc.stdout), read_frame(proc.stdout)
    out: dict[str, Any] = {}
    state = {"seconds": 0.0, "up": 0, "down": 0}

    def sender(requester: str) -> Any:
        def send(req: bytes) -> bytes:
            write_frame(requester.encode(), proc.stdin)
            write_frame(req, proc.stdin)
            resp = read_frame(proc.stdout)
            total = float(read_frame(proc.stdout))
            state["step"] = total - state.get("total", 0.0)
            state["total"] = total
            state["seconds"] += state["step"]
            state["up"] += len(req)
            state["down"] += len(resp)
            return resp

        return send

    firsts, ups, downs = [], [], []
    for s in range(SYNCS):
        registered = [number((s * 7919 + j * 104729) % n) for j in range(BOOK * 3 // 10)]
        book = registered + [stranger(s * BOOK + j) for j in range(BOOK - len(registered))]
        client = DiscoveryClient(info, filter_blob=blob)
        state.update(seconds=0.0, up=0, down=0)
        res = client.discover(book, sender(f"u{s}"))
        assert len(res.matches) == len(set(registered)), "a registered contact was missed"
        firsts.append(state["seconds"])
        ups.append(state["up"])
        downs.append(state["down"])
        if s == 0:  # the same client again: its token cache makes this a re-sync
            state.update(seconds=0.0, up=0, down=0)
            client.discover(book, sender(f"u{s}"))
            out["resync_ms"] = state["seconds"] * 1000
    write_frame(b"", proc.stdin)
    out.update(json.loads(read_frame(proc.stdout)))
    out["first_sync_ms"] = 1000 * sorted(firsts)[len(firsts) // 2]
    out["first_sync_kib_up"] = sum(ups) / len(ups) / 1024
    out["first_sync_kib_down"] = sum(downs) / len(downs) / 1024
    out["filter_bytes"] = len(blob)
    after_ready()
    write_frame(b"go", proc.stdin)
    out.update(json.loads(read_frame(proc.stdout)))
    return out


def run_child(spec: dict[str, Any], after_ready: Any = None) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    if spec["mode"] == "snap":
        out = served_syncs(proc, spec["n"], after_ready)
    else:
        out = json.loads(proc.stdout.readline())
    proc.stdin.close()
    if proc.wait(timeout=3600) != 0:
        raise RuntimeError(f"child {spec['mode']} failed")
    return out


# -- parent ------------------------------------------------------------------------------------


def store_bytes(url: str, backend: str) -> int:
    if backend == "sqlite":
        path = url.removeprefix("sqlite:///")
        import sqlite3

        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    import psycopg

    schema = url.split("schema=")[1]
    with psycopg.connect(PG) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
            (schema,),
        ).fetchone()
        return int(row[0]) if row else 0


def measure(backend: str, n: int, work: Path, report: Report) -> dict[str, Any]:
    from contactmatch.atrest import DataKey
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode
    from contactmatch.service import DiscoveryServer
    from contactmatch.stores import open_store

    tag = f"scale{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{work}/{tag}.db" if backend == "sqlite" else f"{PG}?schema={tag}"
    key_path, dk_path = work / f"{tag}.key", work / f"{tag}.key.data"
    key = ServerKey.generate(Mode.OPRF)
    key.save(key_path)
    data_key = DataKey.generate()
    data_key.save(dk_path)
    snaps = work / f"{tag}.snapshots"
    store = open_store(url)
    writer = DiscoveryServer(store, key, data_key)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        stop = min(n, start + BATCH)
        writer.register_many([(f"u{i}", number(i)) for i in range(start, stop)])
        console.print(f"  {backend} N={n:,}: registered {stop:,}", end="\r")
    reg_rate = n / (time.perf_counter() - t0)
    console.print()
    sbytes = store_bytes(url, backend)
    spec = {"url": url, "key": str(key_path), "data_key": str(dk_path), "n": n}
    scan = run_child({**spec, "mode": "scan"})
    # The first snapshot: written by a server that started from the store.
    first = DiscoveryServer(open_store(url), key, data_key, snapshot_dir=str(snaps))
    path = first.save_snapshot()
    assert path is not None
    snap_bytes = path.stat().st_size
    first.store.close()
    del first

    def other_process_changes() -> None:
        # 1,000 changes: 400 new users, 300 number changes, 200 deletions, 100 settings.
        writer.refresh()
        writer.register_many([(f"new{i}", number(n + i)) for i in range(400)])
        for i in range(300):
            writer.change_number(f"u{n - 1 - i}", number(n + 1000 + i))
        for i in range(200):
            writer.delete_account(f"u{n - 400 - i}")
        for i in range(100):
            writer.set_discoverability(f"u{n - 700 - i}", "nobody")

    served = run_child({**spec, "mode": "snap", "snapshot_dir": str(snaps)}, other_process_changes)
    naive = run_child({**spec, "mode": "naive"})
    store.close()
    row = {
        "store": backend,
        "users": n,
        "anon_B_per_user": served["anon_per_user"],
        "snapshot_B_per_user": snap_bytes / n,
        "naive_dict_B_per_user": naive["anon_per_user"],
        "startup_s": served["startup_s"],
        "startup_scan_s": scan["startup_s"],
        "naive_build_s": naive["startup_s"],
        "refresh_nochange_ms": served["refresh_nochange_ms"],
        "refresh_1000_ms": served["refresh_1000_ms"],
        "store_B_per_user": sbytes / n,
        "register_per_s": reg_rate,
        "first_sync_ms": served["first_sync_ms"],
        "first_sync_kib_up": served["first_sync_kib_up"],
        "first_sync_kib_down": served["first_sync_kib_down"],
        "resync_ms": served["resync_ms"],
        "filter_kib": served["filter_bytes"] / 1024,
    }
    report.row(**row)
    if backend == "postgres":
        import psycopg

        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{tag}" CASCADE')
    return row


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return 0
    args = parse_args(
        __doc__ or "",
        full=(int, 0, "1: also 10^7 users"),
        sizes=(str, "", "comma-separated sizes (overrides the defaults)"),
        stores=(str, "sqlite,postgres", "comma-separated stores"),
    )
    sizes = [100_000, 1_000_000] + ([10_000_000] if args.full else [])
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        sizes = [5_000]
    report = Report(
        "bench_scale",
        args,
        title=(
            "Registry at scale: bytes per user and start-up by registered users and store\n"
            f"(stores {args.stores}; sizes {', '.join(f'{s:,}' for s in sizes)}; "
            f"books of {BOOK:,} contacts)"
        ),
    )
    report.params = {"book": BOOK, "syncs": SYNCS, "batch": BATCH, "schemes": "oprf+filter,bucket"}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        rows = [
            measure(backend, n, Path(tmp), report)
            for backend in args.stores.split(",")
            for n in sizes
        ]
    at = [r for r in rows if r["users"] == max(sizes)]
    for r in at:
        s = r["store"]
        report.goal(f"{s}: anonymous B/user", r["anon_B_per_user"], 48, at_least=False)
        report.goal(f"{s}: snapshot B/user", r["snapshot_B_per_user"], 64, at_least=False)
        report.goal(f"{s}: start-up s", r["startup_s"], 1.0, at_least=False)
        report.goal(f"{s}: refresh, no change, ms", r["refresh_nochange_ms"], 5, at_least=False)
        report.goal(f"{s}: refresh, 1,000 changes, ms", r["refresh_1000_ms"], 50, at_least=False)
        report.goal(f"{s}: store B/user", r["store_B_per_user"], 160, at_least=False)
        report.goal(f"{s}: register_many /s", r["register_per_s"], 12_000, at_least=True)
    report.note(
        "anon: RssAnon after start-up and 50 first syncs minus RssAnon after the imports, per "
        "registered user; snapshot: the mapped file (shared by processes); naive: a dict "
        "{token: user id} built from the same scan. Goals are the issue's, at the largest size."
    )

    def plot(ax: Any) -> None:
        for backend in args.stores.split(","):
            rs = [r for r in rows if r["store"] == backend]
            xs = [r["users"] for r in rs]
            ax.plot(
                xs, [r["anon_B_per_user"] for r in rs], marker="o", label=f"{backend}: anon B/user"
            )
            ax.plot(
                xs, [r["naive_dict_B_per_user"] for r in rs], ls="--", marker="x",
                label=f"{backend}: naive dict B/user",
            )  # fmt: skip
            ax.plot(xs, [1000 * r["startup_s"] for r in rs], ls=":", marker="s",
                    label=f"{backend}: start-up ms")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("registered users")
        ax.set_ylabel("bytes per user; start-up in ms")
        ax.legend(fontsize=7)

    return report.finish(plot)


if __name__ == "__main__":
    raise SystemExit(main())
