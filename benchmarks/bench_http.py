"""What users run: a real ``contactmatch serve`` under a bounded HTTP load, 1 and 2 workers.

A SQLite store holding ``--users`` registered users (10^6 by default; built once with
``DiscoveryServer.register_many`` in batches of 50,000, keys from ``ServerKey.generate`` /
``DataKey.generate``, and a registry snapshot, all cached under ``--cache`` and reused while
they match) is copied for each worker count and served by ``python -m contactmatch.cli serve
--workers N --limits LIMITS.json --snapshot-dir ...`` on 127.0.0.1 (the limits file raises
every quota so the load is not refused). A load generator in this process replays pre-built
HTTP/1.1 requests over asyncio connections and measures, per worker count, the throughput,
p50/p99 latency and errors of two kinds of sync of a ``--book``-contact phone book (1,000;
30 % registered numbers, 70 % strangers), scheme ``oprf+filter``.

**A first sync** is exactly what :meth:`HttpClient.sync` sends from a fresh install (no
filter, empty token cache), one request after the other on one keep-alive connection:

1. ``GET /v1/info/oprf+filter``;
2. ``GET /v1/filter/oprf+filter``: the whole published filter (about 2.7 bytes per user);
3. ``POST /v1/discover`` with an ``EvalRequest`` of all the book's blinded elements (the
   server evaluates every one: one ristretto255 scalar multiplication each);
4. ``POST /v1/discover`` with a ``LookupRequest`` of the tokens that hit the filter (the
   registered contacts): the server confirms them and answers their user ids.

**A re-sync** is what the same client sends next time when no contact changed, with its
filter and token cache held (``DiscoveryClient(cache=...)``, ``HttpClient._current_filter``):

1. ``GET /v1/info/oprf+filter``;
2. ``GET /v1/filter/oprf+filter?since=V`` with ``If-None-Match: "V"``: ``304 Not Modified``;
3. ``POST /v1/discover`` with the ``LookupRequest`` of the cached tokens that hit the filter:
   nothing is evaluated (every token is cached), so this is the same lookup as round 4 above.

Request bodies are built with the library's own client (``DiscoveryClient.prepare`` /
``finalize``, the evaluation answered in-process with the server key) for ``--books``
distinct books, and each user ``uI`` (a registered user, bearer token from
``SignedTokens.from_server_key``) sends one of them: the server's work does not depend on which
blinded elements it gets, and blinding 1,000 contacts per simulated user would only burn the
CPU being measured. First syncs use distinct users; re-syncs cycle over users that did their
first sync. A phase lasts ``--seconds`` (or ``--max-syncs``), new connection per sync
(``--syncs-per-connection``), ``--concurrency`` clients at once.

Measured in the same run: the server's CPU (utime + stime of the serve process and all its
descendants from ``/proc``, before and after each phase) per completed sync; the bare cost
of the book's scalar multiplications (libsodium's ``crypto_scalarmult_ristretto255`` through
the same ctypes binding the server's ``hazmat.ristretto.scalar_mult_many`` calls, in a bare
loop, thread CPU time, best of 15); OpenMined PSI's ``server.ProcessRequest`` for the same
book as the peer's per-request server CPU; and the generator's own CPU and the machine's busy
time, because generator and server share the machine's cores.

Two diagnostics follow each server's phases: a keep-alive probe (p50 of a request on a new
connection, and of each further request on the same connection: a server whose accepted
sockets lack ``TCP_NODELAY`` makes every further request wait for the client's delayed ACK,
~40 ms on Linux), and at 1 worker a breakdown of server CPU per request of each kind of the two
syncs (each kind alone, on long keep-alive connections). ``--fresh-connections 1`` opens a
connection per request instead (a diagnostic that sidesteps keep-alive stalls; no client
does that).

Goals: a first sync's server CPU at most 1.25x the bare scalar multiplications; re-syncs/s
scale at least 1.6x from 1 to 2 workers; no errors. PASS/FAIL is printed for each; ``--check``
turns a FAIL into exit status 1.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from _common import Report, console, parse_args, progress
from _loadgen import (
    PhaseResult,
    Step,
    get,
    machine_busy_seconds,
    post,
    run_phase,
    tree_cpu_seconds,
)
from contactmatch.lab.plots import new_figure, save_figure

SCHEME = "oprf+filter"
SCHEME_PATH = "oprf%2Bfilter"
BATCH = 50_000
CACHE_FORMAT = 1
HOST = "127.0.0.1"
DAY = 86_400.0
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "contactmatch-bench-http"


def number(i: int) -> str:
    """The number of registered user ``u{i}`` (10^8 numbers: every size here fits)."""
    return f"+9891{i:08d}"


def stranger(i: int) -> str:
    """A valid mobile number no user holds."""
    return f"+98935{i:07d}"


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    dir: Path
    users: int

    @property
    def db(self) -> Path:
        return self.dir / "registry.db"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    @property
    def data_key(self) -> Path:
        return self.dir / "server.key.data"

    @property
    def snapshots(self) -> Path:
        return self.dir / "snapshots"

    @property
    def marker(self) -> Path:
        return self.dir / "ready.json"


def cached_store(root: Path, users: int) -> Store:
    """The store of ``users`` users under ``root``: reused when complete, else built."""
    st = Store(root / f"u{users}", users)
    want = {"format": CACHE_FORMAT, "users": users}
    try:
        if json.loads(st.marker.read_text()) == want and all(
            p.exists() for p in (st.db, st.key, st.data_key, st.snapshots)
        ):
            console.print(f"store: reusing {st.dir} ({users:,} users)")
            return st
    except (OSError, ValueError):
        pass
    shutil.rmtree(st.dir, ignore_errors=True)
    st.dir.mkdir(parents=True)

    from contactmatch.atrest import DataKey
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode
    from contactmatch.service import DiscoveryServer
    from contactmatch.stores import open_store

    key = ServerKey.generate(Mode.OPRF)
    key.save(st.key)
    data_key = DataKey.generate()
    data_key.save(st.data_key)
    t0 = time.perf_counter()
    server = DiscoveryServer(
        open_store(f"sqlite:///{st.db}"), key, data_key, snapshot_dir=str(st.snapshots)
    )
    try:
        with progress(f"registering {users:,} users", users) as advance:
            for start in range(0, users, BATCH):
                stop = min(users, start + BATCH)
                rejected = server.register_many([(f"u{i}", number(i)) for i in range(start, stop)])
                if rejected:
                    raise RuntimeError(f"registrations refused: {rejected[:3]}")
                advance(stop - start)
        server.save_snapshot()
    finally:
        server.store.close()
    conn = sqlite3.connect(st.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    st.marker.write_text(json.dumps(want))
    console.print(f"store: built {users:,} users in {time.perf_counter() - t0:.1f}s at {st.dir}")
    return st


def generous_limits() -> dict[str, Any]:
    """A ``serve --limits`` file: every discovery quota far above what a run can spend.

    Keys are fields of :class:`contactmatch.ratelimit.RateLimits`; a quota is
    ``{"capacity", "period"}``. Ceilings stay 500x each account's quota so the
    ``max_account_share`` rule holds (one account: 2e9 of a 1e12 ceiling per day).
    """
    own = {"capacity": 1e9, "period": DAY}
    ceiling = {"capacity": 1e12, "period": DAY}
    return {
        "evaluations": own,
        "new_tokens": own,
        "new_buckets": own,
        "requests": own,
        "writes": own,
        "global_evaluations": ceiling,
        "global_new_tokens": ceiling,
        "max_items": 1_000_000,
    }


# -- the server process ------------------------------------------------------------------------


def serve_flags() -> set[str]:
    """Which of ``--workers`` / ``--limits`` this ``contactmatch serve`` accepts."""
    out = subprocess.run(
        [sys.executable, "-m", "contactmatch.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout
    return {flag for flag in ("--workers", "--limits") if flag in out}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """One ``contactmatch serve`` subprocess on a private copy of the cached store."""

    def __init__(
        self, store: Store, work: Path, workers: int, flags: set[str], limits: Path
    ) -> None:
        self.workers = workers
        self.dir = work / f"workers{workers}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        # A private copy: quota state, seen sets and counters written by one run must not
        # change the next one (or the cache).
        db = self.dir / "registry.db"
        shutil.copyfile(store.db, db)
        shutil.copytree(store.snapshots, self.dir / "snapshots")
        self.port = free_port()
        self.log = self.dir / "serve.log"
        cmd = [
            sys.executable, "-m", "contactmatch.cli", "serve",
            "--store", f"sqlite:///{db}",
            "--key", str(store.key),
            "--data-key", str(store.data_key),
            "--host", HOST,
            "--port", str(self.port),
            "--snapshot-dir", str(self.dir / "snapshots"),
        ]  # fmt: skip
        if "--workers" in flags:
            cmd += ["--workers", str(workers)]
        elif workers != 1:
            raise RuntimeError("this contactmatch serve has no --workers")
        if "--limits" in flags:
            cmd += ["--limits", str(limits)]
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        """Wait until ``GET /v1/schemes`` answers 200; returns the seconds it took."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"contactmatch serve exited:\n{self.log_tail()}")
            try:
                if http_get(self.port, "/v1/schemes", timeout=5)[0] == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"contactmatch serve not ready in {timeout:g}s:\n{self.log_tail()}")

    def cpu(self) -> tuple[float, int]:
        return tree_cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                # Only the process group this benchmark started (start_new_session above).
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log_file.close()


# -- requests ----------------------------------------------------------------------------------


@dataclass
class Book:
    numbers: list[str]
    registered: int
    eval_body: bytes
    eval_answer: bytes  # the EvalResponse the server must send back (deterministic)
    lookup_body: bytes | None


def make_books(
    n_books: int, *, size: int, users: int, share: float, info: bytes, blob: bytes, key: Any
) -> list[Book]:
    """``n_books`` phone books and their request bodies, made by the library's client."""
    from contactmatch.schemes.server import SchemeServer
    from contactmatch.schemes.tokens import make_server_tokens
    from contactmatch.schemes.wire import ServiceResponse
    from contactmatch.service import DiscoveryClient

    evaluator = SchemeServer(SCHEME, make_server_tokens("oprf", key))
    version = json.loads(info)["filter_version"]
    books = []
    with progress("preparing phone books", n_books) as advance:
        for b in range(n_books):
            rng = random.Random(b)
            k = min(users, round(share * size))
            numbers = [number(i) for i in rng.sample(range(users), k)]
            numbers += [stranger(b * size + j) for j in range(size - k)]
            rng.shuffle(numbers)
            client = DiscoveryClient(info, filter_blob=blob, cache={})
            eval_body = client.prepare(numbers)
            answer = evaluator.handle(eval_body)
            result = client.finalize(
                ServiceResponse(
                    inner=answer, filter_version=version, fingerprints=[], sealed=[]
                ).encode()
            )
            lookup = result.next_request
            # A re-sync of the same book by the same client: every token is cached, so it
            # sends only the lookup of the filter hits (or an empty one when none).
            again = client.prepare(numbers)
            if lookup is not None and again != lookup:
                raise RuntimeError("a re-sync does not send the first sync's lookup")
            books.append(Book(numbers, k, eval_body, answer, again))
            advance(1)
    return books


@dataclass
class Workload:
    """Pre-built request bytes for one server (its port is in the Host header)."""

    first: list[list[Step]]
    resync: list[list[Step]]


def build_workload(
    port: int, books: list[Book], tokens: list[str], *, blob_len: int, version: int, size: int
) -> Workload:
    host = f"{HOST}:{port}"
    info = get(host, f"/v1/info/{SCHEME_PATH}")
    whole = get(host, f"/v1/filter/{SCHEME_PATH}", min_body=blob_len)
    not_modified = get(
        host,
        f"/v1/filter/{SCHEME_PATH}?since={version}",
        [("If-None-Match", f'"{version}"')],
        ok=(304,),
    )
    first, resync = [], []
    for u, tok in enumerate(tokens):
        book = books[u % len(books)]
        auth = [("Authorization", f"Bearer {tok}")]
        ev = post(host, "/v1/discover", book.eval_body, auth, min_body=32 * size)
        assert book.lookup_body is not None
        look = post(host, "/v1/discover", book.lookup_body, auth)
        # A first sync without filter hits ends after the evaluation round.
        first.append([info, whole, ev, look] if book.registered else [info, whole, ev])
        resync.append([info, not_modified, look])
    return Workload(first, resync)


def check_answers(
    res: PhaseResult, books: list[Book], user_of: Callable[[int], int], *, first: bool
) -> None:
    """The kept answers are right: evaluations equal the in-process ones, lookups find
    every registered contact of the book."""
    from contactmatch.schemes.wire import LookupResponse, ServiceResponse, decode

    lookup_step = 3 if first else 2
    for i, j, body in res.kept:
        book = books[user_of(i) % len(books)]
        if first and j == 2:
            env = decode(body, ServiceResponse)
            assert isinstance(env, ServiceResponse)
            if env.inner != book.eval_answer:
                raise RuntimeError("the server's evaluation differs from the key's")
        elif j == lookup_step:
            env = decode(body, ServiceResponse)
            assert isinstance(env, ServiceResponse)
            inner = decode(env.inner, LookupResponse)
            assert isinstance(inner, LookupResponse)
            if len(inner.positions) != book.registered:
                raise RuntimeError(
                    f"lookup found {len(inner.positions)} of {book.registered} registered"
                )


# -- baselines ---------------------------------------------------------------------------------


def floor_cpu_s(sk: bytes, elements: list[bytes], rounds: int = 15) -> tuple[float, float]:
    """(thread CPU s, wall s) of ``len(elements)`` bare scalar multiplications, best round.

    The same libsodium symbol through the same ctypes binding as the server's
    ``scalar_mult_many``, mapped over one preallocated buffer: no checks, no Python frame per
    element.
    """
    from contactmatch.hazmat import ristretto

    mult = ristretto._scalarmult
    n = len(elements)
    out = ctypes.create_string_buffer(32 * n)
    base = ctypes.addressof(out)
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.thread_time()
        if any(map(mult, range(base, base + 32 * n, 32), repeat(sk, n), elements)):
            raise RuntimeError("a blinded element did not decode")
        best_cpu = min(best_cpu, time.thread_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def openmined_cpu_s(numbers: list[str], rounds: int = 5) -> float | None:
    """CPU seconds of OpenMined PSI's ``server.ProcessRequest`` for a request of ``numbers``."""
    try:
        import private_set_intersection.python as psi
    except ImportError:
        return None
    server = psi.server.CreateWithNewKey(True)
    request = psi.client.CreateWithNewKey(True).CreateRequest(numbers)
    server.ProcessRequest(request)
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        server.ProcessRequest(request)
        best = min(best, time.process_time() - c0)
    return best


# -- the phases --------------------------------------------------------------------------------


def exercise(
    server: Server, wl: Workload, books: list[Book], args: Any, report: Report
) -> tuple[Measured, Measured, int]:
    """Warm up, then measure first syncs and re-syncs against one server; also returns how
    many users made their first sync (``u0`` ...)."""
    w = server.workers
    pool = len(wl.first)
    warm_first = min(pool // 2, 2 * args.concurrency)
    # Warm-up (not measured): lazy imports, the filter's first encoding in each worker, the
    # thread pools. Its answers are checked: evaluations against the key, lookups' matches.
    warm = run_phase(
        HOST,
        server.port,
        lambda i: wl.first[i],
        concurrency=args.concurrency,
        seconds=120,
        max_syncs=warm_first,
        keep=warm_first,
    )
    check_answers(warm, books, lambda i: i, first=True)
    n_first = min(args.max_syncs, pool - warm_first)
    first = measured_phase(
        server,
        f"workers={w}: first syncs",
        lambda i: wl.first[warm_first + i],
        concurrency=args.concurrency,
        seconds=args.seconds,
        max_syncs=n_first,
        syncs_per_connection=args.syncs_per_connection,
        fresh_connections=bool(args.fresh_connections),
    )
    if first.res.completed >= n_first:
        report.note(
            f"workers={w}: the first-sync phase ran out of distinct users ({n_first:,}); "
            "raise --pool"
        )
    # Re-syncs come from users who made their first sync (they hold its tokens).
    synced = warm_first + first.res.completed
    warm2 = run_phase(
        HOST,
        server.port,
        lambda i: wl.resync[i % synced],
        concurrency=args.concurrency,
        seconds=60,
        max_syncs=4 * args.concurrency,
        keep=4 * args.concurrency,
    )
    check_answers(warm2, books, lambda i: i % synced, first=False)
    again = measured_phase(
        server,
        f"workers={w}: re-syncs",
        lambda i: wl.resync[i % synced],
        concurrency=args.concurrency,
        seconds=args.seconds,
        max_syncs=args.max_syncs,
        syncs_per_connection=args.syncs_per_connection,
        fresh_connections=bool(args.fresh_connections),
    )
    for res in (warm, warm2):
        if res.errors:
            raise RuntimeError(f"warm-up errors {dict(res.error_kinds)}:\n{server.log_tail()}")
    return first, again, synced


#: The requests of the two syncs, measured one kind at a time: (label, sync kind, step).
BREAKDOWN = (
    ("GET /v1/info", "first", 0),
    ("GET /v1/filter (whole)", "first", 1),
    ("GET /v1/filter (304)", "re-sync", 1),
    ("POST /v1/discover: evaluate", "first", 2),
    ("POST /v1/discover: lookup", "re-sync", 2),
)


def breakdown(server: Server, wl: Workload, synced: int, args: Any) -> dict[str, Measured]:
    """Server CPU per request of each kind, on long keep-alive connections (no handshakes).

    Lookups are re-sync lookups (users who synced before: every token already seen)."""
    out = {}
    for label, kind, step in BREAKDOWN:
        syncs = wl.first if kind == "first" else wl.resync

        def make(i: int, syncs: list[list[Step]] = syncs, step: int = step) -> list[Step]:
            return [syncs[i % synced][step]]

        out[label] = measured_phase(
            server,
            f"workers={server.workers}: {label}",
            make,
            concurrency=args.concurrency,
            seconds=max(1.0, min(5.0, args.seconds / 4)),
            max_syncs=args.max_syncs,
            syncs_per_connection=1_000_000,
        )
        if out[label].res.errors:
            raise RuntimeError(f"{label}: errors {dict(out[label].res.error_kinds)}")
    return out


def probe_keepalive(port: int) -> tuple[float, float]:
    """p50 ms of one ``GET /v1/info`` on a new connection, and of each further one on the same
    keep-alive connection (a client's second and third requests of a sync). A server whose
    accepted sockets lack ``TCP_NODELAY`` shows ~40 ms there (Nagle x delayed ACK)."""
    host = f"{HOST}:{port}"
    info = get(host, f"/v1/info/{SCHEME_PATH}")
    kw: dict[str, Any] = {"concurrency": 1, "seconds": 20, "max_syncs": 15}
    one = run_phase(HOST, port, lambda _i: [info], **kw)
    three = run_phase(HOST, port, lambda _i: [info, info, info], **kw)
    if one.errors or three.errors:
        raise RuntimeError(f"keep-alive probe errors {one.error_kinds} {three.error_kinds}")
    first = one.percentile_ms(50)
    return first, max(0.0, (three.percentile_ms(50) - first) / 2)


# -- one measured phase ------------------------------------------------------------------------


@dataclass
class Measured:
    res: PhaseResult
    server_cpu_s: float
    machine_busy_s: float
    processes: int


def measured_phase(server: Server, label: str, make: Any, **kw: Any) -> Measured:
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed} syncs"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        s0, _ = server.cpu()
        m0, _ = machine_busy_seconds()
        res = run_phase(HOST, server.port, make, on_done=lambda: bar.advance(task), **kw)
        m1, _ = machine_busy_seconds()
        s1, procs = server.cpu()
    return Measured(res, s1 - s0, m1 - m0, procs)


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0] if __doc__ else "",
        users=(int, 1_000_000, "registered users in the store (default 10^6)"),
        book=(int, 1_000, "contacts per phone book"),
        registered=(float, 0.3, "share of a book's contacts that are registered users"),
        books=(int, 16, "distinct phone books (request bodies) shared by the users"),
        workers=(str, "1,2", "comma-separated worker counts of contactmatch serve"),
        seconds=(float, 20.0, "seconds per measured phase"),
        max_syncs=(int, 100_000, "most syncs per measured phase"),
        concurrency=(int, 8, "clients at once"),
        syncs_per_connection=(int, 1, "syncs per keep-alive connection (1: a phone)"),
        fresh_connections=(int, 0, "1: a new connection per request (diagnostic, not a client)"),
        pool=(int, 20_000, "most distinct users (bearer tokens) pre-built"),
        cache=(Path, None, f"store cache (default {DEFAULT_CACHE}; --quick: a temporary one)"),
    )
    if args.quick:
        args.users, args.book, args.books = 2_000, 100, 4
        args.seconds, args.concurrency, args.pool = 1.5, 4, 2_000
    cores = os.cpu_count() or 1
    flags = serve_flags()
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    report = Report(
        "bench_http",
        args,
        title=(
            f"HTTP syncs: throughput and latency of contactmatch serve by worker count\n"
            f"({SCHEME}, {args.users:,} users, books of {args.book:,} contacts "
            f"({args.registered:.0%} registered), {args.concurrency} clients, "
            f"{args.seconds:g} s per phase)"
        ),
    )
    if "--workers" not in flags:
        if workers != [1]:
            console.print(
                "[yellow]contactmatch serve has no --workers yet: measuring workers=1 only[/]"
            )
            report.note(
                "contactmatch serve has no --workers option in this tree: only workers=1 "
                "was measured and the scaling goal is NOT MEASURED."
            )
        workers = [1]
    if "--limits" not in flags:
        report.note(
            "contactmatch serve has no --limits option in this tree: default quotas applied "
            "(a 429 would show as an error)."
        )

    from contactmatch.keys import ServerKey
    from contactmatch.schemes.wire import EvalRequest, decode
    from contactmatch.server import SignedTokens

    rows: list[dict[str, Any]] = []
    measured: dict[tuple[int, str], Measured] = {}
    floors: list[tuple[float, float]] = []
    books: list[Book] = []
    elements: list[bytes] = []
    blob_len = version = 0
    startup: dict[int, float] = {}
    probes: dict[int, tuple[float, float]] = {}
    parts: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        store = cached_store(args.cache or (work if args.quick else DEFAULT_CACHE), args.users)
        key = ServerKey.load(store.key)
        signer = SignedTokens.from_server_key(key, 7 * DAY)
        tokens = [signer.issue(f"u{u}") for u in range(min(args.users, args.pool))]
        limits = work / "limits.json"
        limits.write_text(json.dumps(generous_limits(), indent=1))
        for w in workers:
            server = Server(store, work, w, flags, limits)
            try:
                startup[w] = server.wait_ready(600)
                console.print(f"workers={w}: serving on port {server.port} after {startup[w]:.1f}s")
                if not books:
                    status, info = http_get(server.port, f"/v1/info/{SCHEME_PATH}")
                    status2, blob = http_get(server.port, f"/v1/filter/{SCHEME_PATH}")
                    if status != 200 or status2 != 200:
                        raise RuntimeError(f"info/filter answered {status}/{status2}")
                    blob_len, version = len(blob), int(json.loads(info)["filter_version"])
                    books = make_books(
                        args.books,
                        size=args.book,
                        users=args.users,
                        share=args.registered,
                        info=info,
                        blob=blob,
                        key=key,
                    )
                    msg = decode(books[0].eval_body, EvalRequest)
                    assert isinstance(msg, EvalRequest)
                    elements = msg.elements
                wl = build_workload(
                    server.port, books, tokens, blob_len=blob_len, version=version, size=args.book
                )
                floors.append(floor_cpu_s(key.private_bytes(), elements))
                first, again, synced = exercise(server, wl, books, args, report)
                probes[w] = probe_keepalive(server.port)
                if w == 1:
                    parts = breakdown(server, wl, synced, args)
                measured[(w, "first")] = first
                measured[(w, "re-sync")] = again
            finally:
                server.stop()
        floors.append(floor_cpu_s(key.private_bytes(), elements))
    floor_cpu, floor_wall = min(c for c, _ in floors), min(x for _, x in floors)
    peer = openmined_cpu_s(books[0].numbers)

    for (w, kind), m in measured.items():
        r = m.res
        done = max(1, r.completed)
        wall = max(r.wall_s, 1e-9)
        server_cores = m.server_cpu_s / wall
        gen_cores = r.generator_cpu_s / wall
        busy_cores = m.machine_busy_s / wall
        row: dict[str, Any] = {
            "workers": w,
            "sync": kind,
            "syncs": r.ok,
            "syncs_per_s": round(r.per_s, 2),
            "p50_ms": round(r.percentile_ms(50), 2),
            "p99_ms": round(r.percentile_ms(99), 2),
            "errors": r.errors,
            "server_cpu_ms_per_sync": round(1000 * m.server_cpu_s / done, 3),
            "vs_floor": round(m.server_cpu_s / done / floor_cpu, 3) if kind == "first" else "",
            "server_cores": round(server_cores, 2),
            "generator_cores": round(gen_cores, 2),
            "generator_cpu_ms_per_sync": round(1000 * r.generator_cpu_s / done, 3),
            "machine_busy_cores": round(busy_cores, 2),
            "other_cores": round(max(0.0, busy_cores - server_cores - gen_cores), 2),
            "server_processes": m.processes,
        }
        if r.error_kinds:
            row["error_kinds"] = json.dumps(dict(r.error_kinds))
        rows.append(row)
        report.row(**row)
    for label, m in parts.items():
        r = m.res
        report.row(
            workers=1,
            sync=f"request: {label}",
            syncs=r.ok,
            syncs_per_s=round(r.per_s, 2),
            p50_ms=round(r.percentile_ms(50), 2),
            p99_ms=round(r.percentile_ms(99), 2),
            errors=r.errors,
            server_cpu_ms_per_sync=round(1000 * m.server_cpu_s / max(1, r.completed), 3),
            server_cores=round(m.server_cpu_s / max(r.wall_s, 1e-9), 2),
            generator_cores=round(r.generator_cpu_s / max(r.wall_s, 1e-9), 2),
        )
    report.row(
        workers="-", sync="floor: bare scalar mults",
        server_cpu_ms_per_sync=round(1000 * floor_cpu, 3), vs_floor=1.0,
    )  # fmt: skip
    if peer is not None:
        report.row(
            workers="-", sync="OpenMined ProcessRequest",
            server_cpu_ms_per_sync=round(1000 * peer, 3), vs_floor=round(peer / floor_cpu, 3),
        )  # fmt: skip

    # -- goals -----------------------------------------------------------------------------
    for w in workers:
        m = measured[(w, "first")]
        ratio = m.server_cpu_s / max(1, m.res.completed) / floor_cpu
        report.goal(f"first sync server CPU / bare scalar mults, workers={w}", ratio, 1.25,
                    at_least=False)  # fmt: skip
    if 1 in workers and 2 in workers:
        r1, r2 = measured[(1, "re-sync")].res.per_s, measured[(2, "re-sync")].res.per_s
        report.goal("re-syncs/s, 2 workers / 1 worker", r2 / r1 if r1 else 0.0, 1.6, at_least=True)
    errors = sum(m.res.errors for m in measured.values())
    report.goal("errors (all phases)", errors, 0, at_least=False)

    # -- notes -----------------------------------------------------------------------------
    for w in workers:
        m = measured[(w, "first")]
        per = m.server_cpu_s / max(1, m.res.completed)
        report.note(
            f"workers={w}: a first sync costs the server {1000 * per:.1f} ms CPU: the "
            f"{args.book:,} scalar multiplications' bare cost is {100 * floor_cpu / per:.0f} % "
            f"of it, everything else (HTTP, JSON/wire decoding, auth, quotas and seen sets in "
            f"the store, the filter download, the lookup) {100 * (1 - floor_cpu / per):.0f} %."
        )
    if parts and 1 in workers:
        cost = {k: m.server_cpu_s / max(1, m.res.completed) for k, m in parts.items()}
        per = measured[(1, "first")].server_cpu_s / max(1, measured[(1, "first")].res.completed)
        resync = measured[(1, "re-sync")]
        per_re = resync.server_cpu_s / max(1, resync.res.completed)
        t_info, whole, nm, ev, look = (1000 * cost[label] for label, _, _ in BREAKDOWN)
        rest = 1000 * per - t_info - whole - ev - look
        rest_re = 1000 * per_re - t_info - nm - look
        report.note(
            f"Breakdown at workers=1 (server CPU per request, each kind alone on keep-alive "
            f"connections): first sync {1000 * per:.1f} ms = info {t_info:.2f} + whole filter "
            f"{whole:.2f} + evaluate {ev:.2f} (of which bare scalar mults "
            f"{1000 * floor_cpu:.2f}) + lookup {look:.2f} (re-sync kind) + the rest "
            f"{rest:.2f} (connection set-up, first-time seen-set inserts and charges of the "
            f"lookup, contention between concurrent syncs); re-sync {1000 * per_re:.2f} ms = "
            f"info {t_info:.2f} + 304 {nm:.2f} + lookup {look:.2f} + the rest {rest_re:.2f}."
        )
    gen_share = [
        m.res.generator_cpu_s / max(m.server_cpu_s + m.res.generator_cpu_s, 1e-9)
        for m in measured.values()
    ]
    report.note(
        f"The load generator runs on the same {cores}-core machine as the server (one asyncio "
        f"process, pre-built requests): it took {100 * min(gen_share):.0f}-"
        f"{100 * max(gen_share):.0f} % of the CPU that server and generator used together "
        "(generator_cores per phase above); other_cores is what the rest of the machine used "
        "meanwhile (other processes)."
    )
    if 1 in workers and 2 in workers:
        a, b = measured[(1, "re-sync")], measured[(2, "re-sync")]
        cpu1 = a.server_cpu_s / max(1, a.res.completed)
        cpu2 = b.server_cpu_s / max(1, b.res.completed)
        wall1, wall2 = max(a.res.wall_s, 1e-9), max(b.res.wall_s, 1e-9)
        gen2 = b.res.generator_cpu_s / wall2
        other2 = max(0.0, (b.machine_busy_s - b.server_cpu_s - b.res.generator_cpu_s) / wall2)
        # If the 2-worker server had every core the generator left it, at its measured CPU
        # per re-sync: the most this machine allows, whatever else runs on it.
        bound = (cores - gen2) / cpu2 / max(a.res.per_s, 1e-9) if cpu2 else 0.0
        report.note(
            f"Re-sync scaling: the server used {a.server_cpu_s / wall1:.2f} cores at 1 worker "
            f"and {b.server_cpu_s / wall2:.2f} at 2 (of {cores}; the generator "
            f"{a.res.generator_cpu_s / wall1:.2f} and {gen2:.2f}, other processes "
            f"{other2:.2f} at 2); server CPU per re-sync went from {1000 * cpu1:.2f} to "
            f"{1000 * cpu2:.2f} ms. With all {cores} cores minus the generator's at that CPU "
            f"per re-sync, 2 workers could reach at most {bound:.2f}x the 1-worker rate on "
            "this machine; a server using far fewer cores than that was waiting, not "
            "computing (see the keep-alive probe)."
        )
    report.note(
        "Keep-alive probe, p50 of one GET /v1/info on a new connection / of each further one "
        "on the same connection: "
        + "; ".join(f"workers={w}: {a:.1f} / {b:.1f} ms" for w, (a, b) in probes.items())
        + "."
    )
    for w, (_, later) in probes.items():
        if later > 20:
            report.note(
                f"workers={w}: every request after the first on a keep-alive connection "
                f"waits ~{later:.0f} ms: the server's accepted sockets lack TCP_NODELAY "
                "(Nagle x the client's delayed ACK); a sync makes 3-4 requests on one "
                "connection, so this bounds throughput and latency, not CPU."
            )
    if peer is not None:
        m = measured[(workers[0], "first")]
        per = m.server_cpu_s / max(1, m.res.completed)
        report.note(
            f"OpenMined PSI (ECDH over P-256) ProcessRequest of the same {args.book:,} "
            f"elements: {1000 * peer:.1f} ms CPU in-process, {peer / floor_cpu:.2f}x the bare "
            f"ristretto255 floor; a whole contactmatch first sync over HTTP at "
            f"workers={workers[0]}: {1000 * per:.1f} ms server CPU."
        )
    report.note(
        f"Floor: {args.book:,} bare scalar multiplications {1000 * floor_cpu:.2f} ms thread CPU "
        f"({1000 * floor_wall:.2f} ms wall), best of 15, measured before each server run and "
        "after the last. Server CPU: utime+stime of the serve process and its descendants "
        "(/proc, 10 ms ticks) over each phase, divided by the syncs completed."
    )
    report.params = {
        "users": args.users,
        "book": args.book,
        "registered_share": args.registered,
        "books": args.books,
        "scheme": SCHEME,
        "seconds_per_phase": args.seconds,
        "concurrency": args.concurrency,
        "syncs_per_connection": args.syncs_per_connection,
        "fresh_connections": bool(args.fresh_connections),
        "cores": cores,
        "filter_bytes": blob_len,
        "serve_flags": ",".join(sorted(flags)) or "none",
        "startup_s": {w: round(s, 2) for w, s in startup.items()},
        "keepalive_followup_ms": {w: round(p[1], 1) for w, p in probes.items()},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    status = report.finish()
    for g in report.goals:
        console.print(f"{'PASS' if g.met else 'FAIL'}: {g.name} = {report._fmt(g.value)}")
    if 1 in workers and 2 not in workers and "--workers" not in flags:
        console.print("NOT MEASURED: re-syncs/s, 2 workers / 1 worker (serve has no --workers)")
    if not args.no_plot:
        plot(args.out / "bench_http.png", rows, report.plot_title())
    return status


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Throughput and latency per worker count, first syncs and re-syncs side by side."""
    kinds = ["first", "re-sync"]
    ws = sorted({int(r["workers"]) for r in rows})
    fig, (left, right) = new_figure(2, figsize=(10, 5.5))
    width = 0.8 / len(ws)
    for k, w in enumerate(ws):
        rs = {r["sync"]: r for r in rows if r["workers"] == w}
        xs = [i + k * width for i in range(len(kinds))]
        bars = left.bar(xs, [rs[s]["syncs_per_s"] for s in kinds], width, label=f"{w} worker(s)")
        left.bar_label(bars, fmt="%.0f", fontsize=7)
        for q, hatch in (("p50_ms", ""), ("p99_ms", "//")):
            off = [2 * i + (0 if q == "p50_ms" else 1) + k * width for i in range(len(kinds))]
            right.bar(off, [rs[s][q] for s in kinds], width, hatch=hatch, color=f"C{k}",
                      label=f"{w} worker(s) {q[:3]}")  # fmt: skip
    left.set_xticks([i + width * (len(ws) - 1) / 2 for i in range(len(kinds))], kinds)
    left.set_ylabel("syncs per second")
    left.set_title("throughput")
    left.legend(fontsize=7)
    right.set_xticks(
        [2 * i + j + width * (len(ws) - 1) / 2 for i in range(len(kinds)) for j in range(2)],
        [f"{s} {q}" for s in kinds for q in ("p50", "p99")],
        fontsize=7,
    )
    right.set_ylabel("latency per sync, ms")
    right.set_title("latency")
    right.legend(fontsize=7)
    save_figure(fig, path, title=title)


if __name__ == "__main__":
    raise SystemExit(main())
