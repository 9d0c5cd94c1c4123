"""Bulk import of ``user_id,number`` files, in partitions, exactly once, on any engine.

Two passes over the file, both split into the same partitions:

1. **Scan** (on the workers): normalise every number and return a salted 16-byte digest of
   each. The coordinator then finds duplicates over the whole file, first line wins, as
   :meth:`DiscoveryServer.register_many` does for one batch: a later line with a user id
   already seen is rejected as ``duplicate_user``, one with a number already seen as
   ``duplicate``. Partitions are independent after this, so they may be written in any
   order, on any worker, and the result is the same.
2. **Write** (on the workers): evaluate the OPRF, seal the numbers under fresh user keys and
   write the partition in one store call that also marks it done (one transaction on
   SQLite and PostgreSQL). A partition already marked is skipped, so a re-run after a crash,
   a Ctrl-C or a lost worker resumes from the unfinished partitions, and a finished import
   re-run writes nothing. The marks are named by the file's content and the import's
   settings: a different file is a different import.

The scan is repeated on every run (it is needed for the duplicate check and costs a few
percent of the OPRF work). The coordinator holds about 41 bytes per line (line number,
two digests, a flag), so 10^8 lines need about 4 GB; split larger files (numbers that
repeat across files are then transferred, as a later registration transfers a number).

The rejection report (CSV: ``line,reason,masked``) lists every rejected line with the
number masked (:func:`~contactmatch.errors.mask_number`), never in full.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contactmatch._urls import redact_url
from contactmatch.atrest import DataKey
from contactmatch.bulk._engine import Engine, open_engine
from contactmatch.bulk._source import Partition, read_partitions
from contactmatch.bulk._tasks import (
    ScanResult,
    ScanSpec,
    Target,
    WriteSpec,
    scan_partition,
    write_partition,
)
from contactmatch.errors import InvalidInput, InvalidKey, mask_number
from contactmatch.keys import ServerKey
from contactmatch.stores import BaseStore, Discoverability, open_store
from contactmatch.stores.base import check_int

__all__ = ["ImportReport", "Progress", "import_file"]

logger = logging.getLogger("contactmatch.bulk")

#: ``progress(stage, lines_done, lines_total)``; stage is ``"scan"`` or ``"write"``, and
#: the total is None while the file is still being read.
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    """What an import did (counts only: no number, no user id)."""

    import_id: str
    lines: int
    imported: int
    rejected: int
    reasons: dict[str, int]
    transferred: int
    partitions: int
    resumed: int
    workers: int
    seconds: float
    scan_seconds: float
    write_seconds: float
    compute_seconds: float
    store_seconds: float
    report_path: str | None
    dashboard: str | None


@dataclass(slots=True)
class _Meta:
    """What the coordinator keeps of a partition between the passes (no number in clear)."""

    lines: npt.NDArray[np.int64]
    uid_digests: npt.NDArray[np.void]
    #: Lines the reader refused (listed again, with reasons, when the write pass re-reads).
    read_rejected: int
    num_digests: npt.NDArray[np.void] = field(default_factory=lambda: np.empty(0, "V16"))
    accepted: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    scan_rejects: list[tuple[int, str]] = field(default_factory=list)
    keep: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    dup_reason: dict[int, str] = field(default_factory=dict)


def _file_id(path: Path, *params: object) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.update(repr(params).encode())
    return h.hexdigest()[:20]


def _uid_digests(user_ids: list[str]) -> npt.NDArray[np.void]:
    out = b"".join(hashlib.blake2b(u.encode(), digest_size=16).digest() for u in user_ids)
    return np.frombuffer(out, dtype="V16")


def _first_only(values: npt.NDArray[np.void]) -> npt.NDArray[np.bool_]:
    """True where a value appears for the first time (a stable sort keeps the first)."""
    keep = np.zeros(len(values), dtype=np.bool_)
    if len(values):
        _, first = np.unique(values, return_index=True)
        keep[first] = True
    return keep


def _check_store_keys(store_url: str, key_id: str, data_key: DataKey) -> None:
    with open_store(store_url) as store:
        census = store.key_census()
    foreign = sorted(k for k, n in census.oprf.items() if n and k != key_id)
    if foreign:
        raise InvalidKey(
            f"the store holds users under OPRF key(s) {', '.join(foreign)}, not {key_id}: "
            "import with the key the store is served with (or rotate first)"
        )
    unknown = sorted(k for k, n in census.data.items() if n and k not in data_key.key_ids)
    if unknown:
        raise InvalidKey(
            f"the store holds numbers under data key(s) {', '.join(unknown)}, which this "
            "data key file does not hold: pass the data key the store was written with"
        )


def import_file(
    path: str | os.PathLike[str],
    store_url: str,
    key_path: str | os.PathLike[str],
    data_key_path: str | os.PathLike[str],
    *,
    region: str | None = None,
    discoverability: Discoverability | str = Discoverability.EVERYONE,
    cluster: str | None = None,
    engine: Engine | None = None,
    partition_size: int = 20_000,
    report_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Register every ``user_id,number`` line of ``path``; resumable and exactly once.

    Args:
        path: CSV with a header (``user_id,number``, either order) or plain lines; gzip is
            recognised by its magic bytes.
        store_url: the registry store (workers open it too: it must be reachable from them).
        key_path: the OPRF server key file; every worker reads the same path.
        data_key_path: the at-rest data key file; every worker reads the same path.
        region: default region for numbers written without a calling code.
        discoverability: the setting of users the import creates.
        cluster: ``None`` (this process, every core), ``local:N`` or a scheduler address.
        engine: an engine to use instead of ``cluster`` (the caller closes it).
        partition_size: lines per partition (and per store transaction).
        report_path: where rejected lines are listed; None writes no report.
        progress: called as work completes (see :data:`Progress`).

    Returns:
        An :class:`ImportReport`.

    Raises:
        OSError: the input cannot be read, or the report cannot be written.
        InvalidKey: a key file is unusable, or the store holds users under other keys.
        InvalidInput: bad options, damaged gzip data, or a worker that disagrees.
        StoreUnavailable: the store cannot be reached.
    """
    started = time.perf_counter()
    src = Path(path)
    size = check_int(partition_size, "partition_size", 1, 1_000_000)
    setting = Discoverability(discoverability)
    key = ServerKey.load(key_path)
    data_key = DataKey.load(data_key_path)
    _check_store_keys(store_url, key.key_id, data_key)
    import_id = _file_id(src, size, region, key.key_id, setting.value)
    own_engine = engine is None
    eng = open_engine(cluster) if engine is None else engine
    try:
        metas: dict[int, _Meta] = {}
        salt = secrets.token_bytes(16)
        total = 0

        def scans() -> Iterator[ScanSpec]:
            nonlocal total
            for part in read_partitions(src, size):
                metas[part.index] = _Meta(
                    lines=np.asarray(part.lines, dtype=np.int64),
                    uid_digests=_uid_digests(part.user_ids),
                    read_rejected=len(part.rejected),
                )
                total += len(part.lines) + len(part.rejected)
                yield ScanSpec(part.index, part.raws, region, salt)

        t_scan = time.perf_counter()
        scanned = 0
        for res in eng.map_unordered(scan_partition, scans()):
            _take_scan(metas[res.index], res)
            scanned += len(metas[res.index].lines) + metas[res.index].read_rejected
            if progress is not None:
                progress("scan", scanned, None)
        _deduplicate([metas[i] for i in sorted(metas)])
        scan_s = time.perf_counter() - t_scan

        target = Target(
            store_url=store_url,
            key_path=str(key_path),
            data_key_path=str(data_key_path),
            key_id=key.key_id,
            data_key_id=data_key.primary_id,
            threads=eng.threads,
        )
        w = _Writer(
            eng=eng,
            src=src,
            size=size,
            metas=metas,
            import_id=import_id,
            target=target,
            region=region,
            setting=setting,
        )
        if report_path is None:
            w.run(None, progress, total)
        else:
            with Path(report_path).open("w", newline="", encoding="utf-8") as report:
                w.run(report, progress, total)
    finally:
        if own_engine:
            eng.close()
    logger.info(
        "import %s into %s: %d lines, %d imported, %d rejected, %d partitions on %d workers",
        import_id,
        redact_url(store_url),
        total,
        w.written,
        sum(w.counts.values()),
        len(metas),
        eng.workers,
    )
    return ImportReport(
        import_id=import_id,
        lines=total,
        imported=w.written,
        rejected=sum(w.counts.values()),
        reasons=dict(sorted(w.counts.items())),
        transferred=w.transferred,
        partitions=len(metas),
        resumed=w.resumed,
        workers=eng.workers,
        seconds=time.perf_counter() - started,
        scan_seconds=scan_s,
        write_seconds=w.seconds,
        compute_seconds=w.compute_s,
        store_seconds=w.store_s,
        report_path=None if report_path is None else str(report_path),
        dashboard=eng.dashboard,
    )


def _take_scan(meta: _Meta, res: ScanResult) -> None:
    meta.accepted = np.asarray(res.accepted, dtype=np.int64)
    meta.num_digests = np.frombuffer(res.digests, dtype="V16")
    meta.scan_rejects = res.rejected
    if len(meta.accepted) != len(meta.num_digests):
        raise InvalidInput("a worker returned a malformed scan result")


def _deduplicate(ordered: list[_Meta]) -> None:
    """Over the whole file, first line wins: drop later repeats of a user id, then of a number.

    Only lines whose number normalised take part, so a line with a typo does not shadow a
    later, correct line for the same user.
    """
    if not ordered:
        return
    offsets = np.cumsum([0] + [len(m.lines) for m in ordered])
    owners = np.concatenate([offsets[k] + m.accepted for k, m in enumerate(ordered)])
    uids = np.concatenate([m.uid_digests[m.accepted] for m in ordered])
    numbers = np.concatenate([m.num_digests for m in ordered])
    first_uid = _first_only(uids)
    first_num = np.zeros(len(owners), dtype=np.bool_)
    first_num[np.flatnonzero(first_uid)[_first_only(numbers[first_uid])]] = True
    n = int(offsets[-1])
    keep = np.zeros(n, dtype=np.bool_)
    keep[owners[first_num]] = True
    dup_user = np.zeros(n, dtype=np.bool_)
    dup_user[owners[~first_uid]] = True
    dup_number = np.zeros(n, dtype=np.bool_)
    dup_number[owners[first_uid & ~first_num]] = True
    for k, m in enumerate(ordered):
        lo, hi = offsets[k], offsets[k + 1]
        m.keep = keep[lo:hi].copy()
        for i in np.flatnonzero(dup_user[lo:hi]):
            m.dup_reason[int(i)] = "duplicate_user"
        for i in np.flatnonzero(dup_number[lo:hi]):
            m.dup_reason[int(i)] = "duplicate"
        m.uid_digests = np.empty(0, "V16")  # no longer needed: give the memory back
        m.num_digests = np.empty(0, "V16")


class _Writer:
    """The write pass: re-reads the file, skips finished partitions, lists rejections."""

    def __init__(
        self,
        *,
        eng: Engine,
        src: Path,
        size: int,
        metas: dict[int, _Meta],
        import_id: str,
        target: Target,
        region: str | None,
        setting: Discoverability,
    ) -> None:
        self.eng, self.src, self.size, self.metas = eng, src, size, metas
        self.import_id, self.target, self.region, self.setting = import_id, target, region, setting
        self.counts: dict[str, int] = {}
        self.resumed = self.done_lines = self.written = self.transferred = 0
        self.compute_s = self.store_s = self.seconds = 0.0

    def run(self, report: Any, progress: Progress | None, total: int) -> None:
        t0 = time.perf_counter()
        writer = None if report is None else csv.writer(report)
        if writer is not None:
            writer.writerow(["line", "reason", "masked"])
        with open_store(self.target.store_url) as store:
            for res in self.eng.map_unordered(write_partition, self._specs(store, writer)):
                self.written += res.written
                self.transferred += res.transferred
                self.compute_s += res.compute_s
                self.store_s += res.store_s
                m = self.metas[res.index]
                self.done_lines += len(m.lines) + m.read_rejected
                if progress is not None:
                    progress("write", self.done_lines, total)
        self.seconds = time.perf_counter() - t0

    def _specs(self, store: BaseStore, writer: Any) -> Iterator[WriteSpec]:
        for part in read_partitions(self.src, self.size):
            meta = self.metas.get(part.index)
            if meta is None or len(meta.lines) != len(part.lines):
                raise InvalidInput(f"{self.src.name} changed while it was being imported")
            _report(part, meta, writer, self.counts)
            mark = f"import:{self.import_id}:{part.index}"
            if store.get_checkpoint(mark) == "done":
                self.resumed += 1
                self.done_lines += len(part.lines) + len(part.rejected)
                continue
            idx = np.flatnonzero(meta.keep)
            yield WriteSpec(
                index=part.index,
                target=self.target,
                region=self.region,
                discoverability=self.setting.value,
                mark=mark,
                user_ids=[part.user_ids[i] for i in idx],
                raws=[part.raws[i] for i in idx],
            )


def _report(part: Partition, meta: _Meta, writer: Any, counts: dict[str, int]) -> None:
    rows: list[tuple[int, str, str]] = [(r.line, r.reason, r.masked) for r in part.rejected]
    rows += [
        (int(meta.lines[i]), reason, mask_number(part.raws[i])) for i, reason in meta.scan_rejects
    ]
    rows += [
        (int(meta.lines[i]), reason, mask_number(part.raws[i]))
        for i, reason in meta.dup_reason.items()
    ]
    rows.sort()
    for _, reason, _ in rows:
        counts[reason] = counts.get(reason, 0) + 1
    if writer is not None:
        writer.writerows(rows)
