"""Give freed heap memory back to the operating system after large transient allocations.

Building a published filter at 10^6 users allocates several arrays of tens of megabytes for a
moment. glibc raises its mmap threshold after such frees and serves the next ones from the
heap, which it then keeps: the process's resident memory would stay at its peak although the
arrays are gone. :func:`trim` asks glibc to release it (``malloc_trim(0)``); on other C
libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["trim"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> None:
    """Return free heap pages to the system (glibc only; a no-op elsewhere)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
