"""What a store does, by role: each component depends on the role it uses and no more.

A store keeps five kinds of state, each a protocol here; :class:`RegistryStore` is their union,
which every adapter implements through :class:`~contactmatch.stores.base.BaseStore`:

- :class:`UserStore`: registrations (token, encrypted number, wrapped key, setting). Used by
  the service, the registry follower, key rotation and bulk import.
- :class:`ContactStore`: opt-in contact uploads, tokens only. Used by the service and rotation.
- :class:`QuotaStore`: leaky buckets and seen sets, keyed by rate subject. The rate limiter
  depends on this role alone.
- :class:`StatsStore`: aggregate counters and named checkpoints. Used by the service,
  rotation and bulk import.
- :class:`FeedStore`: the change feed, the store's identity and its key census. Used by the
  registry follower (which tags its snapshots with the identity) and by the key checks of
  the service and the bulk importer.

Protocols, not base classes: a test double or a metering wrapper of one role (say, a
``QuotaStore`` that counts takes) type-checks without implementing the other four, and mypy
proves in ``contactmatch.stores`` that every adapter class is a full :class:`RegistryStore`.
Signatures and semantics are documented on :class:`~contactmatch.stores.base.BaseStore`, the
template every adapter shares; ``docs/storage.md`` (The protocol) has the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from contactmatch.stores.records import (
    Discoverability,
    FeedPage,
    Holder,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
)

__all__ = ["ContactStore", "FeedStore", "QuotaStore", "RegistryStore", "StatsStore", "UserStore"]


class UserStore(Protocol):
    """Registrations: the users, their tokens, encrypted numbers and settings."""

    def put_users(self, users: Sequence[UserRecord], *, mark: str | None = None) -> None:
        """Insert or replace registrations (upsert by user id)."""

    def get_users(self, user_ids: Sequence[str]) -> list[UserRecord | None]:
        """Registrations aligned with ``user_ids`` (None where unknown)."""

    def lookup_tokens(self, tokens: Sequence[bytes]) -> list[UserRecord | None]:
        """Registrations aligned with ``tokens`` (None where no user has the token)."""

    def confirm_tokens(self, tokens: Sequence[bytes]) -> list[Holder | None]:
        """Who holds each token, without the number (the discovery hot path)."""

    def set_discoverability(self, changes: Mapping[str, Discoverability], now: float) -> None:
        """Change users' discoverability; all or nothing."""

    def rekey_users(self, updates: Sequence[Rekey], now: float) -> int:
        """Replace tokens where they still match ``old_token``; returns how many changed."""

    def scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        """Up to ``limit`` registrations with user id > ``after``, in user id order."""

    def count_users(self) -> int:
        """Number of registrations."""

    def delete_account(self, user_id: str) -> None:
        """Erase a user: registration, number, wrapped user key, uploads (not rate state)."""


class ContactStore(Protocol):
    """Opt-in contact uploads (tokens only), for contacts-only discoverability."""

    def replace_contacts(self, owner_id: str, tokens: Sequence[bytes], key_id: str) -> None:
        """Replace the contact tokens ``owner_id`` uploaded (opt-in) with ``tokens``."""

    def contact_owners(self, tokens: Sequence[bytes]) -> list[list[str]]:
        """Owners holding each token in their uploads, aligned, each list sorted."""

    def purge_contacts(self, keep_key_id: str) -> int:
        """Drop uploads made under any other key id; returns how many tokens were dropped."""


class QuotaStore(Protocol):
    """Rate state: leaky buckets and seen sets, keyed by subject; all the rate limiter needs.

    Subjects are not user ids (``n:<hash>``, ``g:all``): this state outlives accounts on purpose
    and expires on its own (:meth:`expire_rate_state`).
    """

    def take(
        self,
        subject: str,
        quota: str,
        cost: float,
        *,
        capacity: float,
        refill_per_s: float,
        now: float,
    ) -> TakeResult:
        """Atomically add ``cost`` to a leaky bucket that drains at ``refill_per_s``."""

    def count_unseen(
        self, subject: str, fingerprints: Sequence[bytes], *, now: float, ttl: float
    ) -> int:
        """How many distinct fingerprints are absent, or were last added ``ttl`` s ago or more."""

    def add_seen(self, subject: str, fingerprints: Sequence[bytes], *, now: float) -> int:
        """Add fingerprints (or refresh their time) in ``subject``'s seen set; how many were new."""

    def reset_seen(self, subject: str) -> None:
        """Forget ``subject``'s seen set (a new quota window)."""

    def expire_rate_state(self, now: float, seen_ttl: float) -> int:
        """Drop drained buckets and seen entries older than ``seen_ttl``; how many went."""


class StatsStore(Protocol):
    """Aggregate counters and named checkpoints (rotations, imports)."""

    def incr_stats(self, deltas: Mapping[str, int]) -> None:
        """Add to aggregate counters (names only, never identifiers)."""

    def get_stats(self) -> dict[str, int]:
        """All aggregate counters."""

    def get_checkpoint(self, name: str) -> str | None:
        """A named checkpoint (e.g. how far a key rotation got)."""

    def set_checkpoint(self, name: str, value: str | None) -> None:
        """Set or (None) clear a named checkpoint."""


class FeedStore(Protocol):
    """The change feed, the store's identity and its key census: what followers check against."""

    def feed_head(self) -> int:
        """The highest change-feed sequence number assigned so far (0 if none)."""

    def changes(self, after: int, limit: int) -> FeedPage:
        """Change-feed entries after sequence ``after``, ascending, at most ``limit``."""

    def compact_feed(
        self, *, before_seq: int | None = None, older_than: float | None = None
    ) -> int:
        """Drop old change-feed entries; returns how many went."""

    def store_id(self) -> str:
        """The store's stable random identity, created with its schema."""

    def key_census(self) -> KeyCensus:
        """Users per OPRF key id and per data-key id, without scanning the users."""


@runtime_checkable
class RegistryStore(UserStore, ContactStore, QuotaStore, StatsStore, FeedStore, Protocol):
    """Everything the discovery service keeps, in batch methods; see ``docs/storage.md``.

    The union of the role protocols, plus ``close``: code that needs one role (the rate
    limiter: quotas) depends on that role only. Runtime-checkable for callers who test a
    store they were handed; that checks only that the methods exist, so the library's own
    guarantee is static (mypy, in :mod:`contactmatch.stores`).
    """

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
