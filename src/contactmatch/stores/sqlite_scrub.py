"""Flushing erased bytes out of SQLite's WAL and file without ever blocking a request.

``secure_delete`` zeroes erased rows in their pages, but the WAL holds older images of those
pages (and the database file the pre-erasure page) until a checkpoint copies the new ones back
and the WAL is truncated. A truncating checkpoint waits for every reader of an older snapshot,
so it must not run under the store's lock: :class:`Scrubber` retries it from a thread of its
own, backing off up to :data:`SCRUB_MAX_INTERVAL`, which is therefore a term of the erasure
deadline (``docs/storage.md``, Erasure).
"""

from __future__ import annotations

import sqlite3
import threading

__all__ = ["SCRUB_FIRST_RETRY", "SCRUB_MAX_INTERVAL", "Scrubber"]

#: First retry of a busy truncating checkpoint, in seconds; doubles up to the next value.
SCRUB_FIRST_RETRY = 0.02
#: Longest wait between two truncating checkpoint attempts (the erasure deadline's term).
SCRUB_MAX_INTERVAL = 1.0


class Scrubber:
    """Retries ``wal_checkpoint(TRUNCATE)`` in a daemon thread until one succeeds.

    Uses a connection of its own with no busy handler, so an attempt that meets a reader of
    an older snapshot (or a writer) returns at once instead of waiting; the store's lock is
    never held. Attempts back off from ``SCRUB_FIRST_RETRY`` to ``SCRUB_MAX_INTERVAL`` and go on
    for as long as the store is open: the deadline holds however long a reader lingers.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a truncating checkpoint soon (starts the thread on first use)."""
        with self._guard:
            if self._stop.is_set():
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="contactmatch-sqlite-scrub", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Stop retrying and wait briefly for the thread (it never blocks on SQLite)."""
        with self._guard:
            self._stop.set()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5.0)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 0")
            while not self._stop.is_set():
                self._wake.wait()
                delay = SCRUB_FIRST_RETRY
                while not self._stop.is_set():
                    self._wake.clear()
                    if self._truncate(conn) and not self._wake.is_set():
                        break
                    self._stop.wait(delay)
                    delay = min(delay * 2, SCRUB_MAX_INTERVAL)
        except sqlite3.Error:  # pragma: no cover - the file went away; the next open scrubs
            pass
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _truncate(conn: sqlite3.Connection) -> bool:
        """One attempt; True when the WAL was checkpointed in full and truncated."""
        try:
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:  # locked: same as busy
            return False
        return int(busy) == 0
