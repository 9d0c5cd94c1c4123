"""The values stores take and return, and the input rules every adapter enforces.

Records are frozen dataclasses validated on construction (like attrs validators), so a record
that exists is valid and a bulk load of a million need not re-check them. The ``check_*``
functions are the rules for everything else a store is handed (user ids, key ids, rate
subjects, names, times, batches); :class:`~contactmatch.stores.base.BaseStore` applies them
before any driver sees the input. Errors describe the problem by kind and length only: a
malformed value may be something personal pasted by mistake.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from contactmatch.errors import InvalidInput

__all__ = [
    "FEED_PAGE_MAX",
    "FP_MAX",
    "FP_MIN",
    "MAX_CIPHERTEXT",
    "MAX_WRAPPED_KEY",
    "TOKEN_MAX",
    "TOKEN_MIN",
    "Discoverability",
    "FeedPage",
    "Holder",
    "KeyCensus",
    "Rekey",
    "TakeResult",
    "UserRecord",
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
    "is_key_id",
    "no_duplicates",
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
#: Most entries one :meth:`~contactmatch.stores.base.BaseStore.changes` call returns.
FEED_PAGE_MAX = 100_000


class Discoverability(enum.StrEnum):
    """Who may find a user by their number."""

    EVERYONE = "everyone"
    CONTACTS = "contacts"
    NOBODY = "nobody"


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


def check_fingerprints(values: object) -> list[bytes]:
    """Distinct seen-set fingerprints (4-64 bytes each), first occurrence order."""
    return list(
        dict.fromkeys(
            check_bytes(f, "fingerprint", FP_MIN, FP_MAX)
            for f in check_sequence(values, "fingerprints")
        )
    )


def no_duplicates(values: Sequence[object], what: str) -> None:
    """Refuse a batch that names the same thing twice (its outcome would depend on order)."""
    if len(set(values)) != len(values):
        raise InvalidInput(f"duplicate {what} in one batch")


def is_key_id(value: str) -> bool:
    """Whether ``value`` is a well-formed key id (the census checks ids read from blobs)."""
    return _KEY_ID_MATCH(value) is not None
