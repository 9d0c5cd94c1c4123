"""Registry stores: one protocol, adapters chosen by URL scheme and imported only when opened.

>>> store = open_store("memory://")
>>> store.count_users()
0

``sqlite:///path.db`` is the default; ``postgresql://`` needs ``contactmatch[postgres]`` and
``redis://`` (one Redis) or ``redis+cluster://`` (a Redis Cluster) needs ``contactmatch[redis]``.
Importing this package imports no driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from contactmatch.errors import InvalidInput, MissingDependency
from contactmatch.stores.base import BaseStore
from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    Holder,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
)
from contactmatch.stores.roles import (
    ContactStore,
    FeedStore,
    QuotaStore,
    RegistryStore,
    StatsStore,
    UserStore,
)

__all__ = [
    "DEFAULT_URL",
    "BaseStore",
    "ContactStore",
    "Discoverability",
    "FeedPage",
    "FeedStore",
    "Holder",
    "KeyCensus",
    "QuotaStore",
    "RegistryStore",
    "Rekey",
    "StatsStore",
    "TakeResult",
    "UserRecord",
    "UserStore",
    "open_store",
    "wants_cluster",
]

DEFAULT_URL = "sqlite:///contactmatch.db"

# scheme -> ("module:Class", extra, driver module); the driver is imported by the adapter.
ADAPTERS: dict[str, tuple[str, str | None, str | None]] = {
    "memory": ("contactmatch.stores.memory:MemoryStore", None, None),
    "sqlite": ("contactmatch.stores.sqlite:SQLiteStore", None, None),
    "postgresql": ("contactmatch.stores.postgres:PostgresStore", "postgres", "psycopg"),
    "postgres": ("contactmatch.stores.postgres:PostgresStore", "postgres", "psycopg"),
    "redis": ("contactmatch.stores.redis:RedisStore", "redis", "redis"),
    "rediss": ("contactmatch.stores.redis:RedisStore", "redis", "redis"),
    "unix": ("contactmatch.stores.redis:RedisStore", "redis", "redis"),
    "redis+cluster": ("contactmatch.stores.redis:RedisClusterStore", "redis", "redis"),
    "rediss+cluster": ("contactmatch.stores.redis:RedisClusterStore", "redis", "redis"),
}
#: Where ``?cluster=1`` sends a single-server Redis scheme: the cluster adapter, chosen here
#: by URL like every other adapter (not by the single-server class swapping itself).
CLUSTER_SCHEMES = {"redis": "redis+cluster", "rediss": "rediss+cluster", "unix": "redis+cluster"}
_TRUE = {"1", "true", "yes", "on"}

if TYPE_CHECKING:
    # mypy proves here that every adapter class is concrete (no abstract driver method left)
    # and a full RegistryStore: an assignment to type[RegistryStore] checks both. At run time
    # nothing is imported, so no driver is either.
    from contactmatch.stores.memory import MemoryStore
    from contactmatch.stores.postgres import PostgresStore
    from contactmatch.stores.redis import RedisClusterStore, RedisStore
    from contactmatch.stores.sqlite import SQLiteStore

    _memory: type[RegistryStore] = MemoryStore
    _sqlite: type[RegistryStore] = SQLiteStore
    _postgres: type[RegistryStore] = PostgresStore
    _redis: type[RegistryStore] = RedisStore
    _redis_cluster: type[RegistryStore] = RedisClusterStore


def wants_cluster(url: str) -> bool:
    """Whether the URL names a Redis Cluster (``redis+cluster://`` or ``?cluster=1``)."""
    parts = urlsplit(url)
    if parts.scheme.lower().endswith("+cluster"):
        return True
    return any(k == "cluster" and v.lower() in _TRUE for k, v in parse_qsl(parts.query))


def open_store(url: str = DEFAULT_URL, **options: Any) -> BaseStore:
    """Open the store named by ``url``, importing its adapter (and driver) on first use.

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``postgresql://...[?schema=s]``,
            ``redis://...[?prefix=p]`` or ``redis+cluster://host:port/[?prefix=p]`` (or
            ``redis://...?cluster=1``).
        options: adapter keyword options (e.g. ``schema=``, ``prefix=``, ``pool_size=``).

    Returns:
        A store implementing :class:`RegistryStore`.

    Raises:
        InvalidInput: the URL's scheme is not supported.
        MissingDependency: the adapter's extra is not installed (names the pip command).
        StoreUnavailable: the server cannot be reached.
    """
    if not isinstance(url, str):
        raise InvalidInput("store URL must be a str")
    scheme = urlsplit(url).scheme.lower()
    if scheme in CLUSTER_SCHEMES and wants_cluster(url):
        scheme = CLUSTER_SCHEMES[scheme]
    try:
        target, extra, driver = ADAPTERS[scheme]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise InvalidInput(f"unsupported store URL scheme {scheme!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    if driver is not None and extra is not None:
        try:
            importlib.import_module(driver)
        except ImportError as exc:
            raise MissingDependency(extra, driver) from exc
    cls = getattr(importlib.import_module(module_name), class_name)
    store: BaseStore = cls(url, **options)
    return store
