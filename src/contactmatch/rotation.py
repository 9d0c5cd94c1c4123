"""Bulk OPRF key rotation: re-derive every stored token from the decrypted numbers.

Resumable: after each batch the last user id done is written as a checkpoint in the store, so
a crashed run continues where it stopped. Re-running a batch is harmless, because a rekey only
applies while the stored token still equals the one read (and the new token is deterministic).
A number's ciphertext is bound to the row's token, so every rekeyed user is re-sealed for the
new token under a fresh user key wrapped by the data key's primary, which also completes a
data-key rotation. Numbers exist in clear only in memory, one batch at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput
from contactmatch.stores import BaseStore, Rekey, open_store
from contactmatch.stores.base import check_int, check_key_id

__all__ = ["RotationReport", "rotate", "rotate_url"]

TokenFn = Callable[[Sequence[str]], Sequence[bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationReport:
    """What a rotation did: users rekeyed, skipped (changed meanwhile), passes, uploads purged."""

    rekeyed: int
    skipped: int
    passes: int
    contacts_purged: int


def rotate(
    store: BaseStore,
    data_key: DataKey,
    token_fn: TokenFn,
    new_key_id: str,
    *,
    batch_size: int = 1000,
    progress: bool = True,
    purge_contacts: bool = True,
    max_passes: int = 3,
    _clock: Callable[[], float] = time.time,
) -> RotationReport:
    """Move every registration to tokens under ``new_key_id``, in resumable batches.

    Passes repeat (up to ``max_passes``) until one finds nothing left to do, which catches
    users who re-registered under the old key while the rotation was running.

    Args:
        store: the registry store.
        data_key: opens stored numbers; its primary key wraps the fresh user keys.
        token_fn: maps E.164 numbers to their tokens under the new key (aligned).
        new_key_id: the new OPRF key's id.
        batch_size: users per transaction.
        progress: show a rich progress bar.
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
    bar: Any = (
        Progress(
            TextColumn("[bold]rotating tokens"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        if progress
        else nullcontext()
    )
    with bar:
        while passes < max_passes:
            passes += 1
            task = bar.add_task("rotate", total=store.count_users()) if progress else None
            after = store.get_checkpoint(checkpoint)
            touched = 0
            while page := store.scan_users(after, size):
                todo = [u for u in page if u.key_id != kid or data_key.needs_rewrap(u.wrapped_key)]
                if todo:
                    numbers = [
                        data_key.open_number(u.number_ct, u.wrapped_key, u.user_id, u.token)
                        for u in todo
                    ]
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
                                key_id=kid,
                                number_ct=sealed.number_ct,
                                wrapped_key=sealed.wrapped_key,
                            )
                        )
                    del numbers  # clear text lives no longer than its batch
                    done = store.rekey_users(updates, now=_clock())
                    rekeyed += done
                    skipped += len(todo) - done
                    touched += len(todo)
                after = page[-1].user_id
                store.set_checkpoint(checkpoint, after)
                if task is not None:
                    bar.advance(task, len(page))
            store.set_checkpoint(checkpoint, None)
            if touched == 0:
                break
    purged = store.purge_contacts(kid) if purge_contacts else 0
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
