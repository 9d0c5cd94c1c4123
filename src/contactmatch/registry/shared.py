"""One token function's live registry: the table, its filter publishers, and how hits are confirmed.

Every membership method of a token function reads the same :class:`TokenRegistry`, so the two
default schemes (``oprf+filter`` and ``oprf+bucket``) keep one copy of the registry, not two.
Lookups screen by hash in the table and confirm the few candidates elsewhere: against the
store in a server (the store returns the full token and the user id in one batched read), or
against an in-memory map in the standalone research harness, which is small by design.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from contactmatch.errors import InvalidInput
from contactmatch.registry.publisher import FilterPublisher
from contactmatch.registry.table import HashDelta, RegistryTable

if TYPE_CHECKING:
    from contactmatch.registry.pir import PirPublisher

__all__ = ["Confirm", "TokenRegistry"]

#: Maps candidate tokens to the user id registered (and discoverable) under each, or None.
Confirm = Callable[[Sequence[bytes]], list[str | None]]


class TokenRegistry:
    """A :class:`RegistryTable` with its membership version and filter publishers.

    Args:
        table: the rows.
        version: the membership version the rows reflect (a store feed sequence number in a
            server; a local counter in the standalone harness).
        confirm: how lookup candidates are confirmed; None keeps an exact in-memory map of
            tokens to user ids (standalone use only: one Python object per user).
    """

    def __init__(
        self, table: RegistryTable, *, version: int = 0, confirm: Confirm | None = None
    ) -> None:
        self.table = table
        self.version = int(version)
        self._confirm = confirm
        self._by_token: dict[bytes, str] | None = None if confirm is not None else {}
        self._by_user: dict[str, bytes] | None = None if confirm is not None else {}
        self._publishers: dict[float, FilterPublisher] = {}
        self._pir: PirPublisher | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"<TokenRegistry key_id={self.table.key_id} users={len(self.table)} v={self.version}>"
        )

    def __len__(self) -> int:
        return len(self.table)

    @property
    def key_id(self) -> str:
        return self.table.key_id

    def publisher(self, fpr: float) -> FilterPublisher:
        """The filter publisher at ``fpr`` (made on first use, at the current version)."""
        with self._lock:
            pub = self._publishers.get(fpr)
            if pub is None:
                pub = FilterPublisher(self.table, fpr=fpr)
                self._publishers[fpr] = pub
            return pub

    def pir(self) -> PirPublisher:
        """The registry laid out for PIR (built on first use; the ``pir`` method only)."""
        with self._lock:
            if self._pir is None:
                from contactmatch.registry.pir import PirPublisher  # numpy work, on demand

                self._pir = PirPublisher(self.table)
            return self._pir

    def apply(
        self,
        upserts: Sequence[tuple[str, bytes]],
        removals: Sequence[str],
        version: int | None = None,
        *,
        settle: bool = False,
    ) -> HashDelta:
        """Change rows; a non-empty change moves the version to ``version`` (or one up).

        With ``settle`` the version moves to ``version`` even if nothing changed: after a
        rebuild, rows read while the store was changing are only known to be those of the
        feed position ``version`` once the changes after the scan are applied.
        """
        with self._lock:
            delta = self.table.apply(upserts, removals)
            if self._by_token is not None and self._by_user is not None:
                by_token, by_user = self._by_token, self._by_user
                for uid in [*removals, *(u for u, _ in upserts)]:
                    old = by_user.pop(uid, None)
                    if old is not None:
                        by_token.pop(old, None)
                for uid, tok in upserts:
                    prev = by_token.get(tok)
                    if prev is not None:
                        by_user.pop(prev, None)
                    by_token[tok] = uid
                    by_user[uid] = tok
            if settle and version is not None:
                self.version = int(version)
            elif delta:
                self.version = self.version + 1 if version is None else int(version)
            for pub in self._publishers.values():
                pub.advance(delta)
            if self._pir is not None:
                self._pir.advance(delta)
            return delta

    def replace(
        self, table: RegistryTable, version: int, pairs: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Swap in a table rebuilt at ``version`` (clients re-download the filter).

        ``pairs`` are its ``(user id, token)`` rows, for a registry that confirms in memory.
        """
        with self._lock:
            self.table = table
            self.version = int(version)
            if self._by_token is not None and self._by_user is not None:
                self._by_token = {t: u for u, t in pairs}
                self._by_user = dict(pairs)
            old = self._publishers
            self._publishers = {}
            for fpr in old:
                self.publisher(fpr)
            if self._pir is not None:
                self._pir = None
                self.pir()

    def rebase(self, table: RegistryTable) -> None:
        """Swap in a table with the same rows (a snapshot just written and mapped back), so
        the rows live in shared mapped pages; published filters stay valid."""
        with self._lock:
            if len(table) != len(self.table):
                raise InvalidInput("a rebase must keep the same rows")
            self.table = table
            for pub in self._publishers.values():
                pub.rebase(table)
            if self._pir is not None:
                self._pir.rebase(table)

    def confirm(self, tokens: Sequence[bytes]) -> list[str | None]:
        """The user id registered under each candidate token, or None (compared in full)."""
        if self._confirm is not None:
            return self._confirm(tokens)
        assert self._by_token is not None
        out: list[str | None] = []
        for t in tokens:
            uid = self._by_token.get(t)
            # The dict probe matched equal bytes already; the constant-time compare keeps
            # this path identical in kind to the store's.
            held = self._by_user.get(uid) if uid is not None and self._by_user else None
            out.append(uid if held is not None and hmac.compare_digest(held, t) else None)
        return out
