"""Store fixtures for the whole suite: a ``store_url`` per adapter, each test isolated.

PostgreSQL tests get a fresh schema (``pg_schemas``, the one fixture that names them) and Redis
tests a fresh key prefix, dropped afterwards. When a server is unreachable its tests SKIP with
the reason, except under ``CI=true``, where a missing service is a broken pipeline and the
tests FAIL instead. The Redis Cluster is started
by the suite (once per session, only if a test needs it); without the ``redis-server`` binary
its tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contactmatch.stores import BaseStore, open_store
from tests.services import (
    BACKENDS,
    PG_BASE,
    PG_HOST,
    PG_PORT,
    REDIS_BASE,
    REDIS_CLUSTER_BASE,
    REDIS_HOST,
    REDIS_PORT,
    SERVICES,
    TOOLS,
    drop_pg_schema,
    drop_redis_prefix,
    reachable,
    service_verdict,
    start_redis_cluster,
    stop_processes,
    tool_verdict,
)


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    """Skip (or, with CI=true, fail) tests whose marker names an unreachable server."""
    needed = [m for m in SERVICES if request.node.get_closest_marker(m) is not None]
    verdict = service_verdict(needed, reachable, _ci())
    if verdict is None:
        tools = [m for m in TOOLS if request.node.get_closest_marker(m) is not None]
        verdict = tool_verdict(tools, shutil.which, _ci())
    if verdict is None:
        return
    action, reason = verdict
    if action == "fail":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway 3-primary Redis Cluster for the session; yields its base URL."""
    try:
        procs = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"cannot start a Redis Cluster: {exc}"
        if _ci():
            pytest.fail(f"{reason} (CI=true: a required service is missing)", pytrace=False)
        pytest.skip(reason)
    yield REDIS_CLUSTER_BASE
    stop_processes(procs)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The adapter under test."""
    name: str = request.param
    return name


@pytest.fixture
def pg_schemas() -> Iterator[Callable[[], str]]:
    """Fresh PostgreSQL schema names for one test, every one dropped after it.

    The one place tests get a schema: ``store_url`` uses it for the ``postgres`` backend, and
    a test that builds a PostgreSQL store itself (migrations, a second store) asks for
    :func:`pg_schema` or calls this factory, so no schema outlives its test.
    """
    made: list[str] = []

    def new() -> str:
        tag = "t" + uuid.uuid4().hex[:12]
        made.append(tag)
        return tag

    yield new
    if made and reachable(PG_HOST, PG_PORT):
        for tag in made:
            drop_pg_schema(tag)


@pytest.fixture
def pg_schema(pg_schemas: Callable[[], str]) -> str:
    """A fresh PostgreSQL schema name (not created yet), dropped after the test."""
    return pg_schemas()


@pytest.fixture
def store_url(
    backend: str,
    tmp_path: Path,
    pg_schemas: Callable[[], str],
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """A URL naming a fresh, isolated store of the adapter under test (cleaned up after)."""
    tag = "t" + uuid.uuid4().hex[:12]
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
    elif backend == "postgres":
        yield f"{PG_BASE}?schema={pg_schemas()}"
    elif backend == "redis-cluster":
        base: str = request.getfixturevalue("redis_cluster")
        yield f"{base}?prefix={tag}"
        drop_redis_prefix(tag, cluster=True)
    else:
        yield f"{REDIS_BASE}?prefix={tag}"
        if reachable(REDIS_HOST, REDIS_PORT):
            drop_redis_prefix(tag)


@pytest.fixture
def open_again(store_url: str) -> Iterator[Callable[[], BaseStore]]:
    """Open more handles on the same store (separate connections for concurrency tests)."""
    opened: list[BaseStore] = []

    def _open() -> BaseStore:
        s = open_store(store_url)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(store_url: str) -> Iterator[BaseStore]:
    """An open store of the adapter under test."""
    s = open_store(store_url)
    yield s
    s.close()
