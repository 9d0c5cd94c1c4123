"""The registry store protocol, its records, input validation and the template base class.

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
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

from contactmatch.errors import ContactMatchError, InvalidInput, StoreError, UnknownUser

__all__ = [
    "FEED_PAGE_MAX",
    "MAX_CIPHERTEXT",
    "MAX_WRAPPED_KEY",
    "BaseStore",
    "Discoverability",
    "FeedPage",
    "KeyCensus",
    "RegistryStore",
    "Rekey",
    "TakeResult",
    "UserRecord",
]

TOKEN_MIN, TOKEN_MAX = 32, 64
FP_MIN, FP_MAX = 4, 64
MAX_CIPHERTEXT = 512
MAX_WRAPPED_KEY = 256
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_USER_ID_MATCH = _USER_ID.fullmatch
_KEY_ID_MATCH = _KEY_ID.fullmatch
_WRAP_VERSION = 2  # contactmatch.atrest.BLOB_VERSION
#: Most entries one :meth:`BaseStore.changes` call returns.
FEED_PAGE_MAX = 100_000
_SEQ_MAX = 2**63 - 1  # a signed 64-bit column holds every sequence number


class Discoverability(enum.StrEnum):
    """Who may find a user by their number."""

    EVERYONE = "everyone"
    CONTACTS = "contacts"
    NOBODY = "nobody"


#: How the SQL adapters store a setting (a small integer column) and read it back.
DISC_CODES = {Discoverability.EVERYONE: 0, Discoverability.CONTACTS: 1, Discoverability.NOBODY: 2}
DISC_NAMES = {v: k for k, v in DISC_CODES.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    """One registration: token under a key id, encrypted number, wrapped user key, setting, times.

    ``number_ct`` and ``wrapped_key`` come from :meth:`contactmatch.atrest.DataKey.seal_number`
    for this very user id and token. Stores keep ``wrapped_key`` apart from the user's row (its
    own table or key), written in the same transaction and deleted with the account.

    Validated on construction (like attrs validators), so a record that exists is a valid
    one and bulk loads need not re-check a million of them.

    Raises:
        InvalidInput: a field has the wrong type, length or charset.
    """

    user_id: str
    token: bytes
    key_id: str
    number_ct: bytes
    wrapped_key: bytes
    discoverability: Discoverability = Discoverability.EVERYONE
    created_at: float
    updated_at: float

    def __post_init__(self) -> None:
        tok, ct, wk = self.token, self.number_ct, self.wrapped_key
        cat, uat = self.created_at, self.updated_at
        if (
            type(tok) is bytes
            and TOKEN_MIN <= len(tok) <= TOKEN_MAX
            and type(ct) is bytes
            and 1 <= len(ct) <= MAX_CIPHERTEXT
            and type(wk) is bytes
            and 1 <= len(wk) <= MAX_WRAPPED_KEY
            and type(self.discoverability) is Discoverability
            and type(cat) is float
            and type(uat) is float
            and 0.0 <= cat < math.inf
            and 0.0 <= uat < math.inf
            and type(self.user_id) is str
            and type(self.key_id) is str
            and _USER_ID_MATCH(self.user_id) is not None
            and _KEY_ID_MATCH(self.key_id) is not None
        ):
            return  # the common case, kept to plain comparisons
        # Normalise what is acceptable (bytearray, "everyone", int times), reject the rest.
        # object.__setattr__ is the documented way to initialise a frozen dataclass.
        set_ = object.__setattr__
        set_(self, "user_id", check_user_id(self.user_id))
        set_(self, "token", check_token(tok))
        set_(self, "key_id", check_key_id(self.key_id))
        set_(self, "number_ct", check_bytes(ct, "encrypted number", 1, MAX_CIPHERTEXT))
        set_(self, "wrapped_key", check_bytes(wk, "wrapped key", 1, MAX_WRAPPED_KEY))
        set_(self, "discoverability", check_discoverability(self.discoverability))
        set_(self, "created_at", check_time(cat, "created_at"))
        set_(self, "updated_at", check_time(uat, "updated_at"))

    def __repr__(self) -> str:
        # Tokens and ciphertexts never reach logs, not even through a debugger's repr.
        return (
            f"UserRecord(user_id={self.user_id!r}, key_id={self.key_id!r}, "
            f"discoverability={self.discoverability.value!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rekey:
    """A token replacement for key rotation; applied only if the user still has ``old_token``.

    The number ciphertext is bound to the token, so a new token needs a new seal: pass both
    ``number_ct`` and ``wrapped_key`` (from ``DataKey.seal_number(number, user_id, new_token)``),
    or neither to keep the stored ones (only right when the token does not change).
    """

    user_id: str
    old_token: bytes
    new_token: bytes
    key_id: str
    number_ct: bytes | None = None
    wrapped_key: bytes | None = None

    def __repr__(self) -> str:
        return f"Rekey(user_id={self.user_id!r}, key_id={self.key_id!r})"


class Holder(NamedTuple):
    """Who holds a token: what discovery needs to confirm a match, and no more."""

    user_id: str
    token: bytes
    key_id: str
    discoverability: Discoverability

    def __repr__(self) -> str:  # a token stays out of logs
        return f"Holder(user_id={self.user_id!r}, key_id={self.key_id!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedPage:
    """One read of the change feed: what changed after a position, and whether that is all.

    Attributes:
        entries: ``(seq, user_id)`` pairs with ``seq`` greater than the position asked for,
            ascending, at most the limit asked for. An entry says only "this user changed":
            read the user's current row (``get_users``; None means gone).
        head: the highest sequence number the store had assigned when the page was read
            (0 for a store that never changed); the page is the last one when ``entries`` is
            empty or ends at ``head``.
        complete: False when entries after the position were already compacted away (or the
            position is beyond ``head``, e.g. a snapshot from a restored backup): the follower
            cannot catch up from the feed and must rescan the store.
    """

    entries: list[tuple[int, str]]
    head: int
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCensus:
    """How many registrations the store holds under each key id, exact and cheap to read.

    Attributes:
        oprf: users per token key id (``UserRecord.key_id``).
        data: users per data-key id named in the header of their wrapped key (``""`` for a
            wrapped key whose header does not parse). Key ids with no user are left out.
    """

    oprf: dict[str, int]
    data: dict[str, int]


class TakeResult(NamedTuple):
    """Outcome of one leaky-bucket take: allowed, else seconds until it would be."""

    allowed: bool
    retry_after: float


def leak(level: float, updated: float, now: float, refill_per_s: float) -> float:
    """Bucket level after draining since ``updated`` (never below zero, clock skew ignored)."""
    return max(0.0, level - max(0.0, now - updated) * refill_per_s)


def take_decision(
    level: float, cost: float, capacity: float, refill_per_s: float
) -> tuple[bool, float, float]:
    """Leaky-bucket rule shared by the adapters that decide in Python: (allowed, retry, level)."""
    new_level = level + cost
    if new_level <= capacity:
        return True, 0.0, new_level
    if cost > capacity:
        return False, math.inf, level
    return False, (new_level - capacity) / refill_per_s, level


def drain_time(level: float, updated: float, refill_per_s: float) -> float:
    """When a bucket at ``level`` (as of ``updated``) is empty again: the time its row may go.

    ``inf`` when it never drains within a float's range (a tiny refill rate).
    """
    return updated + level / refill_per_s


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
    """Rate state: leaky buckets and seen sets. All the rate limiter and the lab need."""

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
        """How many (distinct) fingerprints are not in ``subject``'s seen set, or older than ttl."""

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
    """The change feed and the store's identity, which registry followers read."""

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

    The union of the role protocols: code that needs one role (the rate limiter: quotas)
    depends on that role only.
    """

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


# -- validation ----------------------------------------------------------------------------


def check_user_id(value: object) -> str:
    """A user id: 1-64 characters of ``[A-Za-z0-9._-]``, not starting with a separator."""
    if not isinstance(value, str):
        raise InvalidInput(f"user id must be str, not {type(value).__name__}")
    if not _USER_ID.fullmatch(value):
        # Shown only by length: a malformed id may be something personal pasted by mistake.
        raise InvalidInput(f"malformed user id (length {len(value)})")
    return value


def check_key_id(value: object) -> str:
    """A key id: 1-32 characters of ``[A-Za-z0-9._-]`` (ASCII bytes are accepted)."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput("key id must be ASCII") from None
    if not isinstance(value, str):
        raise InvalidInput(f"key id must be str or bytes, not {type(value).__name__}")
    if not _KEY_ID.fullmatch(value):
        raise InvalidInput(f"malformed key id (length {len(value)})")
    return value


def check_name(value: object, what: str) -> str:
    """A quota, statistic or checkpoint name: 1-64 of ``[A-Za-z0-9._:-]``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be str, not {type(value).__name__}")
    if not _NAME.fullmatch(value):
        raise InvalidInput(f"malformed {what} (length {len(value)})")
    return value


def check_subject(value: object) -> str:
    """A rate subject: 1-64 of ``[A-Za-z0-9._:-]``, e.g. ``n:<32 hex>`` or ``g:eval``.

    User ids cannot contain ``:``, so namespaced subjects never collide with one.
    """
    return check_name(value, "rate subject")


def check_bytes(value: object, what: str, lo: int, hi: int) -> bytes:
    """Bytes of length ``lo..hi`` (bytearray and memoryview are copied to bytes)."""
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise InvalidInput(f"{what} must be bytes, not {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise InvalidInput(f"{what} must be {lo}-{hi} bytes, got {len(value)}")
    return value


def check_token(value: object) -> bytes:
    """A token: 32-64 bytes."""
    return check_bytes(value, "token", TOKEN_MIN, TOKEN_MAX)


def check_time(value: object, what: str = "timestamp") -> float:
    """A finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number, not {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f) or f < 0:
        raise InvalidInput(f"{what} must be finite and >= 0")
    return f


def check_int(value: object, what: str, lo: int, hi: int) -> int:
    """An int in ``lo..hi`` (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{what} must be in {lo}..{hi}")
    return value


_DISC_BY_VALUE = {d.value: d for d in Discoverability}


def check_discoverability(value: object) -> Discoverability:
    """A :class:`Discoverability` or its string value."""
    if isinstance(value, str) and value in _DISC_BY_VALUE:
        return _DISC_BY_VALUE[value]
    raise InvalidInput("discoverability must be everyone, contacts or nobody")


def check_record(rec: object) -> UserRecord:
    """A :class:`UserRecord` (valid by construction, so only the type is checked here)."""
    if type(rec) is not UserRecord and not isinstance(rec, UserRecord):
        raise InvalidInput(f"expected UserRecord, not {type(rec).__name__}")
    return rec


def check_sequence(value: object, what: str) -> Sequence[object]:
    """A list or tuple (a lone str/bytes is rejected: it would iterate characters)."""
    if isinstance(value, str | bytes | bytearray | memoryview) or not isinstance(value, Sequence):
        raise InvalidInput(f"{what} must be a sequence, not {type(value).__name__}")
    return value


def _fingerprints(values: object) -> list[bytes]:
    """Distinct seen-set fingerprints (4-64 bytes each), first occurrence order."""
    return list(
        dict.fromkeys(
            check_bytes(f, "fingerprint", FP_MIN, FP_MAX)
            for f in check_sequence(values, "fingerprints")
        )
    )


def wrapped_key_id(wrapped: bytes) -> str:
    """The data-key id in a wrapped user key's header, or ``""`` if the header does not parse.

    Mirrors the layout of :mod:`contactmatch.atrest` (``0x02 | len | key id | ...``) without
    importing it: stores treat the blob as opaque except for this census of key ids.
    """
    if len(wrapped) < 2 or wrapped[0] != _WRAP_VERSION:
        return ""
    n = wrapped[1]
    kid = wrapped[2 : 2 + n]
    if len(kid) != n or not kid.isascii():
        return ""
    text = kid.decode("ascii")
    return text if _KEY_ID_MATCH(text) is not None else ""


#: Census kinds as the SQL adapters store them: OPRF (token) key ids and data-key ids.
CENSUS_OPRF, CENSUS_DATA = 0, 1


def census_deltas(
    added: Iterable[tuple[str, bytes]], removed: Iterable[tuple[str, bytes]] = ()
) -> dict[tuple[int, str], int]:
    """Key-census changes for registrations added and removed, as ``(key id, wrapped key)``.

    Returns ``{(kind, key id): delta}`` without zero deltas (a replacement under the same keys
    changes nothing). Wrapped keys are grouped by their header bytes first, so a batch of a
    million users sharing one data key parses one header, not a million.
    """
    out: Counter[tuple[int, str]] = Counter()
    for pairs, sign in ((added, 1), (removed, -1)):
        kids: Counter[str] = Counter()
        heads: Counter[bytes] = Counter()
        for kid, wk in pairs:
            kids[kid] += 1
            heads[wk[: 2 + wk[1]] if len(wk) > 1 else wk] += 1
        for kid, n in kids.items():
            out[(CENSUS_OPRF, kid)] += sign * n
        for head, n in heads.items():
            out[(CENSUS_DATA, wrapped_key_id(head))] += sign * n
    return {k: n for k, n in out.items() if n}


def census_from(rows: Iterable[tuple[int, str, int]]) -> KeyCensus:
    """A :class:`KeyCensus` from ``(kind, key id, count)`` rows (rows counting 0 left out)."""
    oprf: dict[str, int] = {}
    data: dict[str, int] = {}
    for kind, kid, n in rows:
        if n:
            (oprf if kind == CENSUS_OPRF else data)[kid] = int(n)
    return KeyCensus(oprf=oprf, data=data)


def no_duplicates(values: Sequence[object], what: str) -> None:
    """Refuse a batch that names the same thing twice (its outcome would depend on order)."""
    if len(set(values)) != len(values):
        raise InvalidInput(f"duplicate {what} in one batch")


# -- the template base class ---------------------------------------------------------------


class BaseStore:
    """Public methods validate and map errors; subclasses implement the ``_methods``."""

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
        fps = _fingerprints(fingerprints)
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
        fps = _fingerprints(fingerprints)
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

    def _put_users(self, users: list[UserRecord], mark: str | None) -> None:
        raise NotImplementedError

    def _get_users(self, user_ids: list[str]) -> list[UserRecord | None]:
        raise NotImplementedError

    def _lookup_tokens(self, tokens: list[bytes]) -> list[UserRecord | None]:
        raise NotImplementedError

    def _confirm_tokens(self, tokens: list[bytes]) -> list[Holder | None]:
        return [
            None if r is None else Holder(r.user_id, r.token, r.key_id, r.discoverability)
            for r in self._lookup_tokens(tokens)
        ]

    def _set_discoverability(self, changes: dict[str, Discoverability], now: float) -> None:
        raise NotImplementedError

    def _rekey_users(self, updates: list[Rekey], now: float) -> int:
        raise NotImplementedError

    def _scan_users(self, after: str | None, limit: int) -> list[UserRecord]:
        raise NotImplementedError

    def _count_users(self) -> int:
        raise NotImplementedError

    def _delete_account(self, user_id: str) -> bool:
        raise NotImplementedError

    def _replace_contacts(self, owner_id: str, tokens: list[bytes], key_id: str) -> bool:
        raise NotImplementedError

    def _contact_owners(self, tokens: list[bytes]) -> list[list[str]]:
        raise NotImplementedError

    def _purge_contacts(self, keep_key_id: str) -> int:
        raise NotImplementedError

    def _take(
        self, subject: str, quota: str, cost: float, *, capacity: float, refill: float, now: float
    ) -> TakeResult:
        raise NotImplementedError

    def _count_unseen(self, subject: str, fingerprints: list[bytes], cutoff: float) -> int:
        """Fingerprints absent, or last added at or before ``cutoff`` (= now - ttl)."""
        raise NotImplementedError

    def _add_seen(self, subject: str, fingerprints: list[bytes], now: float) -> int:
        raise NotImplementedError

    def _reset_seen(self, subject: str) -> None:
        raise NotImplementedError

    def _expire_rate_state(self, now: float, cutoff: float) -> int:
        """Drop buckets drained by ``now`` and seen entries added at or before ``cutoff``."""
        raise NotImplementedError

    def _vacuum(self, *, keys_only: bool) -> dict[str, int]:  # noqa: ARG002 - adapters use it
        return {}

    def _incr_stats(self, deltas: dict[str, int]) -> None:
        raise NotImplementedError

    def _get_stats(self) -> dict[str, int]:
        raise NotImplementedError

    def _get_checkpoint(self, name: str) -> str | None:
        raise NotImplementedError

    def _set_checkpoint(self, name: str, value: str | None) -> None:
        raise NotImplementedError

    def _feed_head(self) -> int:
        raise NotImplementedError

    def _changes(self, after: int, limit: int) -> FeedPage:
        raise NotImplementedError

    def _compact_feed(self, before_seq: int | None, older_than: float | None) -> int:
        raise NotImplementedError

    def _store_id(self) -> str:
        raise NotImplementedError

    def _key_census(self) -> KeyCensus:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def user_row(u: UserRecord, kid: int) -> tuple[str, bytes, int, bytes, int, float, float | None]:
    """The ``users`` column tuple of a record (SQLite and PostgreSQL); the key goes elsewhere.

    ``kid`` is the key id's code in the ``key_ids`` table (one small integer instead of up to
    32 characters per row), and ``updated_at`` is NULL while it equals ``created_at`` (most
    users register once): 8 bytes per row saved, read back with ``coalesce``.
    """
    cat, uat = u.created_at, u.updated_at
    return (
        u.user_id,
        u.token,
        kid,
        u.number_ct,
        DISC_CODES[u.discoverability],
        cat,
        None if uat == cat else uat,
    )


def record_from_row(row: Sequence[Any]) -> UserRecord:
    """The record of a SQL row read as ``(user_id, token, key_id, number_ct, disc, created_at,
    updated_at, wrapped)``: key id by name (joined from ``key_ids``), times coalesced."""
    return UserRecord(
        user_id=row[0],
        token=bytes(row[1]),
        key_id=row[2],
        number_ct=bytes(row[3]),
        wrapped_key=bytes(row[7]),
        discoverability=DISC_NAMES[row[4]],
        created_at=row[5],
        updated_at=row[6],
    )
