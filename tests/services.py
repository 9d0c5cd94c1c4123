"""Where the test suite finds PostgreSQL and Redis, and how it isolates and cleans up.

Shared by ``tests/conftest.py`` (the fixtures) and the tests that talk to a server directly.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

__all__ = [
    "BACKENDS",
    "PG_BASE",
    "PG_HOST",
    "PG_PORT",
    "REDIS_BASE",
    "REDIS_HOST",
    "REDIS_PORT",
    "SERVICES",
    "drop_pg_schema",
    "drop_redis_prefix",
    "reachable",
    "service_verdict",
]

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_BASE = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
REDIS_BASE = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"

SERVICES = {
    "postgres": (PG_HOST, PG_PORT, "PostgreSQL"),
    "redis": (REDIS_HOST, REDIS_PORT, "Redis"),
}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


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


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def drop_pg_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_redis_prefix(prefix: str) -> None:
    """Delete every key a test prefix owns."""
    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        keys = list(r.scan_iter(match="{" + prefix + ":*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
    finally:
        r.close()
