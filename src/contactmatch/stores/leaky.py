"""The leaky-bucket rule, in one place for every adapter that decides in Python.

A bucket holds a *level* that drains at ``refill_per_s`` units per second; a take of ``cost``
is allowed if the drained level plus the cost stays within ``capacity``, and a refused take
changes nothing. Memory, SQLite and PostgreSQL call these functions under their own lock or
transaction; Redis runs the same rule in ``redis/lua/take.lua`` (one atomic script), and the
audit replays it to check the stores' answers. Keeping the arithmetic here is what makes the
adapters agree to the last float.
"""

from __future__ import annotations

import math

__all__ = ["drain_time", "leak", "take_decision"]


def leak(level: float, updated: float, now: float, refill_per_s: float) -> float:
    """Bucket level after draining since ``updated`` (never below zero, clock skew ignored)."""
    return max(0.0, level - max(0.0, now - updated) * refill_per_s)


def take_decision(
    level: float, cost: float, capacity: float, refill_per_s: float
) -> tuple[bool, float, float]:
    """Leaky-bucket rule shared by the adapters that decide in Python: (allowed, retry, level)."""
    new_level = level + cost
    if new_level <= capacity:
        return True, 0.0, new_level
    if cost > capacity:
        return False, math.inf, level
    return False, (new_level - capacity) / refill_per_s, level


def drain_time(level: float, updated: float, refill_per_s: float) -> float:
    """When a bucket at ``level`` (as of ``updated``) is empty again: the time its row may go.

    ``inf`` when it never drains within a float's range (a tiny refill rate).
    """
    return updated + level / refill_per_s
