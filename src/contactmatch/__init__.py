"""contactmatch: privacy-first contact discovery for messengers.

Contact discovery is a *token function* (plain, sha256, hmac, oprf, voprf) combined with a
*membership method* (lookup, bucket, filter). Start with :mod:`contactmatch.phone` to normalise
numbers, :mod:`contactmatch.contacts` to reduce contact cards to numbers only.
"""

from contactmatch._version import __version__
from contactmatch.errors import (
    AuthenticationFailed,
    Conflict,
    ContactMatchError,
    InvalidContactCard,
    InvalidInput,
    InvalidKey,
    InvalidNumber,
    MalformedMessage,
    MissingDependency,
    RateLimited,
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
    UnknownKeyId,
    UnknownScheme,
    UnknownUser,
    VerificationFailed,
    mask_number,
)

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
    "__version__",
    "mask_number",
]
