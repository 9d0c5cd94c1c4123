"""Small whole-array helpers the registry's columns are built and queried with."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["cancel", "count_below", "expand_ranges", "is_member", "remove_values"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]


def expand_ranges(lo: I64, hi: I64) -> tuple[I64, I64]:
    """Every index of the ranges ``[lo[i], hi[i])`` in order, and the ``i`` each came from.

    One repeat and one arange instead of a Python loop over ranges: a 1,000-prefix bucket
    query or a 1,000-change batch is a handful of numpy calls.
    """
    counts = hi - lo
    total = int(counts.sum())
    owner = np.repeat(np.arange(lo.shape[0], dtype=np.int64), counts)
    if not total:
        return np.zeros(0, dtype=np.int64), owner
    shift = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(total, dtype=np.int64), owner


def is_member(sorted_set: npt.NDArray[np.integer], values: npt.NDArray[np.integer]) -> Bools:
    """Whether each value occurs in ``sorted_set`` (binary search; no hash table, no copy)."""
    if not sorted_set.shape[0] or not values.shape[0]:
        return np.zeros(values.shape[0], dtype=np.bool_)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.shape[0] - 1)
    found: Bools = sorted_set[pos] == values
    return found


def remove_values(values: U64, drop: U64) -> U64:
    """``values`` (sorted) without one occurrence of each value in ``drop`` that it holds."""
    if not drop.shape[0] or not values.shape[0]:
        return values
    uniq, want = np.unique(drop, return_counts=True)
    left = np.searchsorted(values, uniq, side="left")
    have = np.searchsorted(values, uniq, side="right") - left
    take = np.minimum(want, have)
    idx, owner = expand_ranges(left, left + take)
    del owner
    out: U64 = np.delete(values, idx)
    return out


def cancel(added: U64, removed: U64) -> tuple[U64, U64]:
    """Multiset difference both ways, sorted: a value both added and removed is no change."""
    if not added.shape[0] or not removed.shape[0]:
        return np.sort(added), np.sort(removed)
    ua, ca = np.unique(added, return_counts=True)
    ur, cr = np.unique(removed, return_counts=True)
    _, ia, ir = np.intersect1d(ua, ur, assume_unique=True, return_indices=True)
    both = np.minimum(ca[ia], cr[ir])
    ca[ia] -= both
    cr[ir] -= both
    return np.repeat(ua, ca), np.repeat(ur, cr)


def count_below(marks: I64, values: I64, size: int, *, inclusive: bool = False) -> I64:
    """For each value, how many ``marks`` are below it (``<=`` it when ``inclusive``).

    Equal to ``np.searchsorted(sorted(marks), values, "right" if inclusive else "left")``
    for marks and values in ``0..size``, but one counting pass and one gather instead of a
    binary search per value: compaction asks this for every row of the base.
    """
    counts = np.bincount(marks, minlength=size + 1)
    cum = np.cumsum(counts)
    upto: I64 = cum[values]
    if inclusive:
        return upto
    strictly: I64 = upto - counts[values]
    return strictly
