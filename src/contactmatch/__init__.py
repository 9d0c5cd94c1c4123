"""contactmatch: privacy-first contact discovery for messengers.

Contact discovery is a *token function* (plain, sha256, hmac, oprf, voprf) combined with a
*membership method* (lookup, bucket, filter). A backend uses :class:`DiscoveryServer`; the
app's side is :class:`DiscoveryClient`. See docs/api.md for a complete example.

The top level holds the product only: the service, its keys, store and settings, phone
books and numbers, scheme names, and the errors a backend catches. The parts stay in their
modules: :mod:`contactmatch.errors` (every error), :mod:`contactmatch.filters`,
:mod:`contactmatch.index`, :mod:`contactmatch.oprf`, :mod:`contactmatch.schemes`,
:mod:`contactmatch.stores`, :mod:`contactmatch.ratelimit`.

Importing this package loads no database driver and no web stack: store adapters and the
HTTP server load on first use (``open_store(url)``, ``contactmatch.server``).
"""

from contactmatch._version import __version__
from contactmatch.atrest import DataKey
from contactmatch.contacts import load_contacts
from contactmatch.errors import (
    AuthenticationFailed,
    ContactMatchError,
    InvalidInput,
    InvalidNumber,
    MalformedMessage,
    RateLimited,
    StoreUnavailable,
    UnknownKeyId,
    UnknownUser,
    VerificationFailed,
)
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode
from contactmatch.phone import normalize, normalize_many
from contactmatch.ratelimit import RateLimits
from contactmatch.schemes import Scheme, get_scheme, scheme_names
from contactmatch.service import (
    DiscoveryClient,
    DiscoveryResult,
    DiscoveryServer,
    ServiceSettings,
)
from contactmatch.stores import open_store
from contactmatch.stores.base import Discoverability

__all__ = [
    "AuthenticationFailed",
    "ContactMatchError",
    "DataKey",
    "Discoverability",
    "DiscoveryClient",
    "DiscoveryResult",
    "DiscoveryServer",
    "InvalidInput",
    "InvalidNumber",
    "KeyRing",
    "MalformedMessage",
    "Mode",
    "RateLimited",
    "RateLimits",
    "Scheme",
    "ServerKey",
    "ServiceSettings",
    "StoreUnavailable",
    "UnknownKeyId",
    "UnknownUser",
    "VerificationFailed",
    "__version__",
    "get_scheme",
    "load_contacts",
    "normalize",
    "normalize_many",
    "open_store",
    "scheme_names",
]
