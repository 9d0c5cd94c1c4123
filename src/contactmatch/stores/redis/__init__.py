"""Redis adapters (``redis://host:port/db?prefix=p``, ``redis+cluster://...``) on redis-py.

Key layout (``P`` is the prefix, default ``cm``). Account state: everything about one user lives
under one hash tag so it shares one Cluster slot: the registration hash, ``...:c`` (uploaded
contact tokens, hex) and ``...:k`` (the wrapped per-user key, a key of its own, deleted with the
account). On one Redis that tag is the user's own, ``{P:u:<user id>}``; on a cluster it is the
user's *slot group* ``{P:s<g>}`` (keys ``{P:s<g>}:u:<id>``, ``...:k``, ``...:c``), which also
holds the group's change outbox ``:ob``, its counter ``:n`` and its key census ``:census``.
Indexes are one key per token, ``{P:t:<hex>}`` (token -> user id) and ``{P:o:<hex>}`` (token ->
owners who uploaded it), so they spread over slots. Rate state, keyed by subject (``n:<hash>``,
``g:eval``; never a user id): ``{P:r:<subject>}:b:<quota>`` (one leaky bucket, expiring when it
has drained) and ``{P:r:<subject>}:s`` (seen set: a sorted set scored by when each fingerprint
was added). Service-wide state sits under ``{P:g}``: ``:ids`` (user ids, for paging),
``:seen`` (subjects with a seen set, scored by their latest add, so ``expire_rate_state``
finds them), ``:stats``, ``:cp`` (checkpoints), ``:schema`` (layout version, 3), ``:id`` (the
store's identity), the change feed ``:feed`` (a list of ``<seq>|<at>|<user id>``, ``at`` in
whole seconds) with ``:seq`` (head) and ``:floor`` (highest compacted), ``:census`` (single
Redis), and on a cluster ``:groups`` and ``:pumped``.

Every multi-key change is one Lua script (``lua/*.lua``), hence atomic on a single Redis
(primary + replicas, Sentinel). On a Redis Cluster (``redis+cluster://host:port/?prefix=p`` or
``redis://...?cluster=1``) :class:`RedisClusterStore` splits each script into per-slot steps,
each atomic in its slot and idempotent, run in an order that leaves only states the reads
tolerate if a client dies between two steps; see ``docs/storage.md`` (Redis Cluster).
"""

from __future__ import annotations

from contactmatch.stores.redis.cluster import GROUPS, RedisClusterStore
from contactmatch.stores.redis.single import SCHEMA_VERSION, RedisStore, split_url, wants_cluster

__all__ = [
    "GROUPS",
    "SCHEMA_VERSION",
    "RedisClusterStore",
    "RedisStore",
    "split_url",
    "wants_cluster",
]
