"""The Lua scripts of the Redis adapters, read once from ``lua/*.lua`` next to this module.

Single-Redis scripts are a shared prelude (key names, the key census, the change feed) plus a
body; cluster steps (``c_*``) name every key in ``KEYS`` and touch one hash tag only.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = [
    "CLUSTER_STEPS",
    "CONTACTS",
    "C_CLAIM",
    "C_CONTACTS_SWAP",
    "C_IDS",
    "C_PUMP",
    "C_PURGE",
    "C_RELEASE",
    "C_TRIM_OUTBOX",
    "C_USER_DEL",
    "C_USER_SET",
    "DELETE",
    "DISC",
    "FEED_READ",
    "FEED_TRIM",
    "PURGE_ONE",
    "PUT",
    "REKEY",
    "SEEN_ADD",
    "SEEN_EXPIRE",
    "SEEN_UNINDEX",
    "SINGLE_SLOT",
    "TAKE",
]

_DIR = files(__package__) / "lua"


def _read(name: str) -> str:
    return (_DIR / f"{name}.lua").read_text(encoding="utf-8")


_LIB, _CENSUS, _FEED, _DROP = _read("lib"), _read("census"), _read("feed"), _read("drop_contacts")

# single Redis: one script per call, atomic over every key it touches
PUT = _LIB + _CENSUS + _FEED + _read("put")
DISC = _LIB + _FEED + _read("disc")
REKEY = _LIB + _CENSUS + _FEED + _read("rekey")
DELETE = _LIB + _CENSUS + _FEED + _DROP + _read("delete")
CONTACTS = _LIB + _DROP + _read("contacts")
PURGE_ONE = _LIB + _DROP + _read("purge_one")

# one hash tag each: the same on a single Redis and on a cluster
TAKE = _read("take")
SEEN_ADD = _read("seen_add")
SEEN_EXPIRE = _read("seen_expire")
SEEN_UNINDEX = _read("seen_unindex")
_FIND = _read("feed_find")
FEED_READ = _FIND + _read("feed_read")
FEED_TRIM = _FIND + _read("feed_trim")
SINGLE_SLOT = (TAKE, SEEN_ADD, SEEN_EXPIRE, SEEN_UNINDEX, FEED_READ, FEED_TRIM)

# Redis Cluster steps
C_CLAIM = _read("c_claim")
C_RELEASE = _read("c_release")
C_IDS = _read("c_ids")
C_USER_SET = _CENSUS + _read("c_user_set")
C_USER_DEL = _CENSUS + _read("c_user_del")
C_CONTACTS_SWAP = _read("c_contacts_swap")
C_PURGE = _read("c_purge")
C_PUMP = _read("c_pump")
C_TRIM_OUTBOX = _read("c_trim_outbox")
CLUSTER_STEPS = (
    C_CLAIM,
    C_RELEASE,
    C_IDS,
    C_USER_SET,
    C_USER_DEL,
    C_CONTACTS_SWAP,
    C_PURGE,
    C_PUMP,
    C_TRIM_OUTBOX,
)
