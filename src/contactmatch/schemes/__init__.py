"""Matching schemes: a token function × a membership method, behind one interface.

The layout is the idea: :mod:`~contactmatch.schemes.tokens` (what is matched: plain,
sha256, hmac, oprf, voprf), :mod:`~contactmatch.schemes.methods` (where the match happens:
lookup, bucket, filter), :mod:`~contactmatch.schemes.base` (the registry of scheme names),
:mod:`~contactmatch.schemes.wire` (the messages), and the two sans-I/O sides,
:class:`SchemeServer` and :class:`SchemeClient`.

>>> from contactmatch.schemes import build_server, run_discovery
>>> server = build_server("oprf+filter", [("alice", "+989123456789")])
>>> run_discovery(server, ["+989123456789", "+989350000000"]).result.matches
{'+989123456789': 'alice'}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from contactmatch.schemes.base import (
    METHODS,
    TOKEN_FUNCTIONS,
    MatchResult,
    MethodName,
    Scheme,
    ServerInfo,
    TokenName,
    get_scheme,
    leakage_table,
    scheme_names,
)
from contactmatch.schemes.client import SchemeClient
from contactmatch.schemes.leakage import Leakage
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.tokens import make_client_tokens, make_server_tokens

if TYPE_CHECKING:
    from contactmatch.lab.compare import RunReport, build_server, run_discovery

# The research harness lives in the lab (contactmatch.lab.compare) since 0.3; its three names
# stay importable from here, loaded on first use (PEP 562) because the lab imports schemes.
_HARNESS = frozenset({"RunReport", "build_server", "run_discovery"})


def __getattr__(name: str) -> Any:
    if name in _HARNESS:
        return getattr(importlib.import_module("contactmatch.lab.compare"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "TOKEN_FUNCTIONS",
    "Leakage",
    "MatchResult",
    "MethodName",
    "RunReport",
    "Scheme",
    "SchemeClient",
    "SchemeServer",
    "ServerInfo",
    "TokenName",
    "build_server",
    "get_scheme",
    "leakage_table",
    "make_client_tokens",
    "make_server_tokens",
    "run_discovery",
    "scheme_names",
]
