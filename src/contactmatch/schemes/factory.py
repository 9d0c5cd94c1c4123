"""Moved: token functions live in :mod:`contactmatch.schemes.tokens` since 0.3.

This module only keeps the 0.2 import path working (``from contactmatch.schemes.factory
import make_server_tokens``); import from :mod:`contactmatch.schemes.tokens` instead.
"""

from __future__ import annotations

from contactmatch.schemes.tokens import (
    OprfClientTokens,
    OprfServerTokens,
    hmac_key_from,
    make_client_tokens,
    make_server_tokens,
)

__all__ = [
    "OprfClientTokens",
    "OprfServerTokens",
    "hmac_key_from",
    "make_client_tokens",
    "make_server_tokens",
]
