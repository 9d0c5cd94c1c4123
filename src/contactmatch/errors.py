"""Every error contactmatch raises, in one tree so callers can catch at the level they need.

::

    ContactMatchError
    ├── InvalidInput (ValueError)           something handed to us is malformed
    │   ├── InvalidNumber                   a phone number failed normalisation (has .reason)
    │   ├── InvalidContactCard              a vCard / contact dict could not be read
    │   ├── InvalidKey                      key material or a key file is unusable
    │   └── MalformedMessage                a wire message failed to decode (version, length)
    ├── VerificationFailed                  opaque: an element, scalar or proof did not decode
    │                                       or verify; deliberately says nothing more
    ├── UnknownKeyId (LookupError)          an evaluation names a key that is not (or no longer)
    │                                       served; clients refresh and retry
    ├── UnknownScheme (LookupError)         no scheme is registered under that name
    ├── ProtocolStateError (RuntimeError)   a sans-I/O state machine was driven out of order
    │                                       (a response before a request, a result too early)
    ├── RateLimited                         a quota is exhausted (has .retry_after seconds)
    ├── AuthenticationFailed                a bearer token did not map to a user
    ├── ApiError                            an HTTP API error with no more specific class
    │                                       (has .status and .code; the HTTP client raises it)
    ├── MissingDependency (ImportError)     an optional extra is not installed (names the fix)
    └── StoreError                          a storage adapter failed
        ├── StoreUnavailable                the backing server cannot be reached
        ├── SchemaVersionError              the database schema is newer than this library
        ├── UnknownUser (LookupError)       no such registered user
        └── Conflict                        a concurrent change won, or a constraint was violated

Messages never contain a full phone number, token or key: numbers are masked with
:func:`mask_number` (``+98********89``: the calling code and the last two digits at most,
never a letter of the input), tokens and keys are never formatted at all.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from contactmatch._calling_codes import CALLING_CODES

__all__ = [
    "ApiError",
    "AuthenticationFailed",
    "Conflict",
    "ContactMatchError",
    "InvalidContactCard",
    "InvalidInput",
    "InvalidKey",
    "InvalidNumber",
    "MalformedMessage",
    "MissingDependency",
    "ProtocolStateError",
    "RateLimited",
    "SchemaVersionError",
    "StoreError",
    "StoreUnavailable",
    "UnknownKeyId",
    "UnknownScheme",
    "UnknownUser",
    "VerificationFailed",
    "mask_number",
]

# What phonenumbers accepts as a plus sign (ASCII and full-width); a plus sign before the
# first digit makes the input international.
_PLUS_SIGNS: Final = "+\uff0b"
_FIRST_MARK: Final = re.compile(r"[+\uff0b\d]")
_NOT_DIGIT: Final = re.compile(r"\D+")  # \d is Unicode category Nd, as str.isdecimal
# Digits shown at the end, digits always hidden, and the longest run of stars shown.
_TAIL: Final = 2
_MIN_HIDDEN: Final = 4
_MAX_STARS: Final = 12


def mask_number(raw: str) -> str:
    """Mask a phone number for messages and logs, keeping just enough to tell rejects apart.

    Only digits survive, whatever the input looks like: letters, names and punctuation are
    dropped (a CSV line or a vCard value may hold a contact's name next to the number), and
    every digit is a star except the last two and, when the input is international (``+`` or
    ``00``) and starts with a real country calling code, that code. So ``+98 912 345 6789``
    and ``00989123456789`` give ``+98********89``, ``0912 345 6789`` gives ``*********89``.
    Fewer than six digits after the calling code are all stars (they may be a whole local
    number); a long run of stars is cut to ``*********...``, so the masked value is at most
    18 characters however long the input. Digits of any script are shown as ASCII.

    Returns:
        The masked value; empty when the input holds no digit at all.
    """
    text = str(raw)
    digits = _NOT_DIGIT.sub("", text)  # every decimal digit, of any script; C speed
    if not digits:
        return ""
    # Only the few digits that may be shown are converted: the input may be 60,000 long.
    head = _ascii(digits[:5])
    first = _FIRST_MARK.search(text)
    skip = 0
    if first is not None and first.group() in _PLUS_SIGNS:
        international = True
    else:
        international = len(digits) > 2 and head.startswith("00")
        skip = 2 if international else 0
    code = ""
    if international:
        after = head[skip:]
        # Calling codes are prefix-free: at most one of these prefixes is one.
        code = next((after[:n] for n in (1, 2, 3) if after[:n] in CALLING_CODES), "")
    rest = len(digits) - skip - len(code)
    if not rest:
        code, rest = "", len(digits) - skip  # a calling code alone is masked like any input
    tail = _ascii(digits[-_TAIL:]) if rest >= _MIN_HIDDEN + _TAIL else ""
    hidden = rest - len(tail)
    stars = "*" * hidden if hidden <= _MAX_STARS else "*" * (_MAX_STARS - 3) + "..."
    return ("+" + code if code else "") + stars + tail


def _ascii(digits: str) -> str:
    """Decimal digits of any script (Persian, Arabic-Indic, full-width...) as ASCII."""
    return "".join(str(unicodedata.decimal(ch)) for ch in digits)


class ContactMatchError(Exception):
    """Root of every error raised by contactmatch."""


class InvalidInput(ContactMatchError, ValueError):
    """Something that crossed a boundary into the library is malformed."""


class InvalidNumber(InvalidInput):
    """A phone number could not be normalised to a (mobile) E.164 number.

    ``reason`` is a stable machine-readable code (``empty``, ``not_a_number``, ``too_short``,
    ``too_long``, ``invalid_for_region``, ``not_mobile``, ``missing_region``, ...); the message
    shows the input only masked.
    """

    def __init__(self, reason: str, raw: str | None = None) -> None:
        self.reason = reason
        self.masked = mask_number(raw) if raw else ""
        shown = f" ({self.masked})" if self.masked else ""
        super().__init__(f"invalid phone number{shown}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidNumber], tuple[str, None]]:
        # Pickling (process pools) must not carry the raw number either.
        return (type(self), (self.reason, None))


class InvalidContactCard(InvalidInput):
    """A contact card (vCard text or a contact dict) could not be read."""


class InvalidKey(InvalidInput):
    """Key material or a key file is unusable (wrong length, version, permissions...)."""


class MalformedMessage(InvalidInput):
    """A wire message failed to decode: unknown version, wrong length, bad field."""


class VerificationFailed(ContactMatchError):
    """An element, scalar or proof failed to decode or verify.

    Deliberately opaque (like ``cryptography.fernet.InvalidToken``): telling an attacker *which*
    check failed helps them, so every decode/verify failure in the protocol raises this alone.
    """

    def __init__(self, message: str = "verification failed") -> None:
        super().__init__(message)


class UnknownKeyId(ContactMatchError, LookupError):
    """An evaluation or request names a key id that is not served (rotated out or foreign)."""


class UnknownScheme(ContactMatchError, LookupError):
    """No scheme is registered under the requested name."""


class ProtocolStateError(ContactMatchError, RuntimeError):
    """A protocol object was used out of order: a programming error in the caller, not bad input.

    Client state machines (:class:`~contactmatch.schemes.client.SchemeClient`,
    :class:`~contactmatch.service.DiscoveryClient`) raise it when a response arrives that no
    request asked for, or a result is read before the discovery is complete. It subclasses
    ``RuntimeError``, which these cases raised before it existed.
    """


class RateLimited(ContactMatchError):
    """A quota is exhausted; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, quota: str = "") -> None:
        self.retry_after = max(0.0, float(retry_after))
        self.quota = quota
        super().__init__(f"{message} (retry after {self.retry_after:.0f}s)")


class AuthenticationFailed(ContactMatchError):
    """A bearer token did not authenticate a user."""


class MissingDependency(ContactMatchError, ImportError):
    """An optional extra is needed; the message names the ``pip install`` that fixes it."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{module} is not installed; install it with: pip install 'contactmatch[{extra}]'"
        )


class StoreError(ContactMatchError):
    """A storage adapter failed; the driver's exception is chained as ``__cause__``."""


class StoreUnavailable(StoreError):
    """The backing database or cache cannot be reached."""


class SchemaVersionError(StoreError):
    """The stored schema is newer than this library understands (refuse rather than corrupt)."""


class UnknownUser(StoreError, LookupError):
    """No registered user has that id."""


class Conflict(StoreError):
    """A concurrent change won, or a uniqueness constraint was violated."""


class ApiError(ContactMatchError):
    """An HTTP API error that no more specific class describes (``status`` and ``code``).

    The app raises it for HTTP-only refusals (403 ``forbidden``, 413, 415) and the Python
    client for codes it does not know (404 ``not_found``, 500 ``internal``, a proxy's 502),
    so callers can catch one class for "the HTTP layer said no" and read the stable code.
    It lives here, not in :mod:`contactmatch.server`, so it can be caught without the extra.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
