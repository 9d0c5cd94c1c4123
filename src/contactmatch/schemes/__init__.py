"""Matching schemes: a token function × a membership method, behind one interface.

>>> from contactmatch.schemes import build_server, run_discovery
>>> server = build_server("oprf+filter", [("alice", "+989123456789")])
>>> run_discovery(server, ["+989123456789", "+989350000000"]).result.matches
{'+989123456789': 'alice'}
"""

from contactmatch.schemes.base import (
    METHODS,
    TOKEN_FUNCTIONS,
    MatchResult,
    Scheme,
    ServerInfo,
    get_scheme,
    leakage_table,
    scheme_names,
)
from contactmatch.schemes.client import SchemeClient
from contactmatch.schemes.factory import make_client_tokens, make_server_tokens
from contactmatch.schemes.leakage import Leakage
from contactmatch.schemes.runner import RunReport, build_server, run_discovery
from contactmatch.schemes.server import SchemeServer

__all__ = [
    "METHODS",
    "TOKEN_FUNCTIONS",
    "Leakage",
    "MatchResult",
    "RunReport",
    "Scheme",
    "SchemeClient",
    "SchemeServer",
    "ServerInfo",
    "build_server",
    "get_scheme",
    "leakage_table",
    "make_client_tokens",
    "make_server_tokens",
    "run_discovery",
    "scheme_names",
]
