"""OPRF key rotation spread over an engine's workers: pages of user ids, rekeyed in parallel.

The coordinator walks the registry in user-id order and hands each page's *ids* to a worker
(no number, token or ciphertext travels in the task graph); the worker reads the page's
records from the store, opens the numbers with the data key it reads from its own path,
evaluates the new key and writes the rekeys (:func:`~contactmatch.rotation.rekey_records`).
Pages finish out of order, so the checkpoint (``rotate:<key id>``, the same one
:func:`~contactmatch.rotation.rotate` keeps) only advances past a page once every page
before it is done: a re-run resumes from there and at worst redoes a few finished pages,
which a rekey makes harmless. Passes repeat until one finds nothing to do.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from contactmatch._urls import redact_url
from contactmatch.atrest import DataKey
from contactmatch.bulk._engine import Engine, open_engine
from contactmatch.bulk._tasks import RekeySpec, Target, rekey_page
from contactmatch.keys import ServerKey
from contactmatch.rotation import RotationReport
from contactmatch.stores import BaseStore, open_store
from contactmatch.stores.base import check_int

__all__ = ["ClusterRotation", "rotate_on_cluster"]

logger = logging.getLogger("contactmatch.bulk")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterRotation:
    """A :class:`~contactmatch.rotation.RotationReport` plus where the time went."""

    report: RotationReport
    workers: int
    seconds: float
    compute_seconds: float
    store_seconds: float
    dashboard: str | None


class _Walk:
    """One pass: pages handed out in id order, a checkpoint that trails the finished ones."""

    def __init__(self, store: BaseStore, checkpoint: str, size: int, template: RekeySpec):
        self.store, self.checkpoint, self.size, self.template = store, checkpoint, size, template
        self.ends: list[str] = []
        self.sizes: list[int] = []
        self.done: set[int] = set()
        self.frontier = 0
        self.seen = self.touched = 0

    def pages(self) -> Iterator[RekeySpec]:
        cursor = self.store.get_checkpoint(self.checkpoint)
        while page := self.store.scan_users(cursor, self.size):
            ids = [u.user_id for u in page]
            self.ends.append(ids[-1])
            self.sizes.append(len(ids))
            cursor = ids[-1]
            yield replace(self.template, index=len(self.ends) - 1, user_ids=ids)

    def finished(self, index: int, touched: int) -> None:
        self.done.add(index)
        self.seen += self.sizes[index]
        self.touched += touched
        if self.frontier in self.done:
            while self.frontier in self.done:
                self.frontier += 1
            self.store.set_checkpoint(self.checkpoint, self.ends[self.frontier - 1])


def rotate_on_cluster(
    store_url: str,
    data_key_path: str | os.PathLike[str],
    new_key_path: str | os.PathLike[str],
    *,
    cluster: str | None = None,
    engine: Engine | None = None,
    batch_size: int = 1000,
    purge_contacts: bool = True,
    max_passes: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterRotation:
    """Move every registration to tokens under the key in ``new_key_path``.

    Args:
        store_url: the registry store; workers open it too.
        data_key_path: the data key file, read by every worker.
        new_key_path: the new OPRF key file, read by every worker.
        cluster: ``None`` (this process), ``local:N`` or a Dask scheduler address.
        engine: an engine to use instead of ``cluster`` (the caller closes it).
        batch_size: users per page (one task, one store transaction).
        purge_contacts: afterwards drop uploads made under older keys.
        max_passes: bound on passes (a pass that finds nothing to do ends the rotation).
        progress: called as pages finish with (users looked at in this pass, users).

    Raises:
        InvalidKey: a key file is unusable, or a worker read a different key.
        VerificationFailed: a stored number does not decrypt with the data key.
    """
    t0 = time.perf_counter()
    size = check_int(batch_size, "batch_size", 1, 100_000)
    key = ServerKey.load(new_key_path)
    data_key = DataKey.load(data_key_path)
    kid = key.key_id
    checkpoint = f"rotate:{kid}"
    own = engine is None
    eng = open_engine(cluster) if engine is None else engine
    rekeyed = skipped = passes = 0
    compute_s = store_s = 0.0
    try:
        with open_store(store_url) as store:
            while passes < max_passes:
                passes += 1
                target = Target(
                    store_url=store_url,
                    key_path=str(new_key_path),
                    data_key_path=str(data_key_path),
                    key_id=kid,
                    data_key_id=data_key.primary_id,
                    threads=eng.threads,
                )
                template = RekeySpec(index=0, target=target, user_ids=[])
                walk = _Walk(store, checkpoint, size, template)
                total = store.count_users()
                for res in eng.map_unordered(rekey_page, walk.pages()):
                    rekeyed += res.rekeyed
                    skipped += res.skipped
                    compute_s += res.compute_s
                    store_s += res.store_s
                    walk.finished(res.index, res.touched)
                    if progress is not None:
                        progress(walk.seen, total)
                store.set_checkpoint(checkpoint, None)
                if walk.touched == 0:
                    break
            purged = store.purge_contacts(kid) if purge_contacts else 0
    finally:
        if own:
            eng.close()
    report = RotationReport(rekeyed=rekeyed, skipped=skipped, passes=passes, contacts_purged=purged)
    # Key ids are public; the store URL is printed without its password.
    logger.info(
        "rotation of %s to OPRF key id %s on %d workers: %d rekeyed, %d skipped, %d passes, "
        "%d contact uploads purged",
        redact_url(store_url),
        kid,
        eng.workers,
        rekeyed,
        skipped,
        passes,
        purged,
    )
    return ClusterRotation(
        report=report,
        workers=eng.workers,
        seconds=time.perf_counter() - t0,
        compute_seconds=compute_s,
        store_seconds=store_s,
        dashboard=eng.dashboard,
    )
