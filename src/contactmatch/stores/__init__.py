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
from typing import Any
from urllib.parse import urlsplit

from contactmatch.errors import InvalidInput, MissingDependency
from contactmatch.stores.base import (
    BaseStore,
    ContactStore,
    Discoverability,
    FeedPage,
    FeedStore,
    Holder,
    KeyCensus,
    QuotaStore,
    RegistryStore,
    Rekey,
    StatsStore,
    TakeResult,
    UserRecord,
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


def open_store(url: str = DEFAULT_URL, **options: Any) -> BaseStore:
    """Open the store named by ``url``, importing its adapter (and driver) on first use.

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``postgresql://...[?schema=s]``,
            ``redis://...[?prefix=p]`` or ``redis+cluster://host:port/[?prefix=p]``.
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
