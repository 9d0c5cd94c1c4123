"""Keeping every token function's registry equal to the store, by the store's change feed.

Start-up maps the newest valid snapshot (tagged with the feed sequence it reflects) and
applies the feed from there; without a usable snapshot it scans the store once. After that,
:meth:`RegistryFollower.refresh` reads only the feed entries since its position, so its cost
grows with the number of changes, not with the registry. Local writes go through the same
path (the service refreshes after each of its own writes), so there is one way the registry
changes and every process reaches the same content at the same feed position.

Consistency. Feed entries carry user ids only; the follower reads the current rows of those
users. A row read after a later change committed would be newer than the position it is
labelled with, so after reading rows the follower asks the feed again and re-reads the rows of
any user changed meanwhile, until no entry arrived between its last read of rows and its last
read of the feed: the rows then reflect exactly the store at the position it records. That
position becomes the membership version (and so the published filter's version) whenever the
membership changed.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from contactmatch.errors import StoreError
from contactmatch.registry.shared import TokenRegistry
from contactmatch.registry.snapshot import SnapshotError, newest, persist, prune
from contactmatch.registry.table import RegistryTable
from contactmatch.schemes.base import TokenName
from contactmatch.schemes.tokens import ServerTokens
from contactmatch.stores.base import Discoverability, RegistryStore, UserRecord

__all__ = ["RegistryFollower"]

logger = logging.getLogger("contactmatch.registry")

_PAGE = 10_000
_SCAN = 10_000
#: Rounds of "did anything change while I read rows?" before a refresh gives up for now.
_SETTLE_ROUNDS = 64

#: Numbers of the given records (decrypted), for token functions the store does not hold.
NumbersOf = Callable[[Sequence[UserRecord]], list[str]]


class RegistryFollower:
    """The registries of one server process and their position in the store's feed.

    Args:
        store: the shared store (its feed, rows and identity).
        canonical: name of the token function whose tokens the store holds (``oprf``).
        token_fns: every served token function by name (``canonical`` included).
        key_id: the current key id: only users registered under it are discoverable.
        numbers_of: decrypts numbers, for research token functions computed from them.
        snapshot_dir: where snapshots of the canonical registry are read and written (None:
            start from the store every time).
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        canonical: TokenName,
        token_fns: Mapping[TokenName, ServerTokens],
        key_id: str,
        numbers_of: NumbersOf,
        snapshot_dir: str | Path | None = None,
    ) -> None:
        self.store = store
        self.canonical = canonical
        self.key_id = key_id
        self._token_fns = dict(token_fns)
        self._numbers_of = numbers_of
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self._lock = threading.RLock()
        #: The feed position every registry reflects.
        self.seq = 0
        self.registries: dict[TokenName, TokenRegistry] = {
            name: TokenRegistry(
                RegistryTable.empty(key_id=fn.key_id),
                confirm=self._confirm if name == canonical else None,
            )
            for name, fn in self._token_fns.items()
        }
        self._store_id: str | None = None

    def __repr__(self) -> str:
        return f"<RegistryFollower seq={self.seq} registries={list(self.registries)}>"

    @property
    def store_id(self) -> str:
        if self._store_id is None:
            self._store_id = self.store.store_id()
        return self._store_id

    @property
    def snapshot_name(self) -> str:
        return f"{self.canonical}-{self.key_id}"

    # -- confirmation -----------------------------------------------------------------------
    def _confirm(self, tokens: Sequence[bytes]) -> list[str | None]:
        """Canonical hits, confirmed by the store: the full token, discoverable, current key."""
        out: list[str | None] = []
        for tok, rec in zip(tokens, self.store.confirm_tokens(list(tokens)), strict=True):
            ok = (
                rec is not None
                and rec.discoverability is Discoverability.EVERYONE
                and rec.key_id == self.key_id
                and hmac.compare_digest(rec.token, tok)
            )
            out.append(rec.user_id if ok and rec is not None else None)
        return out

    # -- start-up ---------------------------------------------------------------------------
    def start(self) -> str:
        """Load the newest valid snapshot and catch up, or rebuild from the store.

        Only the canonical registry is snapshotted; a process that also serves research
        token functions (computed from decrypted numbers) rebuilds from the store.

        Returns:
            ``"snapshot"`` or ``"store"``: where the registries came from.
        """
        with self._lock:
            snap = self._newest_snapshot() if len(self.registries) == 1 else None
            if snap is None:
                self._rebuild()
                if self.snapshot_dir is not None and len(self.registries) == 1:
                    # Write it at once: the next process starts from it, and this one serves
                    # from the mapped file instead of a private copy.
                    self.save_snapshot()
                return "store"
            table, seq = snap
            # Changes stay in the overlay until the next snapshot is written and mapped:
            # compacting in memory would copy the shared rows into this process.
            table.compact_at = None
            self.registries[self.canonical].replace(table, seq)
            self.seq = seq
            self.refresh()
            return "snapshot"

    def _newest_snapshot(self) -> tuple[RegistryTable, int] | None:
        if self.snapshot_dir is None or not self.snapshot_dir.is_dir():
            return None

        def rejected(path: Path, exc: SnapshotError) -> None:
            logger.warning("ignoring snapshot %s: %s", path.name, exc)

        try:
            snap = newest(
                self.snapshot_dir,
                name=self.snapshot_name,
                key_id=self.key_id,
                store_id=self.store_id,
                on_reject=rejected,
            )
        except SnapshotError as exc:
            logger.warning("no snapshot used: %s", exc)
            return None
        if snap is None:
            return None
        if snap.seq > self.store.feed_head() or not self.store.changes(snap.seq, 1).complete:
            # From the future of this store (restored from a backup?) or older than what
            # the feed still holds: it cannot be caught up.
            logger.warning("snapshot %s does not match the change feed; rebuilding", snap.path.name)
            return None
        return snap.table, snap.seq

    def _rebuild(self) -> None:
        """Scan the store once and rebuild every registry.

        The feed head is read before the scan; the changes committed during the scan are
        then read back and applied, so the tables end at a settled feed position.
        """
        head = self.store.feed_head()
        recs: list[UserRecord] = []
        after: str | None = None
        current = self.key_id
        while True:
            batch = self.store.scan_users(after, _SCAN)
            if not batch:
                break
            after = batch[-1].user_id
            recs.extend(
                r
                for r in batch
                if r.discoverability is Discoverability.EVERYONE and r.key_id == current
            )
        uids = [r.user_id for r in recs]
        for name, reg in self.registries.items():
            tokens = self.tokens_of(name, recs)
            table = RegistryTable.build(uids, tokens, key_id=self._token_fns[name].key_id)
            reg.replace(table, head, list(zip(uids, tokens, strict=True)))
        del recs, uids
        self.seq = head
        settled = self._settled(head)
        if settled is None:  # compacted during the scan: an absurdly short retention
            raise StoreError("the change feed was compacted during a rebuild; retry")
        rows, end = settled
        self._apply(rows, end, settle=True)

    def tokens_of(self, name: TokenName, recs: Sequence[UserRecord]) -> list[bytes]:
        """Tokens of ``recs`` under token function ``name``: stored for the canonical one,
        computed from the decrypted numbers for the others."""
        if name == self.canonical:
            return [r.token for r in recs]
        if not recs:
            return []
        return self._token_fns[name].tokens(self._numbers_of(recs))

    # -- following --------------------------------------------------------------------------
    def refresh(self) -> tuple[int, int]:
        """Apply the feed since the last position; returns (users upserted, users removed).

        Falls back to a rebuild from the store when the feed was compacted past the position
        (a process that slept longer than the feed's retention).
        """
        with self._lock:
            settled = self._settled(self.seq)
            if settled is None:
                logger.warning("change feed compacted past position %d; rebuilding", self.seq)
                self._rebuild()
                return 0, 0
            rows, end = settled
            if end == self.seq:
                return 0, 0
            upserted, removed = self._apply(rows, end)
            if upserted or removed:
                logger.info(
                    "registry refresh: %d users upserted, %d removed (feed at %d)",
                    upserted,
                    removed,
                    end,
                )
            return upserted, removed

    def wrote(self, records: Sequence[UserRecord], before: int) -> None:
        """Take in this process's own write of ``records`` without reading them back.

        ``before`` is the feed head read just before the write. When the feed moved by
        exactly one entry per record and this process was caught up to ``before``, the
        entries in between are all this write's and the records are the rows they name: they
        are applied directly (a 50,000-user import skips reading 50,000 rows back). Anything
        else (another writer in between, a gap in the sequence) takes the general path.
        """
        with self._lock:
            head = self.store.feed_head()
            if self.seq == before and head - before == len(records):
                self._apply({r.user_id: r for r in records}, head)
            else:
                self.refresh()

    def _settled(self, after: int) -> tuple[dict[str, UserRecord | None], int] | None:
        """Rows of every user changed after ``after``, all as of one feed position.

        Returns:
            ``(rows, position)``, or None if the feed no longer reaches back to ``after``.
            If the rows did not settle (writers kept changing them), the position is
            ``after`` and no rows: the next call tries again.
        """
        entries: list[tuple[int, str]] = []
        cursor = after
        while True:
            page = self.store.changes(cursor, _PAGE)
            if not page.complete:
                return None
            entries.extend(page.entries)
            if len(page.entries) < _PAGE:
                break
            cursor = page.entries[-1][0]
        if not entries:
            return {}, after
        end = entries[-1][0]
        rows = self._read(dict.fromkeys(u for _, u in entries))
        for _ in range(_SETTLE_ROUNDS):
            page = self.store.changes(end, _PAGE)
            if not page.complete:
                return None
            if not page.entries:
                return rows, end
            end = page.entries[-1][0]
            rows.update(self._read(dict.fromkeys(u for _, u in page.entries)))
        # Writers kept changing these users faster than we could read them: rather than
        # label rows with a position they are not at, try again at the next refresh.
        logger.warning("registry refresh did not settle; retrying later")
        return {}, after

    def _read(self, uids: Mapping[str, None]) -> dict[str, UserRecord | None]:
        ids = list(uids)
        out: dict[str, UserRecord | None] = {}
        for i in range(0, len(ids), _PAGE):
            chunk = ids[i : i + _PAGE]
            out.update(zip(chunk, self.store.get_users(chunk), strict=True))
        return out

    def _apply(
        self, rows: Mapping[str, UserRecord | None], end: int, *, settle: bool = False
    ) -> tuple[int, int]:
        live = [
            r
            for r in rows.values()
            if r is not None
            and r.discoverability is Discoverability.EVERYONE
            and r.key_id == self.key_id
        ]
        live_ids = {r.user_id for r in live}
        gone = [u for u in rows if u not in live_ids]
        for name, reg in self.registries.items():
            tokens = self.tokens_of(name, live)
            upserts = [(r.user_id, t) for r, t in zip(live, tokens, strict=True)]
            reg.apply(upserts, gone, end, settle=settle)
        self.seq = end
        return len(live), len(gone)

    # -- snapshots --------------------------------------------------------------------------
    def save_snapshot(self, *, keep: int = 2) -> Path | None:
        """Write the canonical registry to the snapshot directory at its membership version
        (and prune older snapshots); None without a directory."""
        if self.snapshot_dir is None:
            return None
        with self._lock:
            reg = self.registries[self.canonical]
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            snap = persist(
                self.snapshot_dir,
                reg.table,
                name=self.snapshot_name,
                seq=reg.version,
                store_id=self.store_id,
            )
            # Serve from the file just written: its pages are shared with every process
            # that maps it, and the overlay of changes starts empty again.
            snap.table.compact_at = None
            reg.rebase(snap.table)
        prune(self.snapshot_dir, name=self.snapshot_name, keep=keep)
        return snap.path
