"""Where bulk work runs: in this process, or on a Dask distributed cluster.

Both engines take a task function and an iterator of specs and yield results as tasks
finish, with a bounded number in flight, so a file of 10^8 lines is never held in memory
(or in the scheduler) at once. Dask is imported only by :class:`DaskEngine`: the embedded
default needs no ``[cluster]`` extra.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from contactmatch.errors import InvalidInput, MissingDependency

__all__ = ["DaskEngine", "Engine", "LocalEngine", "open_engine"]

S = TypeVar("S")
R = TypeVar("R")

_LOCAL = re.compile(r"local:(\d{1,3})")


class Engine(Protocol):
    """Runs tasks; ``threads`` is what each task may use for OPRF evaluations."""

    #: Threads per task for OPRF work: None (every core) in-process, 1 on a cluster worker.
    threads: int | None
    #: Where to watch the work (the Dask dashboard), if anywhere.
    dashboard: str | None
    #: Processes the work is spread over.
    workers: int

    def map_unordered(self, fn: Callable[[S], R], specs: Iterable[S]) -> Iterator[R]:
        """Run ``fn`` on every spec; results in completion order."""
        ...

    def close(self) -> None:
        """Release the cluster (if this engine started it)."""
        ...


class LocalEngine:
    """In this process, one task at a time; each task's OPRF work uses every core."""

    threads: int | None = None
    dashboard: str | None = None

    def __init__(self) -> None:
        self.workers = os.cpu_count() or 1

    def __repr__(self) -> str:
        return f"<LocalEngine cores={self.workers}>"

    def map_unordered(self, fn: Callable[[S], R], specs: Iterable[S]) -> Iterator[R]:
        for spec in specs:
            yield fn(spec)

    def close(self) -> None:
        from contactmatch.bulk._tasks import close_contexts

        close_contexts()


class DaskEngine:
    """A Dask distributed cluster: a scheduler address, or a ``LocalCluster`` started here.

    Workers run one task at a time with one thread each (``threads_per_worker=1`` for a
    local cluster), so N workers use N cores; a task's keys are read on the worker from
    the paths the task names (see ``docs/operations.md``).

    Args:
        cluster: ``tcp://host:8786`` (any address ``distributed.Client`` takes) or
            ``local:N`` for a local cluster of N worker processes.
        window: tasks in flight per worker; more hides latency, fewer holds less memory.
    """

    threads: int | None = 1

    def __init__(self, cluster: str, *, window: int = 2) -> None:
        try:
            dist: Any = importlib.import_module("distributed")
        except ImportError:  # pragma: no cover - the extra is installed for the tests
            raise MissingDependency("cluster", "dask distributed") from None
        Client, LocalCluster = dist.Client, dist.LocalCluster  # noqa: N806 - their names
        self._cluster: Any = None
        m = _LOCAL.fullmatch(cluster)
        if m is not None:
            n = int(m.group(1))
            if not 1 <= n <= 256:
                raise InvalidInput("--cluster local:N needs 1 <= N <= 256")
            self._cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                host="127.0.0.1",
            )
            self._client: Any = Client(self._cluster)
        elif cluster.startswith("local"):
            raise InvalidInput("expected --cluster local:N (e.g. local:4) or a scheduler address")
        else:
            try:
                self._client = Client(cluster, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise InvalidInput(
                    f"cannot reach the Dask scheduler at {cluster!r} ({type(exc).__name__})"
                ) from None
        self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))
        self.dashboard = str(self._client.dashboard_link) if self._client.dashboard_link else None
        self._window = window

    def __repr__(self) -> str:
        return f"<DaskEngine workers={self.workers}>"

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (tests inspect workers through it)."""
        return self._client

    def map_unordered(self, fn: Callable[[S], R], specs: Iterable[S]) -> Iterator[R]:
        as_completed: Any = importlib.import_module("distributed").as_completed
        limit = max(1, self._window * self.workers)
        pending = as_completed()
        live: set[Any] = set()
        try:
            for spec in specs:
                fut = self._client.submit(fn, spec, pure=False)
                live.add(fut)
                pending.add(fut)
                if len(live) >= limit:
                    done = next(pending)
                    live.discard(done)
                    yield done.result()
            for done in pending:
                live.discard(done)
                yield done.result()
        finally:
            for fut in live:  # an error or an interrupt: stop what is still queued
                fut.cancel()

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def open_engine(cluster: str | None) -> Engine:
    """``None``: this process; otherwise a :class:`DaskEngine` on ``cluster``."""
    return LocalEngine() if cluster is None else DaskEngine(cluster)
