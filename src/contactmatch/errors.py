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
    ├── RateLimited                         a quota is exhausted (has .retry_after seconds)
    ├── AuthenticationFailed                a bearer token did not map to a user
    ├── MissingDependency (ImportError)     an optional extra is not installed (names the fix)
    └── StoreError                          a storage adapter failed
        ├── StoreUnavailable                the backing server cannot be reached
        ├── SchemaVersionError              the database schema is newer than this library
        ├── UnknownUser (LookupError)       no such registered user
        └── Conflict                        a concurrent change won, or a constraint was violated

Messages never contain a full phone number, token or key: numbers are masked with
:func:`mask_number` (``+98912*****89``), tokens and keys are never formatted at all.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "ContactMatchError",
    "InvalidContactCard",
    "InvalidInput",
    "InvalidKey",
    "InvalidNumber",
    "MalformedMessage",
    "MissingDependency",
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


def mask_number(raw: str) -> str:
    """Mask a phone number for messages and logs, keeping just enough to recognise it.

    Keeps the first six characters (``+`` and country code and operator prefix) and the last
    two (``+98912*****89``) so an operator can tell two rejects apart without the log becoming
    a list of numbers. Short inputs are masked harder: they may be a full local number.
    """
    s = "".join(ch for ch in str(raw) if not ch.isspace())
    if len(s) <= 4:
        return "*" * len(s)
    if len(s) <= 10:
        return s[:2] + "*" * (len(s) - 2)
    return s[:6] + "*" * (len(s) - 8) + s[-2:]


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
