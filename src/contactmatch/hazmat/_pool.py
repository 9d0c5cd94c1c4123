"""A persistent thread pool that splits a batch into contiguous chunks, one per worker.

Threads, not processes: libsodium's calls release the GIL (ctypes foreign functions), so
threads scale with cores while sharing the input list, whereas a process pool pays pickling of
every element both ways (see docs/oprf.md for the measured comparison). The pool is created on
first use, grown if a caller asks for more workers, and dropped in a forked child (its threads
do not survive a fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from contactmatch.errors import InvalidInput

__all__ = ["available_cores", "map_chunks"]

T = TypeVar("T")

#: Below this many items per worker the hand-off costs more than the parallel work saves.
MIN_ITEMS_PER_WORKER = 16

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forget_pool() -> None:
    global _pool, _pool_size  # one process-wide pool is the point
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS exposes one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _get_pool(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size  # noqa: PLW0603 -- see _forget_pool
    with _lock:
        if _pool is None or _pool_size < size:
            # The pool is sized for every core once, never replaced by a bigger one: another
            # thread may hold the current pool and not have submitted yet, and shutting it
            # down under that thread would make its submit fail.
            size = max(size, available_cores())
            if _pool is None or _pool_size < size:
                _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="contactmatch-oprf")
                _pool_size = size
        return _pool


def map_chunks(fn: Callable[[int, int], T], n: int, workers: int | None) -> list[T]:
    """Run ``fn(lo, hi)`` over contiguous chunks covering ``range(n)``; results in chunk order.

    Args:
        fn: work on items ``lo`` to ``hi - 1``; must be thread-safe.
        n: number of items.
        workers: ``None`` for every available core, ``1`` to stay on the calling thread.

    Returns:
        One result per chunk, in order (a single chunk when one worker suffices).

    Raises:
        InvalidInput: ``workers`` is not a positive integer.
    """
    if workers is None:
        workers = available_cores()
    elif type(workers) is not int or workers < 1:
        raise InvalidInput("workers must be a positive integer or None")
    k = max(1, min(workers, n // MIN_ITEMS_PER_WORKER))
    if k == 1:
        return [fn(0, n)]
    bounds = [(n * i // k, n * (i + 1) // k) for i in range(k)]
    pool = _get_pool(k - 1)
    futures: list[Future[T]] = [pool.submit(fn, lo, hi) for lo, hi in bounds[1:]]
    try:
        # The calling thread takes the first chunk instead of idling on the futures.
        first = fn(*bounds[0])
    finally:
        # Never return (or raise) while a chunk still runs against the caller's lists.
        for f in futures:
            f.exception()
    return [first, *(f.result() for f in futures)]
