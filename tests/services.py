"""Where the test suite finds PostgreSQL and Redis, and how it isolates and cleans up.

Shared by ``tests/conftest.py`` (the fixtures) and the tests that talk to a server directly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "BACKENDS",
    "PG_BASE",
    "PG_HOST",
    "PG_PORT",
    "REDIS_BASE",
    "REDIS_CLUSTER_BASE",
    "REDIS_CLUSTER_PORTS",
    "REDIS_HOST",
    "REDIS_PORT",
    "SERVICES",
    "TOOLS",
    "drop_pg_schema",
    "drop_redis_prefix",
    "reachable",
    "service_verdict",
    "start_redis_cluster",
    "stop_processes",
    "tool_verdict",
]

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_BASE = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
REDIS_BASE = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# A throwaway 3-primary cluster the suite starts itself (see ``start_redis_cluster``).

SERVICES = {
    "postgres": (PG_HOST, PG_PORT, "PostgreSQL"),
    "redis": (REDIS_HOST, REDIS_PORT, "Redis"),
}

# marker -> (binaries the suite runs itself, label): servers started by a fixture, not found.
TOOLS = {
    "redis_cluster": (("redis-server", "redis-cli"), "Redis Cluster"),
}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _cluster_base() -> int:
    """A first port for the test cluster whose three ports and bus ports (+10000) are free.

    Fixed ports made two test runs on one machine (a developer's and CI's, or two helpers')
    fail each other with "port in use"; each run now looks for a free block, starting at a
    block chosen by its process id. ``CONTACTMATCH_TEST_CLUSTER_PORT`` pins it.
    """
    pinned = os.environ.get("CONTACTMATCH_TEST_CLUSTER_PORT")
    if pinned:
        return int(pinned)
    blocks = 80
    first = os.getpid() % blocks
    for i in range(blocks):
        base = 7100 + ((first + i) % blocks) * 10
        ports = (base, base + 1, base + 2)
        if not any(reachable(REDIS_HOST, p) or reachable(REDIS_HOST, p + 10000) for p in ports):
            return base
    return 7100


REDIS_CLUSTER_PORTS = tuple(_cluster_base() + i for i in range(3))
REDIS_CLUSTER_BASE = f"redis+cluster://{REDIS_HOST}:{REDIS_CLUSTER_PORTS[0]}/"


def service_verdict(
    needed: list[str], reachable: Callable[[str, int], bool], ci: bool
) -> tuple[str, str] | None:
    """What to do with a test needing ``needed`` services: None (run), or (skip|fail, reason)."""
    for marker in needed:
        host, port, label = SERVICES[marker]
        if not reachable(host, port):
            reason = f"{label} is not reachable at {host}:{port}"
            if ci:
                return "fail", f"{reason} (CI=true: a required service is missing)"
            return "skip", reason
    return None


def tool_verdict(
    needed: list[str], which: Callable[[str], str | None], ci: bool
) -> tuple[str, str] | None:
    """Like :func:`service_verdict`, for markers whose server the suite starts from a binary."""
    for marker in needed:
        binaries, label = TOOLS[marker]
        missing = [b for b in binaries if which(b) is None]
        if missing:
            reason = f"{label} needs {', '.join(missing)} on PATH"
            if ci:
                return "fail", f"{reason} (CI=true: a required service is missing)"
            return "skip", reason
    return None


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis_cluster),
]


def drop_pg_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_redis_prefix(prefix: str, *, cluster: bool = False) -> None:
    """Delete every key a test prefix owns (on every primary of the test cluster if asked)."""
    import redis
    import redis.cluster

    r: Any = (
        redis.cluster.RedisCluster(host=REDIS_HOST, port=REDIS_CLUSTER_PORTS[0])
        if cluster
        else redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    )
    try:
        keys = list(r.scan_iter(match="{" + prefix + ":*", count=1000))
        # One DEL per key: keys of a prefix live in many slots, and DEL may not cross them.
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.delete(k)
        pipe.execute()
    finally:
        r.close()


def start_redis_cluster(workdir: Path) -> list[subprocess.Popen[bytes]]:
    """Start a 3-primary Redis Cluster on ``REDIS_CLUSTER_PORTS``; stop the processes to end it.

    Raises:
        RuntimeError: a port is taken or the cluster does not reach ``cluster_state:ok``.
    """
    for port in REDIS_CLUSTER_PORTS:
        if reachable(REDIS_HOST, port):
            raise RuntimeError(f"port {port} is already in use")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in REDIS_CLUSTER_PORTS:
            log = (workdir / f"redis-{port}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        REDIS_HOST,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(workdir / f"nodes-{port}.conf"),
                        "--dir",
                        str(workdir),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        _wait(lambda: all(reachable(REDIS_HOST, p) for p in REDIS_CLUSTER_PORTS), "start")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{REDIS_HOST}:{p}" for p in REDIS_CLUSTER_PORTS),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(_cluster_ok, "reach cluster_state:ok")
    except BaseException:
        stop_processes(procs)
        raise
    return procs


def _cluster_ok() -> bool:
    for port in REDIS_CLUSTER_PORTS:
        out = subprocess.run(
            ["redis-cli", "-h", REDIS_HOST, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        if "cluster_state:ok" not in out:
            return False
    return True


def _wait(ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster did not {what} within {timeout:.0f} s")
        time.sleep(0.1)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the cluster's servers (kill any that ignore it) and reap them."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
