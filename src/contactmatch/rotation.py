"""Bulk OPRF key rotation: re-derive every stored token from the decrypted numbers.

Resumable: after each batch the last user id done is written as a checkpoint in the store, so
a crashed run continues where it stopped. Re-running a batch is harmless, because a rekey only
applies while the stored token still equals the one read (and the new token is deterministic).
A number's ciphertext is bound to the row's token, so every rekeyed user is re-sealed for the
new token under a fresh user key wrapped by the data key's primary, which also completes a
data-key rotation. Numbers exist in clear only in memory, one batch at a time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput
from contactmatch.stores import BaseStore, Rekey, UserRecord, open_store
from contactmatch.stores.base import check_int, check_key_id

__all__ = ["RekeyOutcome", "RotationReport", "rekey_records", "rotate", "rotate_url"]

TokenFn = Callable[[Sequence[str]], Sequence[bytes]]
logger = logging.getLogger("contactmatch.rotation")


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationReport:
    """What a rotation did: users rekeyed, skipped (changed meanwhile), passes, uploads purged."""

    rekeyed: int
    skipped: int
    passes: int
    contacts_purged: int


#: ``progress(done, total)``: users looked at so far in this pass, of the registry's count.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RekeyOutcome:
    """One batch: users rekeyed, skipped (changed meanwhile), looked at; compute/store time."""

    rekeyed: int
    skipped: int
    touched: int
    compute_s: float
    store_s: float


def rekey_records(
    store: BaseStore,
    data_key: DataKey,
    token_fn: TokenFn,
    key_id: str,
    records: Sequence[UserRecord],
    *,
    now: float | None = None,
) -> RekeyOutcome:
    """Re-derive the tokens of ``records`` that are not yet under ``key_id`` and write them.

    The batch step of :func:`rotate`, shared with the distributed rotation, where each
    worker runs it on its own pages. Safe to repeat: a rekey applies only while the stored
    token is still the one read, and the new token is a function of the number.

    Raises:
        InvalidInput: ``token_fn`` returned the wrong number of tokens.
        VerificationFailed: a stored number does not decrypt with ``data_key``.
    """
    todo = [u for u in records if u.key_id != key_id or data_key.needs_rewrap(u.wrapped_key)]
    if not todo:
        return RekeyOutcome(0, 0, 0, 0.0, 0.0)
    t0 = time.perf_counter()
    numbers = [data_key.open_number(u.number_ct, u.wrapped_key, u.user_id, u.token) for u in todo]
    tokens = list(token_fn(numbers))
    if len(tokens) != len(todo):
        raise InvalidInput("token_fn returned a different number of tokens")
    updates = []
    for u, n, t in zip(todo, numbers, tokens, strict=True):
        sealed = data_key.seal_number(n, u.user_id, t)
        updates.append(
            Rekey(
                user_id=u.user_id,
                old_token=u.token,
                new_token=t,
                key_id=key_id,
                number_ct=sealed.number_ct,
                wrapped_key=sealed.wrapped_key,
            )
        )
    del numbers  # clear text lives no longer than its batch
    t1 = time.perf_counter()
    done = store.rekey_users(updates, now=time.time() if now is None else now)
    t2 = time.perf_counter()
    return RekeyOutcome(done, len(todo) - done, len(todo), t1 - t0, t2 - t1)


def rotate(
    store: BaseStore,
    data_key: DataKey,
    token_fn: TokenFn,
    new_key_id: str,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    purge_contacts: bool = True,
    max_passes: int = 3,
    _clock: Callable[[], float] = time.time,
) -> RotationReport:
    """Move every registration to tokens under ``new_key_id``, in resumable batches.

    Passes repeat (up to ``max_passes``) until one finds nothing left to do, which catches
    users who re-registered under the old key while the rotation was running. This runs in
    one process (OPRF evaluations on every core through ``token_fn``);
    :func:`contactmatch.bulk.rotate_on_cluster` spreads the same batches over a cluster.

    Args:
        store: the registry store.
        data_key: opens stored numbers; its primary key wraps the fresh user keys.
        token_fn: maps E.164 numbers to their tokens under the new key (aligned).
        new_key_id: the new OPRF key's id.
        batch_size: users per transaction.
        progress: called after each batch with (users looked at in this pass, users).
        purge_contacts: afterwards drop contact uploads made under older keys (clients
            re-upload on their next sync; old tokens can never match again).
        max_passes: bound on verification passes.

    Returns:
        A :class:`RotationReport`.

    Raises:
        InvalidInput: ``token_fn`` returned the wrong number of tokens.
        VerificationFailed: a stored number does not decrypt with ``data_key``.
    """
    kid = check_key_id(new_key_id)
    size = check_int(batch_size, "batch_size", 1, 100_000)
    checkpoint = f"rotate:{kid}"
    rekeyed = skipped = passes = 0
    # Key ids are public (they travel with every evaluation); the key never reaches a log.
    logger.info("rotation to OPRF key id %s started", kid)
    while passes < max_passes:
        passes += 1
        total = store.count_users()
        seen = 0
        after = store.get_checkpoint(checkpoint)
        touched = 0
        while page := store.scan_users(after, size):
            outcome = rekey_records(store, data_key, token_fn, kid, page, now=_clock())
            rekeyed += outcome.rekeyed
            skipped += outcome.skipped
            touched += outcome.touched
            after = page[-1].user_id
            store.set_checkpoint(checkpoint, after)
            seen += len(page)
            if progress is not None:
                progress(seen, total)
        store.set_checkpoint(checkpoint, None)
        logger.info("rotation pass %d: %d of %d users rekeyed", passes, touched, total)
        if touched == 0:
            break
    purged = store.purge_contacts(kid) if purge_contacts else 0
    logger.info(
        "rotation to OPRF key id %s done: %d rekeyed, %d skipped, %d passes, %d contact "
        "uploads purged",
        kid,
        rekeyed,
        skipped,
        passes,
        purged,
    )
    return RotationReport(rekeyed=rekeyed, skipped=skipped, passes=passes, contacts_purged=purged)


def rotate_url(
    store_url: str,
    data_key_path: str | os.PathLike[str],
    token_fn: TokenFn,
    new_key_id: str,
    **options: Any,
) -> RotationReport:
    """Entry point for ``contactmatch rotate``: open the store and key file, then :func:`rotate`.

    Args:
        store_url: any URL :func:`~contactmatch.stores.open_store` accepts.
        data_key_path: the 0600 data key file.
        token_fn: numbers -> tokens under the new OPRF key.
        new_key_id: the new OPRF key's id.
        options: passed to :func:`rotate` (``batch_size``, ``progress``, ...).
    """
    data_key = DataKey.load(data_key_path)
    with open_store(store_url) as store:
        return rotate(store, data_key, token_fn, new_key_id, **options)
