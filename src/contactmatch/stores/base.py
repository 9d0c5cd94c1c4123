"""The template every adapter shares: :class:`BaseStore`, an ABC of validated public methods.

Every adapter subclasses :class:`BaseStore`: the public methods here validate input, skip empty
batches and map driver exceptions to :mod:`contactmatch.errors`; the adapter implements only the
private ``_method`` that does the driver work, on input that is already clean.

Two kinds of state live in a store. *Account state* (registration, encrypted number, wrapped
per-user key, uploaded contacts) is keyed by user id and erased by ``delete_account``. *Rate
state* (leaky buckets, seen sets) is keyed by a rate *subject* such as ``n:<keyed hash of the
number>`` or ``g:eval``, outlives the account on purpose (a number that re-registers inherits
its quotas) and expires on its own: a bucket once it has drained, a seen entry ``ttl`` seconds
after it was last added (``expire_rate_state``).

Every change of a registration also appends to the store's *change feed* in the same
transaction (or atomic step): one entry ``(seq, user_id, at)`` per affected user, numbered in
commit order, never holding a token, number or ciphertext. Server processes follow it with
:meth:`BaseStore.changes` and re-read the named users with ``get_users`` (a missing row means
the user is gone); ``docs/storage.md`` (The change feed) states what each adapter guarantees.

Around the template: :mod:`~contactmatch.stores.roles` (the role protocols),
:mod:`~contactmatch.stores.records` (records and input rules), :mod:`~contactmatch.stores.leaky`
(the bucket rule), :mod:`~contactmatch.stores.census` (key-census helpers) and
:mod:`~contactmatch.stores.sqlrows` (the SQL row layout). Their names are re-exported here, so
imports written before the split keep working.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Self

from contactmatch.errors import ContactMatchError, InvalidInput, StoreError, UnknownUser

# Everything this module defined before the split, re-exported so that existing imports
# (``from contactmatch.stores.base import check_int, leak, RegistryStore``) keep working.
from contactmatch.stores.census import (
    CENSUS_DATA,
    CENSUS_OPRF,
    census_deltas,
    census_from,
    wrapped_key_id,
)
from contactmatch.stores.leaky import drain_time, leak, take_decision
from contactmatch.stores.records import (
    FEED_PAGE_MAX,
    FP_MAX,
    FP_MIN,
    MAX_CIPHERTEXT,
    MAX_WRAPPED_KEY,
    TOKEN_MAX,
    TOKEN_MIN,
    Discoverability,
    FeedPage,
    Holder,
    KeyCensus,
    Rekey,
    TakeResult,
    UserRecord,
    check_bytes,
    check_discoverability,
    check_fingerprints,
    check_int,
    check_key_id,
    check_name,
    check_record,
    check_sequence,
    check_subject,
    check_time,
    check_token,
    check_user_id,
    no_duplicates,
)
from contactmatch.stores.roles import (
    ContactStore,
    FeedStore,
    QuotaStore,
    RegistryStore,
    StatsStore,
    UserStore,
)
from contactmatch.stores.sqlrows import DISC_CODES, DISC_NAMES, record_from_row, user_row

__all__ = [
    "CENSUS_DATA",
    "CENSUS_OPRF",
    "DISC_CODES",
    "DISC_NAMES",
    "FEED_PAGE_MAX",
    "FP_MAX",
    "FP_MIN",
    "MAX_CIPHERTEXT",
    "MAX_WRAPPED_KEY",
    "TOKEN_MAX",
    "TOKEN_MIN",
    "BaseStore",
    "ContactStore",
    "Discoverability",
    "FeedPage",
    "FeedStore",
    "Holder",
    "KeyCensus",
    "QuotaStore",
    "RegistryStore",
    "Rekey",
    "StatsStore",
    "TakeResult",
    "UserRecord",
    "UserStore",
    "census_deltas",
    "census_from",
    "check_bytes",
    "check_discoverability",
    "check_fingerprints",
    "check_int",
    "check_key_id",
    "check_name",
    "check_record",
    "check_sequence",
    "check_subject",
    "check_time",
    "check_token",
    "check_user_id",
    "drain_time",
    "leak",
    "no_duplicates",
    "record_from_row",
    "take_decision",
    "user_row",
    "wrapped_key_id",
]

_SEQ_MAX = 2**63 - 1  # a signed 64-bit column holds every sequence number


class BaseStore(abc.ABC):
    """Public methods validate and map errors; subclasses implement the abstract ``_methods``.

    The template-method split keeps every rule in one place: input checks, empty-batch
    shortcuts and error mapping are written once here and hold for every adapter, and an
    adapter is only driver work on clean input. Every concrete subclass is a
    :class:`~contactmatch.stores.roles.RegistryStore`: all the roles at once.
    """

    #: Scheme names this adapter is registered under (for messages only).
    name = "base"
    #: Stamps change-feed entries (their ``at``, whole seconds); a private hook for tests.
    _clock: Callable[[], float] = staticmethod(time.time)

    def _feed_time(self) -> int:
        """The ``at`` of feed entries written now: whole seconds of :attr:`_clock`."""
        return int(self._clock())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _mapped(self, op: str) -> Iterator[None]:
        """Let library errors through; turn anything the driver raises into a StoreError."""
        try:
            yield
        except ContactMatchError:
            raise
        except Exception as exc:
            err = self._translate(exc, op)
            if self._may_chain(exc):
                raise err from exc
            raise err from None

    def _translate(self, exc: Exception, op: str) -> StoreError:
        """The most specific library error for a driver exception; adapters refine this."""
        return StoreError(f"{self.name}: {op} failed ({type(exc).__name__})")

    def _may_chain(self, exc: Exception) -> bool:  # noqa: ARG002 - adapters look at exc
        """Whether ``exc`` may ride along as ``__cause__`` (False if it quotes stored values)."""
        return True

    # users --------------------------------------------------------------------------------

    def put_users(self, users: Sequence[UserRecord], *, mark: str | None = None) -> None:
        """Insert or replace registrations (upsert by user id), all or nothing.

        Redis applies batches over 1,000 records one atomic chunk at a time (a longer script
        would block every other client).

        Args:
            users: records; user ids and tokens must be unique within the batch.
            mark: a checkpoint name set to ``"done"`` with the writes, so a bulk import
                records a partition's completion exactly when its rows land. SQLite and
                PostgreSQL commit both in one transaction. Redis (no transaction spans
                cluster slots) sets it after the writes: a crash in between leaves the
                partition unmarked, and its re-run rewrites the same users (an upsert).

        Raises:
            InvalidInput: a malformed record or a duplicate in the batch.
            Conflict: a token already belongs to another user.
        """
        recs = [check_record(r) for r in check_sequence(users, "users")]
        name = None if mark is None else check_name(mark, "checkpoint")
        if len({r.user_id for r in recs}) != len(recs):
            raise InvalidInput("duplicate user id in one batch")
        if len({r.token for r in recs}) != len(recs):
            raise InvalidInput("duplicate token in one batch")
        with self._mapped("put_users"):
            if recs:
                self._put_users(recs, name)
            elif name is not None:
                self._set_checkpoint(name, "done")

    def get_users(self, user_ids: Sequence[str]) -> list[UserRecord | None]:
        """Registrations aligned with ``user_ids``.

        Returns:
            One entry per id: the record, or None if no such user.
        """
        ids = [check_user_id(u) for u in check_sequence(user_ids, "user ids")]
        if not ids:
            return []
        with self._mapped("get_users"):
            return self._get_users(ids)

    def lookup_tokens(self, tokens: Sequence[bytes]) -> list[UserRecord | None]:
        """Registrations aligned with ``tokens`` (the service applies discoverability).

        Returns:
            One entry per token: the registered user's record, or None.
        """
        toks = [check_token(t) for t in check_sequence(tokens, "tokens")]
        if not toks:
            return []
        with self._mapped("lookup_tokens"):
            return self._lookup_tokens(toks)

    def confirm_tokens(self, tokens: Sequence[bytes]) -> list[Holder | None]:
        """Who holds each token (user id, key id, setting), aligned with ``tokens``.

        :meth:`lookup_tokens` without the number's ciphertext and wrapped key: discovery
        confirms every filter hit here, so SQL adapters read one narrow row per token.
        """
        toks = [check_token(t) for t in check_sequence(tokens, "tokens")]
        if not toks:
            return []
        with self._mapped("confirm_tokens"):
            return self._confirm_tokens(toks)

    def set_discoverability(self, changes: Mapping[str, Discoverability], now: float) -> None:
        """Change discoverability for several users; all or nothing.

        Raises:
            UnknownUser: one of the users is not registered (nothing is changed).
        """
        if not isinstance(changes, Mapping):
            raise InvalidInput("changes must be a mapping of user id to discoverability")
        clean = {check_user_id(k): check_discoverability(v) for k, v in changes.items()}
        t = check_time(now, "now")
        if clean:
            with self._mapped("set_discoverability"):
                self._set_discoverability(clean, t)

    def rekey_users(self, updates: Sequence[Rekey], now: float) -> int:
        """Replace tokens (key rotation) where the stored token still equals ``old_token``.

        Returns:
            How many users changed; users deleted or re-registered meanwhile are skipped.

        Raises:
            Conflict: a new token already belongs to another user.
        """
        clean: list[Rekey] = []
        for u in check_sequence(updates, "updates"):
            if not isinstance(u, Rekey):
                raise InvalidInput(f"expected Rekey, not {type(u).__name__}")
            ct, wk = u.number_ct, u.wrapped_key
            if (ct is None) != (wk is None):
                raise InvalidInput("a rekey replaces the encrypted number and wrapped key together")
            clean.append(
                Rekey(
                    user_id=check_user_id(u.user_id),
                    old_token=check_token(u.old_token),
                    new_token=check_token(u.new_token),
                    key_id=check_key_id(u.key_id),
                    number_ct=None
                    if ct is None
                    else check_bytes(ct, "encrypted number", 1, MAX_CIPHERTEXT),
                    wrapped_key=None
                    if wk is None
                    else check_bytes(wk, "wrapped key", 1, MAX_WRAPPED_KEY),
                )
            )
        no_duplicates([u.user_id for u in clean], "user id")
        no_duplicates([u.new_token for u in clean], "token")
        t = check_time(now, "now")
        if not clean:
            return 0
        with self._mapped("rekey_users"):
            return self._rekey_users(clean, t)

    def scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        """Page through registrations in user id order (key rotation, exports).

        Args:
            after: the last user id of the previous page, or None to start.
            limit: page size, 1..100000.
        """
        a = None if after is None else check_user_id(after)
        n = check_int(limit, "limit", 1, 100_000)
        with self._mapped("scan_users"):
            return self._scan_users(a, n)

    def count_users(self) -> int:
        """Number of registrations."""
        with self._mapped("count_users"):
            return self._count_users()

    def delete_account(self, user_id: str) -> None:
        """Erase a user in one transaction; see ``docs/storage.md`` (Erasure).

        Removes the registration, the encrypted number, the wrapped per-user key (after which
        any leftover copy of the ciphertext is undecryptable) and the uploaded contact tokens.
        Rate state is not account state: it is keyed by subject, survives the account so that
        a re-registered number inherits its quotas, and expires on its own.

        Raises:
            UnknownUser: no such user.
        """
        uid = check_user_id(user_id)
        with self._mapped("delete_account"):
            if not self._delete_account(uid):
                raise UnknownUser(f"no registered user {uid!r}")

    # contacts -----------------------------------------------------------------------------

    def replace_contacts(self, owner_id: str, tokens: Sequence[bytes], key_id: str) -> None:
        """Replace everything ``owner_id`` uploaded with ``tokens`` (empty: withdraw opt-in).

        Raises:
            UnknownUser: the owner is not registered.
        """
        owner = check_user_id(owner_id)
        toks = list(dict.fromkeys(check_token(t) for t in check_sequence(tokens, "tokens")))
        kid = check_key_id(key_id)
        with self._mapped("replace_contacts"):
            if not self._replace_contacts(owner, toks, kid):
                raise UnknownUser(f"no registered user {owner!r}")

    def contact_owners(self, tokens: Sequence[bytes]) -> list[list[str]]:
        """Which owners uploaded each token ("your contact joined"), aligned with ``tokens``."""
        toks = [check_token(t) for t in check_sequence(tokens, "tokens")]
        if not toks:
            return []
        with self._mapped("contact_owners"):
            return [sorted(o) for o in self._contact_owners(toks)]

    def purge_contacts(self, keep_key_id: str) -> int:
        """Drop uploaded tokens made under any key id other than ``keep_key_id``.

        Returns:
            How many uploaded tokens were dropped.
        """
        kid = check_key_id(keep_key_id)
        with self._mapped("purge_contacts"):
            return self._purge_contacts(kid)

    # rate limits --------------------------------------------------------------------------

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
        """Atomically add ``cost`` to ``subject``'s bucket for ``quota`` if it fits.

        The bucket drains at ``refill_per_s``; a take that would overflow ``capacity`` changes
        nothing and reports how long until it would fit (``inf`` if it never can). A bucket
        that has drained is indistinguishable from one never used, so stores drop it then
        (Redis by a key expiry set here, the others in :meth:`expire_rate_state`).

        Args:
            subject: a rate subject (:func:`check_subject`), not necessarily a user id.

        Returns:
            :class:`TakeResult` (allowed, retry_after seconds).
        """
        subj = check_subject(subject)
        q = check_name(quota, "quota")
        c = check_time(cost, "cost")
        cap = check_time(capacity, "capacity")
        r = check_time(refill_per_s, "refill_per_s")
        if cap <= 0 or r <= 0:
            raise InvalidInput("capacity and refill_per_s must be > 0")
        t = check_time(now, "now")
        with self._mapped("take"):
            return self._take(subj, q, c, capacity=cap, refill=r, now=t)

    def count_unseen(
        self, subject: str, fingerprints: Sequence[bytes], *, now: float, ttl: float
    ) -> int:
        """Count fingerprints new to ``subject`` without remembering them.

        Lets a rate limiter charge first and remember only after the charge succeeded. An
        entry last added ``ttl`` seconds or more before ``now`` has expired and counts as new,
        whether or not :meth:`expire_rate_state` has removed it yet.

        Returns:
            How many distinct fingerprints are absent from the seen set or expired.
        """
        subj = check_subject(subject)
        fps = check_fingerprints(fingerprints)
        t = check_time(now, "now")
        life = check_time(ttl, "ttl")
        if not fps:
            return 0
        with self._mapped("count_unseen"):
            return self._count_unseen(subj, fps, t - life)

    def add_seen(self, subject: str, fingerprints: Sequence[bytes], *, now: float) -> int:
        """Add fingerprints to ``subject``'s seen set, stamped ``now`` (re-adding refreshes).

        Returns:
            How many of them were not in the set before (duplicates in the batch count once;
            an expired entry not yet removed by :meth:`expire_rate_state` counts as present).
        """
        subj = check_subject(subject)
        fps = check_fingerprints(fingerprints)
        t = check_time(now, "now")
        if not fps:
            return 0
        with self._mapped("add_seen"):
            return self._add_seen(subj, fps, t)

    def reset_seen(self, subject: str) -> None:
        """Forget ``subject``'s seen set."""
        subj = check_subject(subject)
        with self._mapped("reset_seen"):
            self._reset_seen(subj)

    def expire_rate_state(self, now: float, seen_ttl: float) -> int:
        """Remove rate state that no longer affects any decision; run it periodically.

        Drops buckets that have fully drained by ``now`` and seen entries last added
        ``seen_ttl`` seconds or more before ``now``. Neither changes what :meth:`take` or
        :meth:`count_unseen` answer; it bounds how long a number-keyed subject (the one value
        derived from a deleted user that a store keeps) stays stored. Redis drops drained
        buckets by itself (key expiry), so there only seen entries are counted.

        Returns:
            How many rows, keys or entries were removed.
        """
        t = check_time(now, "now")
        life = check_time(seen_ttl, "seen_ttl")
        with self._mapped("expire_rate_state"):
            return self._expire_rate_state(t, t - life)

    # maintenance --------------------------------------------------------------------------

    def vacuum(self, *, keys_only: bool = False) -> dict[str, int]:
        """Remove the residue of deleted rows from storage; see ``contactmatch.maintenance``.

        Adapter-specific. PostgreSQL: ``VACUUM FULL`` of the tables that can hold personal
        data, or with ``keys_only`` of the wrapped-key table alone (cheap; enough to make any
        residue of a deleted number undecryptable). SQLite: a truncating checkpoint,
        ``VACUUM`` and another (the whole file either way). Memory and Redis: nothing, they
        keep no dead rows. Blocks writers, and on PostgreSQL readers of those tables too,
        while it runs: schedule it.

        Returns:
            Counters describing what was done (adapter-specific names).
        """
        with self._mapped("vacuum"):
            return self._vacuum(keys_only=bool(keys_only))

    # stats and checkpoints ----------------------------------------------------------------

    def incr_stats(self, deltas: Mapping[str, int]) -> None:
        """Add to aggregate counters by name."""
        if not isinstance(deltas, Mapping):
            raise InvalidInput("deltas must be a mapping of name to int")
        clean = {
            check_name(k, "statistic"): check_int(v, "increment", -(2**53), 2**53)
            for k, v in deltas.items()
        }
        if clean:
            with self._mapped("incr_stats"):
                self._incr_stats(clean)

    def get_stats(self) -> dict[str, int]:
        """All aggregate counters."""
        with self._mapped("get_stats"):
            return self._get_stats()

    def get_checkpoint(self, name: str) -> str | None:
        """A named checkpoint, or None."""
        n = check_name(name, "checkpoint")
        with self._mapped("get_checkpoint"):
            return self._get_checkpoint(n)

    def set_checkpoint(self, name: str, value: str | None) -> None:
        """Set a named checkpoint, or clear it with None."""
        n = check_name(name, "checkpoint")
        if value is not None and (not isinstance(value, str) or len(value) > 1024):
            raise InvalidInput("checkpoint value must be a str of at most 1024 characters")
        with self._mapped("set_checkpoint"):
            self._set_checkpoint(n, value)

    # change feed and identity -----------------------------------------------------------

    def feed_head(self) -> int:
        """The highest sequence number the change feed has assigned (0 for a new store).

        Compaction never lowers it: numbers are never reused. A follower that rebuilds from
        the store reads the head first, then scans, then follows from the head.
        """
        with self._mapped("feed_head"):
            return self._feed_head()

    def changes(self, after: int, limit: int) -> FeedPage:
        """Read the change feed after sequence ``after``; see :class:`FeedPage`.

        Every mutation of a registration (``put_users``, ``rekey_users``,
        ``set_discoverability``, ``delete_account``) appended one entry per affected user in
        the same transaction, and sequence numbers follow commit order: once a page ending at
        ``S`` was returned, no entry numbered ``S`` or less appears later (Redis Cluster: see
        ``docs/storage.md``, The change feed).

        Args:
            after: the last sequence number the caller has applied (0 for the beginning).
            limit: most entries to return, 1..100000.

        Returns:
            The entries (``(seq, user_id)``, ascending), the head, and whether the feed still
            reaches back to ``after``.
        """
        a = check_int(after, "after", 0, _SEQ_MAX)
        n = check_int(limit, "limit", 1, FEED_PAGE_MAX)
        with self._mapped("changes"):
            return self._changes(a, n)

    def compact_feed(
        self, *, before_seq: int | None = None, older_than: float | None = None
    ) -> int:
        """Remove a prefix of the change feed that no follower needs any more.

        With ``before_seq``, entries numbered below it may go (pass the oldest position any
        process or snapshot may still resume from); with ``older_than`` (a time in seconds,
        like ``now``), entries stamped before it may go, stopping at the first younger entry,
        so compaction never leaves a hole. With both, an entry goes only if both allow it.
        A follower whose position falls in the removed range gets ``complete=False`` and
        rescans the store. After compaction (and, on PostgreSQL and SQLite, the vacuum step)
        the removed entries' user ids are gone from storage.

        Returns:
            How many entries were removed.

        Raises:
            InvalidInput: neither limit given, or one out of range.
        """
        if before_seq is None and older_than is None:
            raise InvalidInput("compact_feed needs before_seq or older_than")
        b = None if before_seq is None else check_int(before_seq, "before_seq", 0, _SEQ_MAX)
        t = None if older_than is None else check_time(older_than, "older_than")
        with self._mapped("compact_feed"):
            return self._compact_feed(b, t)

    def store_id(self) -> str:
        """A random identity created with the store's schema, stable across reopen.

        Snapshot files are tagged with it, so a snapshot made from another store (or another
        prefix or schema of the same server) is refused. Never derived from the URL: two
        stores on one server differ, one store reached by two URLs is the same.
        """
        with self._mapped("store_id"):
            return self._store_id()

    def key_census(self) -> KeyCensus:
        """Users per OPRF key id and per data-key id, from counters kept with every write.

        Exact after deletions and rotations (the counters change in the same transaction as
        the rows), and cheap: a few rows, whatever the number of users. The service checks it
        at start-up against the keys it holds (``docs/storage.md``, Key census).
        """
        with self._mapped("key_census"):
            return self._key_census()

    def close(self) -> None:
        """Release connections."""
        with self._mapped("close"):
            self._close()

    # driver work (adapters implement) -----------------------------------------------------
    #
    # Abstract, so an adapter that forgets one cannot even be instantiated (and mypy refuses
    # it where ``contactmatch.stores`` checks the adapters). Input is already validated:
    # lists, not sequences; no duplicates where the public method forbids them; never empty
    # where the public method skips empty batches. Only ``_confirm_tokens`` has a default,
    # because it is correct for every adapter (merely not the fastest).

    @abc.abstractmethod
    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        """Upsert ``users`` (keeping ``created_at``), their keys, census and feed; set ``mark``."""

    @abc.abstractmethod
    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        """Records aligned with ``user_ids``, None where unknown."""

    @abc.abstractmethod
    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        """Records aligned with ``tokens``, None where no user holds the token."""

    def _confirm_tokens(self, tokens: list[bytes]) -> list[Holder | None]:
        """Holders aligned with ``tokens``; SQL adapters override it to skip the ciphertexts."""
        return [
            None if r is None else Holder(r.user_id, r.token, r.key_id, r.discoverability)
            for r in self._lookup_tokens(tokens)
        ]

    @abc.abstractmethod
    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        """Apply every change or none; raise UnknownUser for a missing user."""

    @abc.abstractmethod
    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        """Apply the updates whose user still holds ``old_token``; return how many."""

    @abc.abstractmethod
    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        """Up to ``limit`` records with user id bytewise greater than ``after``, in order."""

    @abc.abstractmethod
    def _count_users(self) -> int:
        """How many registrations the store holds."""

    @abc.abstractmethod
    def _delete_account(self, user_id: str) -> bool:
        """Erase the user's account state; False if there was no such user."""

    @abc.abstractmethod
    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        """Swap the owner's uploads for ``tokens``; False if the owner is not registered."""

    @abc.abstractmethod
    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        """Owners aligned with ``tokens``, in any order (the public method sorts them)."""

    @abc.abstractmethod
    def _purge_contacts(self, keep_key_id: str) -> int:
        """Drop uploads made under another key id; return how many tokens went."""

    @abc.abstractmethod
    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        """One atomic leaky-bucket take (:mod:`contactmatch.stores.leaky` has the rule)."""

    @abc.abstractmethod
    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        """Fingerprints absent, or last added at or before ``cutoff`` (= now - ttl)."""

    @abc.abstractmethod
    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        """Add or refresh the (distinct) fingerprints stamped ``now``; return how many were new."""

    @abc.abstractmethod
    def _reset_seen(self, subject: str) -> None:
        """Forget the subject's seen set."""

    @abc.abstractmethod
    def _expire_rate_state(self, now: float, cutoff: float) -> int:
        """Drop buckets drained by ``now`` and seen entries added at or before ``cutoff``."""

    @abc.abstractmethod
    def _vacuum(self, *, keys_only: bool) -> dict[str, int]:
        """Remove dead-row residue; adapters without dead rows say so and return ``{}``."""

    @abc.abstractmethod
    def _incr_stats(self, deltas: dict[str, int]) -> None:
        """Add the deltas to the named counters, atomically per counter."""

    @abc.abstractmethod
    def _get_stats(self) -> dict[str, int]:
        """Every counter by name."""

    @abc.abstractmethod
    def _get_checkpoint(self, name: str) -> str | None:
        """The checkpoint's value, or None."""

    @abc.abstractmethod
    def _set_checkpoint(self, name: str, value: str | None) -> None:
        """Set the checkpoint, or delete it when ``value`` is None."""

    @abc.abstractmethod
    def _feed_head(self) -> int:
        """The highest feed sequence number assigned (0 for a new store)."""

    @abc.abstractmethod
    def _changes(self, after: int, limit: int) -> FeedPage:
        """Entries after ``after`` (at most ``limit``), head and completeness, one snapshot."""

    @abc.abstractmethod
    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        """Remove the prefix both limits allow (None: no limit); return how many went."""

    @abc.abstractmethod
    def _store_id(self) -> str:
        """The identity written with the schema or key layout."""

    @abc.abstractmethod
    def _key_census(self) -> KeyCensus:
        """The census counters as they are (no scan)."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release connections and background threads."""
