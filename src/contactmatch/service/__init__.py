"""The discovery service: the API a messenger backend imports, and the app's reference client.

:class:`DiscoveryServer` ties numbers, keys, schemes, the registry and the store together:
account lifecycle (register, change number, delete), privacy settings, discovery with rate
limits, opt-in "contact joined", and aggregate statistics. :class:`DiscoveryClient` is the
app's side in Python. Both are sans-I/O: requests and responses are bytes, moved by whatever
transport the application uses (in-process calls, :mod:`contactmatch.server` over HTTP).

A discovery is one round trip when the client already holds tokens for all its contacts (the
steady state: re-syncs), and two on a first sync with a keyed scheme (evaluate, then match)::

    request = client.prepare(contacts)
    while request is not None:
        result = client.finalize(server.discover(user_id, request))
        request = result.next_request
    result.matches, result.unregistered

The package is split by side: :mod:`~contactmatch.service.server` (the backend's),
:mod:`~contactmatch.service.client` (the app's), :mod:`~contactmatch.service.settings`, and
:mod:`~contactmatch.service.personal` (contacts-only entries, which both sides handle).
Import the names from here.
"""

from __future__ import annotations

from contactmatch.service.client import DiscoveryClient, DiscoveryResult, PhoneBook
from contactmatch.service.server import DiscoveryServer
from contactmatch.service.settings import DEFAULT_SCHEMES, NumberVerifier, ServiceSettings

__all__ = [
    "DEFAULT_SCHEMES",
    "DiscoveryClient",
    "DiscoveryResult",
    "DiscoveryServer",
    "NumberVerifier",
    "PhoneBook",
    "ServiceSettings",
]
