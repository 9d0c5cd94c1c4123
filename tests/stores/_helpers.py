"""Record builders shared by the store tests, and the worker functions run in child processes.

Workers live in an importable module (not a test file) because ``spawn`` children import them
by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from contactmatch.stores import Discoverability, Rekey, UserRecord, open_store


def token(i: int, salt: str = "", size: int = 32) -> bytes:
    """A deterministic pseudo-random token (distinct per ``i`` and ``salt``)."""
    out = hashlib.sha512(f"token:{salt}:{i}".encode()).digest()
    return out[:size]


def user(
    i: int,
    *,
    salt: str = "",
    disc: Discoverability = Discoverability.EVERYONE,
    key_id: str = "k1",
    now: float = 1_000.0,
    uid: str | None = None,
    data_key: str | None = None,
) -> UserRecord:
    """A registration for user ``u<i>`` with a recognisable fake ciphertext and wrapped key.

    With ``data_key`` the wrapped key starts with the header ``atrest`` writes (version 2,
    length, key id), so the key census files it under that data-key id; without, under ``""``.
    """
    head = b"WK:" if data_key is None else bytes([2, len(data_key)]) + data_key.encode()
    return UserRecord(
        user_id=uid or f"u{i:07d}",
        token=token(i, salt),
        key_id=key_id,
        number_ct=b"CT:" + hashlib.sha256(f"ct:{salt}:{i}".encode()).digest(),
        wrapped_key=head + hashlib.sha256(f"wk:{salt}:{i}".encode()).digest(),
        discoverability=disc,
        created_at=now,
        updated_at=now,
    )


def subject(i: int) -> str:
    """A number-keyed rate subject like the rate limiter's (``n:`` and 32 hex digits)."""
    return "n:" + hashlib.sha256(f"subject:{i}".encode()).hexdigest()[:32]


def worker_take(url: str, n: int) -> int:
    """Child process: ``n`` takes of cost 1 on one shared bucket; returns how many passed."""
    with open_store(url) as s:
        return sum(
            s.take("shared", "q", 1, capacity=40, refill_per_s=1e-9, now=100.0).allowed
            for _ in range(n)
        )


def worker_register(url: str, start: int, n: int) -> int:
    """Child process: register users ``start..start+n`` in batches of 50; returns the count."""
    with open_store(url) as s:
        for i in range(start, start + n, 50):
            s.put_users([user(j) for j in range(i, min(i + 50, start + n))])
        s.incr_stats({"registered": n})
    return n


def worker_churn(url: str, start: int, rounds: int) -> int:
    """Child process: register, re-register, change settings, rekey and delete its own users.

    Returns how many feed entries its calls appended (one per user each call touched).
    """
    entries = 0
    with open_store(url) as s:
        for r in range(rounds):
            base = start + r * 10
            s.put_users([user(i) for i in range(base, base + 10)])
            s.put_users([user(i, salt=f"moved{r}", uid=f"u{i:07d}") for i in range(base, base + 3)])
            s.set_discoverability({f"u{base + 4:07d}": Discoverability.NOBODY}, now=2.0)
            entries += (
                s.rekey_users(
                    [
                        Rekey(
                            user_id=f"u{base + 5:07d}",
                            old_token=token(base + 5),
                            new_token=token(base + 5, "k2"),
                            key_id="k2",
                        )
                    ],
                    now=3.0,
                )
                + 10
                + 3
                + 1
            )
            s.delete_account(f"u{base + 9:07d}")
            entries += 1
    return entries


def worker_register_forever(url: str, ready: str) -> None:
    """Child process: register batches of new users until killed; touches ``ready`` first."""
    with open_store(url) as s:
        i = 0
        while True:
            s.put_users([user(j, salt="kill") for j in range(i, i + 50)])
            i += 50
            if i == 500:
                open(ready, "w").close()


def write_redis_v2_users(client: Any, prefix: str, users: Sequence[UserRecord]) -> None:
    """Write ``users`` the way Redis layout v2 kept them (one ``{P:u:<id>}`` hash each).

    Shared by the migration tests of a single Redis and of a cluster: both must find these
    users again after the store moves them into the current layout.
    """
    g = "{" + prefix + ":g}"
    client.set(g + ":schema", 2)
    for u in users:
        uk = "{" + prefix + ":u:" + u.user_id + "}"
        client.hset(
            uk,
            mapping={
                "tok": u.token,
                "hex": u.token.hex(),
                "kid": u.key_id,
                "ct": u.number_ct,
                "disc": b"0",
                "cat": repr(u.created_at),
                "uat": repr(u.updated_at),
            },
        )
        client.set(uk + ":k", u.wrapped_key)
        client.set("{" + prefix + ":t:" + u.token.hex() + "}", u.user_id)
        client.zadd(g + ":ids", {u.user_id: 0})
