"""The registry of one token function: compact numpy columns, snapshots, change batches.

One :class:`RegistryTable` per token function serves every membership method (lookup,
bucket, filter) from the same rows, with no Python object per user. Its bulk lives in an
immutable base that a snapshot file maps read-only (shared by worker processes); changes
land in a small overlay whose cost grows with the changes, not with the registry.
"""

from __future__ import annotations

from contactmatch.registry._derive import filter_salt
from contactmatch.registry.snapshot import (
    Snapshot,
    SnapshotError,
    load,
    newest,
    persist,
    prune,
    save,
    snapshot_path,
    write_in,
)
from contactmatch.registry.table import BucketAnswer, HashDelta, RegistryTable

__all__ = [
    "BucketAnswer",
    "HashDelta",
    "RegistryTable",
    "Snapshot",
    "SnapshotError",
    "filter_salt",
    "load",
    "newest",
    "persist",
    "prune",
    "save",
    "snapshot_path",
    "write_in",
]
