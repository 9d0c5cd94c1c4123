"""The ``users`` row layout shared by the SQL adapters (SQLite and PostgreSQL).

Both keep a registration as the same columns (the wrapped key in ``user_keys``, the key id as
a code from ``key_ids``) and read it back with the same joins, so the conversion lives here
once: a record and its row can never drift apart between the two adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contactmatch.stores.records import Discoverability, UserRecord

__all__ = ["DISC_CODES", "DISC_NAMES", "SELECT_USERS", "USER_COLS", "record_from_row", "user_row"]

#: How the SQL adapters store a setting (a small integer column) and read it back.
DISC_CODES = {Discoverability.EVERYONE: 0, Discoverability.CONTACTS: 1, Discoverability.NOBODY: 2}
DISC_NAMES = {v: k for k, v in DISC_CODES.items()}
#: The ``users`` columns in the order :func:`user_row` produces them.
USER_COLS = "user_id, token, kid, number_ct, disc, created_at, updated_at"
#: Full records: the row joined with its wrapped key and key id, read by :func:`record_from_row`.
SELECT_USERS = (
    "SELECT u.user_id, u.token, i.key_id, u.number_ct, u.disc, u.created_at, "
    "coalesce(u.updated_at, u.created_at), k.wrapped FROM users u "
    "JOIN user_keys k ON k.user_id = u.user_id JOIN key_ids i ON i.code = u.kid"
)


def user_row(u: UserRecord, kid: int) -> tuple[str, bytes, int, bytes, int, float, float | None]:
    """The ``users`` column tuple of a record (SQLite and PostgreSQL); the key goes elsewhere.

    ``kid`` is the key id's code in the ``key_ids`` table (one small integer instead of up to
    32 characters per row), and ``updated_at`` is NULL while it equals ``created_at`` (most
    users register once): 8 bytes per row saved, read back with ``coalesce``.
    """
    cat, uat = u.created_at, u.updated_at
    return (
        u.user_id,
        u.token,
        kid,
        u.number_ct,
        DISC_CODES[u.discoverability],
        cat,
        None if uat == cat else uat,
    )


def record_from_row(row: Sequence[Any]) -> UserRecord:
    """The record of a SQL row read as ``(user_id, token, key_id, number_ct, disc, created_at,
    updated_at, wrapped)``: key id by name (joined from ``key_ids``), times coalesced."""
    return UserRecord(
        user_id=row[0],
        token=bytes(row[1]),
        key_id=row[2],
        number_ct=bytes(row[3]),
        wrapped_key=bytes(row[7]),
        discoverability=DISC_NAMES[row[4]],
        created_at=row[5],
        updated_at=row[6],
    )
