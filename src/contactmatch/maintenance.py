"""Scheduled maintenance: expire rate state, compact the change feed, remove erased residue.

``delete_account`` makes a user unfindable at once, and destroys their wrapped per-user key so
that their number cannot be decrypted from anything left behind. Its change-feed entry (the
user id, never a token or number) stays until the feed is compacted, so that other server
processes learn of the deletion: :func:`vacuum` compacts entries older than
``feed_retention`` (24 hours by default; longer than any process or snapshot needs to catch
up, since a follower that falls behind it rescans the store). What a store leaves behind
depends on the store; :func:`vacuum` then removes it and is what ``contactmatch vacuum`` runs:

* **PostgreSQL**: a ``DELETE`` leaves dead tuples and index entries in their pages, and a plain
  ``VACUUM`` only marks them reusable. ``VACUUM FULL`` rewrites the tables that can hold
  personal data (``users``, ``user_keys``, ``contacts``, ``seen``, ``buckets``,
  ``checkpoints``, ``feed``), indexes and TOAST included, and drops the old files. With
  ``keys_only`` it rewrites ``user_keys`` alone: quick (one narrow row per user), and enough to
  make whatever residue of a deleted number remains in the other tables undecryptable.
* **SQLite**: ``secure_delete`` already zeroes erased rows and the store truncates the WAL in
  the background after each deletion; this adds a truncating checkpoint, ``VACUUM`` (no free
  page left) and another checkpoint, waiting for readers if it must.
* **Redis** and **memory**: no dead rows to remove; rate state is expired and the feed trimmed
  (a trimmed Redis list keeps no copy of its entries).

Every store first drops rate state that no longer affects a decision
(:meth:`~contactmatch.stores.base.BaseStore.expire_rate_state`): drained buckets and seen
entries older than ``seen_ttl``. That bounds how long the one value derived from a deleted
user that a store keeps on purpose, their number-keyed rate subject, stays stored.

``docs/storage.md`` (Erasure) gives the schedule and the deadline it yields.
"""

from __future__ import annotations

import time

from contactmatch.stores import open_store
from contactmatch.stores.records import check_time

__all__ = ["DEFAULT_FEED_RETENTION", "DEFAULT_SEEN_TTL", "vacuum"]

#: Seen entries older than this are dropped: the default "new tokens" quota period (10 days).
DEFAULT_SEEN_TTL = 10 * 86_400.0
#: Change-feed entries older than this are compacted: a day, far longer than a refresh
#: interval or a snapshot's age; a process that was away longer rebuilds from the store.
DEFAULT_FEED_RETENTION = 86_400.0


def vacuum(
    store_url: str,
    *,
    now: float | None = None,
    seen_ttl: float = DEFAULT_SEEN_TTL,
    keys_only: bool = False,
    feed_retention: float = DEFAULT_FEED_RETENTION,
) -> dict[str, int]:
    """Expire rate state, compact the feed, then remove the residue of deleted rows.

    Blocks writers while it runs (PostgreSQL: each table's readers too, one table at a time),
    so schedule it: ``keys_only`` often (it is quick), the full step less often.

    Args:
        store_url: any URL :func:`~contactmatch.stores.open_store` accepts.
        now: the current time in seconds (default: the system clock).
        seen_ttl: seen entries last added this many seconds ago or more are dropped; use the
            service's longest "new items" quota period.
        keys_only: PostgreSQL: rewrite only the wrapped-key table (elsewhere: no difference).
        feed_retention: change-feed entries stamped this many seconds before ``now`` or
            earlier are compacted (``BaseStore.compact_feed(older_than=now - retention)``).

    Returns:
        Counters: ``rate_state_expired`` (rows, keys or entries dropped), ``feed_compacted``
        (entries) plus the adapter's own (e.g. ``tables_rewritten`` for PostgreSQL,
        ``wal_frames_left`` for SQLite).

    Raises:
        InvalidInput: ``now``, ``seen_ttl`` or ``feed_retention`` is negative or not finite.
        StoreError: the store failed (``StoreUnavailable`` if it cannot be reached).
    """
    t = check_time(time.time() if now is None else now, "now")
    ttl = check_time(seen_ttl, "seen_ttl")
    keep = check_time(feed_retention, "feed_retention")
    with open_store(store_url) as store:
        report = {
            "rate_state_expired": store.expire_rate_state(t, ttl),
            "feed_compacted": store.compact_feed(older_than=max(0.0, t - keep)),
        }
        report.update(store.vacuum(keys_only=keys_only))
    return report
