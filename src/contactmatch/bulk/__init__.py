"""Bulk work over the whole registry: importing numbers and rotating keys, on any engine.

``import_file`` and ``rotate_on_cluster`` split the work into partitions that run in this
process (every core, no extra needed) or on a Dask distributed cluster (the ``[cluster]``
extra: ``local:N`` or a scheduler address). Each partition is written in one store call that
records its completion, so an interrupted run resumes where it stopped. Keys reach workers
as file paths, never as bytes in the task graph (see ``docs/operations.md``).
"""

from __future__ import annotations

from contactmatch.bulk._engine import DaskEngine, Engine, LocalEngine, open_engine
from contactmatch.bulk.importer import ImportReport, import_file
from contactmatch.bulk.rotate import rotate_on_cluster

__all__ = [
    "DaskEngine",
    "Engine",
    "ImportReport",
    "LocalEngine",
    "import_file",
    "open_engine",
    "rotate_on_cluster",
]
