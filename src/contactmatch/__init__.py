"""contactmatch: privacy-first contact discovery for messengers.

Contact discovery is a *token function* (plain, sha256, hmac, oprf, voprf) combined with a
*membership method* (lookup, bucket, filter). A backend uses :class:`DiscoveryServer`; the
app's side is :class:`DiscoveryClient`. See docs/api.md for a complete example.

Importing this package loads no database driver and no web stack: store adapters and the
HTTP server load on first use (``open_store(url)``, ``contactmatch.server``).
"""

from contactmatch._version import __version__
from contactmatch.atrest import DataKey
from contactmatch.contacts import ContactBook, load_contacts
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
from contactmatch.filters import BloomFilter, GolombFilter, load_filter
from contactmatch.index import TokenIndex
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode, OprfClient, OprfServer
from contactmatch.phone import NormalizedBatch, normalize, normalize_many
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.schemes import Scheme, get_scheme, scheme_names
from contactmatch.service import (
    DiscoveryClient,
    DiscoveryResult,
    DiscoveryServer,
    ServiceSettings,
)
from contactmatch.stores import open_store
from contactmatch.stores.base import Discoverability, RegistryStore

__all__ = [
    "AuthenticationFailed",
    "BloomFilter",
    "Conflict",
    "ContactBook",
    "ContactMatchError",
    "DataKey",
    "Discoverability",
    "DiscoveryClient",
    "DiscoveryResult",
    "DiscoveryServer",
    "GolombFilter",
    "InvalidContactCard",
    "InvalidInput",
    "InvalidKey",
    "InvalidNumber",
    "KeyRing",
    "MalformedMessage",
    "MissingDependency",
    "Mode",
    "NormalizedBatch",
    "OprfClient",
    "OprfServer",
    "Quota",
    "RateLimited",
    "RateLimits",
    "RegistryStore",
    "SchemaVersionError",
    "Scheme",
    "ServerKey",
    "ServiceSettings",
    "StoreError",
    "StoreUnavailable",
    "TokenIndex",
    "UnknownKeyId",
    "UnknownScheme",
    "UnknownUser",
    "VerificationFailed",
    "__version__",
    "get_scheme",
    "load_contacts",
    "load_filter",
    "mask_number",
    "normalize",
    "normalize_many",
    "open_store",
    "scheme_names",
]
