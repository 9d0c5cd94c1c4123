"""A small, bounded HTTP/1.1 load generator over asyncio, for benchmarks on localhost.

Everything a request needs is built up front as raw bytes (:class:`Step`), so the generator
spends its CPU on sockets, not on building requests: a *sync* is a fixed sequence of steps sent
one after the other on one keep-alive connection (each step waits for the previous answer,
as a client does), and a phase runs ``concurrency`` virtual clients that each take the next
sync until a duration or a count is reached; nothing new starts after that, and the phase ends
when the syncs in flight have finished. It stops by itself.

Measured per phase: completed syncs, wall time, per-sync latency, errors by kind (status
code, exception type, a short or mismatched answer), and this process's own CPU (user +
system), so a report can say how much of the machine the generator itself took.

Process CPU of another process tree (the server, its workers) and the machine's busy time
come from ``/proc`` (Linux): see :func:`tree_cpu_seconds` and :func:`machine_busy_seconds`.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PhaseResult",
    "Step",
    "Sync",
    "get",
    "machine_busy_seconds",
    "post",
    "run_phase",
    "self_cpu_seconds",
    "tree_cpu_seconds",
]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Step:
    """One request of a sync: its raw bytes and what a good answer looks like."""

    head: bytes
    body: bytes = b""
    #: Statuses that count as success.
    ok: tuple[int, ...] = (200,)
    #: Smallest body a good answer has (e.g. 32 bytes per evaluated element).
    min_body: int = 0

    @property
    def data(self) -> bytes:
        return self.head + self.body


#: A sync: the requests one client makes, in order, on one connection.
Sync = Sequence[Step]


def get(
    host: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    ok: tuple[int, ...] = (200,),
    min_body: int = 0,
) -> Step:
    """A GET request's bytes."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    return Step(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), b"", ok, min_body)


def post(
    host: str,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
    *,
    media: str = "application/octet-stream",
    ok: tuple[int, ...] = (200,),
    min_body: int = 0,
) -> Step:
    """A POST request's bytes (the body is kept apart so that many heads can share it)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in headers),
        f"Content-Type: {media}",
        f"Content-Length: {len(body)}",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Step(head, body, ok, min_body)


class _BadAnswer(Exception):
    """An answer that is not a good one: the status or the body length says so."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response: (status, body). Content-Length or chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    first, _, rest = head.partition(b"\r\n")
    parts = first.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise _BadAnswer("not HTTP")
    status = int(parts[1])
    if status in _NO_BODY or 100 <= status < 200:
        return status, b""
    length = None
    chunked = False
    for line in rest.lower().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise _BadAnswer("no length")
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _checked(step: Step, status: int, body: bytes) -> bytes:
    """``body`` if the answer is a good one for ``step``."""
    if status not in step.ok:
        raise _BadAnswer(str(status))
    if len(body) < step.min_body:
        raise _BadAnswer("short answer")
    return body


@dataclass
class PhaseResult:
    """What one phase measured."""

    completed: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    #: This process's CPU (user + system) during the phase.
    generator_cpu_s: float = 0.0
    #: Answers kept for checks (only with ``keep``): (sync index, step index, body).
    kept: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.completed - self.errors

    @property
    def per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of successful syncs' latency, in ms (0 when none)."""
        xs = sorted(self.latencies)
        if not xs:
            return 0.0
        rank = max(1, min(len(xs), math.ceil(q / 100 * len(xs))))
        return 1000 * xs[rank - 1]


async def _phase(
    host: str,
    port: int,
    make: Callable[[int], Sync],
    *,
    concurrency: int,
    seconds: float,
    max_syncs: int,
    syncs_per_connection: int,
    fresh_connections: bool,
    timeout: float,
    keep: int,
    on_done: Callable[[], None] | None,
) -> PhaseResult:
    res = PhaseResult()
    deadline = time.perf_counter() + seconds
    state = {"next": 0}

    def take() -> int | None:
        i = state["next"]
        if i >= max_syncs or time.perf_counter() >= deadline:
            return None
        state["next"] = i + 1
        return i

    async def one_sync(
        i: int, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Run sync ``i``; returns the connection if it may be reused."""
        steps = make(i)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                for j, step in enumerate(steps):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    reader, writer = conn
                    writer.write(step.data)
                    body = _checked(step, *await _read_response(reader))
                    if i < keep:
                        res.kept.append((i, j, body))
                    if fresh_connections:
                        writer.close()
                        conn = None
        except _BadAnswer as exc:
            res.error_kinds[exc.kind] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            res.error_kinds[type(exc).__name__] += 1
        except TimeoutError:
            res.error_kinds["timeout"] += 1
        else:
            res.latencies.append(time.perf_counter() - t0)
            res.completed += 1
            if on_done is not None:
                on_done()
            return conn
        res.completed += 1
        res.errors += 1
        if on_done is not None:
            on_done()
        if conn is not None:
            conn[1].close()
        return None

    async def client() -> None:
        conn = None
        used = 0
        while (i := take()) is not None:
            conn = await one_sync(i, conn)
            used += 1
            if conn is not None and used >= syncs_per_connection:
                conn[1].close()
                conn, used = None, 0
            elif conn is None:
                used = 0
        if conn is not None:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    res.wall_s = time.perf_counter() - t0
    return res


def run_phase(
    host: str,
    port: int,
    make: Callable[[int], Sync],
    *,
    concurrency: int,
    seconds: float,
    max_syncs: int,
    syncs_per_connection: int = 1,
    fresh_connections: bool = False,
    timeout: float = 60.0,
    keep: int = 0,
    on_done: Callable[[], None] | None = None,
) -> PhaseResult:
    """Run one bounded phase: ``make(i)`` gives the steps of sync ``i`` (0, 1, 2, ...).

    Args:
        host: server address (127.0.0.1).
        port: server port.
        make: sync index -> its steps (pre-built bytes; this must be cheap).
        concurrency: virtual clients, each running one sync at a time.
        seconds: no sync starts after this many seconds.
        max_syncs: no sync starts once this many have started.
        syncs_per_connection: syncs a client runs on one keep-alive connection before it
            opens a new one (1: a new connection per sync, as a phone does).
        fresh_connections: a new connection for every request instead (a diagnostic: it
            sidesteps a server's keep-alive stalls at the cost of a handshake per request).
        timeout: seconds one sync may take before it counts as an error.
        keep: keep the answers of syncs ``0 .. keep-1`` (for checks outside the timing).
        on_done: called after each sync (a progress bar).
    """
    before = self_cpu_seconds()
    res = asyncio.run(
        _phase(
            host,
            port,
            make,
            concurrency=concurrency,
            seconds=seconds,
            max_syncs=max_syncs,
            syncs_per_connection=max(1, syncs_per_connection),
            fresh_connections=fresh_connections,
            timeout=timeout,
            keep=keep,
            on_done=on_done,
        )
    )
    res.generator_cpu_s = self_cpu_seconds() - before
    return res


# -- CPU accounting (Linux /proc) ---------------------------------------------------------------


def self_cpu_seconds() -> float:
    """This process's CPU time, user + system, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    return raw[raw.rfind(")") + 2 :].split()


def tree_cpu_seconds(root: int) -> tuple[float, int]:
    """CPU seconds (user + system) of ``root`` and every live descendant, plus their reaped
    children's; and how many processes that was. 10 ms resolution (clock ticks)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(entry.name))
    ticks, count, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        f = _stat_fields(pid)
        if f is None:
            continue
        # Fields 14-17 of stat(5): utime, stime, cutime, cstime (after "pid (comm) ").
        ticks += sum(int(x) for x in f[11:15])
        count += 1
        todo.extend(children.get(pid, ()))
    return ticks / _TICK, count


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return (total - idle - iowait) / _TICK, total / _TICK
