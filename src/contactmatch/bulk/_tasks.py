"""What runs on a worker: scanning a partition, writing it, rekeying a page of users.

Tasks carry paths, URLs, public key ids and the partition's own lines, never key material:
each worker process reads the OPRF and data keys from files it can read (the same paths on
every machine, e.g. a secrets mount) and keeps them, with one store connection, for every
later task (:func:`context`). The key ids travel with each task so a worker that read a
different key file refuses the work instead of writing tokens no server can match.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, InvalidKey
from contactmatch.keys import ServerKey
from contactmatch.oprf import OprfServer
from contactmatch.phone import normalize_many
from contactmatch.rotation import rekey_records
from contactmatch.stores import BaseStore, Discoverability, UserRecord, open_store

__all__ = [
    "RekeyResult",
    "RekeySpec",
    "ScanResult",
    "ScanSpec",
    "Target",
    "WriteResult",
    "WriteSpec",
    "context",
    "rekey_page",
    "scan_partition",
    "write_partition",
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a task writes and with which keys: paths and public ids, never key bytes."""

    store_url: str = field(repr=False)  # may hold a password
    key_path: str
    data_key_path: str
    key_id: str
    data_key_id: str
    threads: int | None = 1


@dataclass(frozen=True, slots=True)
class ScanSpec:
    """Normalise a partition's numbers and name each by a salted digest (duplicate check)."""

    index: int
    raws: list[str] = field(repr=False)
    region: str | None
    salt: bytes = field(repr=False)  # per-import and random: digests are not a dictionary


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Aligned with the partition: a 16-byte digest per accepted number, reasons for the rest."""

    index: int
    digests: bytes = field(repr=False)  # 16 bytes per accepted number, in order
    accepted: list[int]
    rejected: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class WriteSpec:
    """Register a partition's accepted lines under ``mark`` (its completion checkpoint)."""

    index: int
    target: Target
    region: str | None
    discoverability: str
    mark: str
    user_ids: list[str] = field(repr=False)
    raws: list[str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a partition's write did, and where its time went."""

    index: int
    written: int
    transferred: int
    skipped: bool
    compute_s: float
    store_s: float


@dataclass(frozen=True, slots=True)
class RekeySpec:
    """Move one page of users to tokens under ``key_id`` (the new key's file is ``key_path``)."""

    index: int
    target: Target
    user_ids: list[str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class RekeyResult:
    """Users rekeyed, skipped (changed meanwhile) and looked at, for one page."""

    index: int
    rekeyed: int
    skipped: int
    touched: int
    compute_s: float
    store_s: float


class _Context:
    __slots__ = ("data_key", "oprf", "store")

    def __init__(self, store_url: str, key_path: str, data_key_path: str, threads: int | None):
        self.oprf = OprfServer(ServerKey.load(key_path), workers=threads)
        self.data_key = DataKey.load(data_key_path)
        self.store: BaseStore = open_store(store_url)


_CONTEXTS: dict[tuple[str, str, str, int | None], _Context] = {}
_LOCK = threading.Lock()


def context(target: Target) -> _Context:
    """This process's keys and store connection for ``target``, loaded on first use.

    Raises:
        InvalidKey: the key files here are not the ones the coordinator named.
    """
    ident = (target.store_url, target.key_path, target.data_key_path, target.threads)
    with _LOCK:
        ctx = _CONTEXTS.get(ident)
        if ctx is not None and not _matches(ctx, target):
            ctx.store.close()  # the files were replaced since (a new key): read them again
            ctx = None
        if ctx is None:
            ctx = _CONTEXTS[ident] = _Context(*ident)
    if ctx.oprf.current_key_id != target.key_id:
        raise InvalidKey(
            f"this worker's OPRF key file holds key {ctx.oprf.current_key_id}, "
            f"the coordinator's {target.key_id}: every worker must read the same key"
        )
    if ctx.data_key.primary_id != target.data_key_id:
        raise InvalidKey(
            f"this worker's data key file has primary {ctx.data_key.primary_id}, the "
            f"coordinator's {target.data_key_id}: every worker must read the same data key"
        )
    return ctx


def _matches(ctx: _Context, target: Target) -> bool:
    return (
        ctx.oprf.current_key_id == target.key_id and ctx.data_key.primary_id == target.data_key_id
    )


def close_contexts() -> None:
    """Close every cached store connection (the in-process engine, at the end of a run)."""
    with _LOCK:
        for ctx in _CONTEXTS.values():
            ctx.store.close()
        _CONTEXTS.clear()


def scan_partition(spec: ScanSpec) -> ScanResult:
    """Normalise and digest; cheap next to the OPRF, so it is simply redone on a resume."""
    batch = normalize_many(spec.raws, spec.region)
    accepted: list[int] = []
    parts: list[bytes] = []
    salt = spec.salt
    for i, number in enumerate(batch.numbers):
        if number is not None:
            accepted.append(i)
            parts.append(hashlib.blake2b(number.encode(), digest_size=16, key=salt).digest())
    return ScanResult(spec.index, b"".join(parts), accepted, list(batch.rejected))


def write_partition(spec: WriteSpec) -> WriteResult:
    """Evaluate, seal and write one partition, marking it done in the same store write.

    The partition's lines were already cleared of duplicates by the coordinator, so this is
    :meth:`DiscoveryServer.register_many`'s write for them: an existing user keeps their
    setting and creation time, and a number held by another account moves (that account
    is deleted, as a device transfer does).
    """
    ctx = context(spec.target)
    store = ctx.store
    t0 = time.perf_counter()
    if store.get_checkpoint(spec.mark) == "done":  # another attempt finished it
        return WriteResult(spec.index, 0, 0, True, 0.0, time.perf_counter() - t0)
    store_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    batch = normalize_many(spec.raws, spec.region)
    numbers = [n for n in batch.numbers if n is not None]
    if len(numbers) != len(spec.raws):  # the coordinator sends accepted lines only
        raise InvalidInput("a worker normalised the partition differently (library versions?)")
    tokens = ctx.oprf.evaluate_tokens([n.encode("ascii") for n in numbers]).tokens
    compute_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    existing = store.get_users(spec.user_ids)
    holders = store.lookup_tokens(tokens)
    store_s += time.perf_counter() - t2
    now = time.time()
    setting = Discoverability(spec.discoverability)
    t3 = time.perf_counter()
    records = [
        UserRecord(
            user_id=uid,
            token=tok,
            key_id=spec.target.key_id,
            number_ct=sealed.number_ct,
            wrapped_key=sealed.wrapped_key,
            discoverability=old.discoverability if old is not None else setting,
            created_at=old.created_at if old is not None else now,
            updated_at=now,
        )
        for uid, num, tok, old in zip(spec.user_ids, numbers, tokens, existing, strict=True)
        for sealed in (ctx.data_key.seal_number(num, uid, tok),)
    ]
    del numbers
    compute_s += time.perf_counter() - t3
    t4 = time.perf_counter()
    moved = sorted(
        {
            h.user_id
            for h, uid in zip(holders, spec.user_ids, strict=True)
            if h is not None and h.user_id != uid
        }
    )
    for uid in moved:  # idempotent: a re-run finds them gone
        store.delete_account(uid)
    store.put_users(records, mark=spec.mark)
    store.incr_stats({"registrations": len(records), "transfers": len(moved)})
    store_s += time.perf_counter() - t4
    return WriteResult(spec.index, len(records), len(moved), False, compute_s, store_s)


def rekey_page(spec: RekeySpec) -> RekeyResult:
    """Rotate one page of users (see :func:`contactmatch.rotation.rekey_records`)."""
    ctx = context(spec.target)
    t0 = time.perf_counter()
    found = ctx.store.get_users(spec.user_ids)
    records: Sequence[UserRecord] = [u for u in found if u is not None]
    store_s = time.perf_counter() - t0
    oprf = ctx.oprf

    def token_fn(numbers: Sequence[str]) -> list[bytes]:
        return list(oprf.evaluate_tokens([n.encode("ascii") for n in numbers]).tokens)

    outcome = rekey_records(ctx.store, ctx.data_key, token_fn, spec.target.key_id, records)
    return RekeyResult(
        spec.index,
        outcome.rekeyed,
        outcome.skipped,
        outcome.touched,
        outcome.compute_s,
        store_s + outcome.store_s,
    )
