"""Record builders shared by the store tests, and the worker functions run in child processes.

Workers live in an importable module (not a test file) because ``spawn`` children import them
by name.
"""

from __future__ import annotations

import hashlib

from contactmatch.stores import Discoverability, UserRecord, open_store


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
) -> UserRecord:
    """A registration for user ``u<i>`` with a recognisable fake ciphertext and wrapped key."""
    return UserRecord(
        user_id=uid or f"u{i:07d}",
        token=token(i, salt),
        key_id=key_id,
        number_ct=b"CT:" + hashlib.sha256(f"ct:{salt}:{i}".encode()).digest(),
        wrapped_key=b"WK:" + hashlib.sha256(f"wk:{salt}:{i}".encode()).digest(),
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
