"""Token functions: what value of a normalised number is matched.

``plain`` and ``sha256`` are public (anyone can compute them, so they resist nothing);
``hmac`` is keyed, but the server sees the numbers while keying them; ``oprf`` / ``voprf``
(RFC 9497) give the client the keyed value of its own numbers while the server sees only
blinded group elements. Each has a server side (tokens of registered numbers, and the
evaluation round for keyed functions) and a client side; :func:`make_server_tokens` and
:func:`make_client_tokens` build either from a name, so callers never branch on names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from contactmatch.errors import InvalidKey, UnknownScheme
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode
from contactmatch.schemes.base import TOKEN_TRAITS, ServerInfo, TokenName
from contactmatch.schemes.tokens.base import NO_KEY, ClientTokens, ServerTokens, e164_bytes
from contactmatch.schemes.tokens.hmac import (
    HMAC_KEY_LABEL,
    HmacClientTokens,
    HmacServerTokens,
    hmac_key_from,
)
from contactmatch.schemes.tokens.oprf import OprfClientTokens, OprfServerTokens
from contactmatch.schemes.tokens.public import PublicClientTokens, PublicServerTokens

__all__ = [
    "HMAC_KEY_LABEL",
    "NO_KEY",
    "TOKEN_TRAITS",
    "ClientTokens",
    "HmacClientTokens",
    "HmacServerTokens",
    "OprfClientTokens",
    "OprfServerTokens",
    "PublicClientTokens",
    "PublicServerTokens",
    "ServerTokens",
    "e164_bytes",
    "hmac_key_from",
    "make_client_tokens",
    "make_server_tokens",
]

# The OPRF mode behind each oblivious token function.
_MODES: Final[dict[str, Mode]] = {"oprf": Mode.OPRF, "voprf": Mode.VOPRF}


def make_server_tokens(
    token: TokenName | str,
    key: ServerKey | KeyRing | bytes | None = None,
    *,
    workers: int | None = None,
) -> ServerTokens:
    """Server side of ``token``; ``key=None`` draws a fresh key (research harness).

    ``oprf`` / ``voprf`` take a :class:`ServerKey` or :class:`KeyRing` of the matching mode;
    ``hmac`` takes 32+ raw bytes or a ServerKey (see :func:`hmac_key_from`); public
    functions take none.

    Raises:
        UnknownScheme: no token function has that name.
        InvalidKey: the key does not suit the token function.
    """
    if token in ("plain", "sha256"):
        return PublicServerTokens(token)
    if token == "hmac":
        if key is None:
            key = ServerKey.generate()
        if isinstance(key, KeyRing):
            key = key.current
        raw = hmac_key_from(key) if isinstance(key, ServerKey) else key
        return HmacServerTokens(raw)
    if token in _MODES:
        mode = _MODES[token]
        if key is None:
            key = ServerKey.generate(mode)
        if isinstance(key, bytes):
            raise InvalidKey("OPRF tokens need a ServerKey, not raw bytes")
        if key.mode is not mode:
            raise InvalidKey(f"{token} needs a key of mode {mode.name}")
        return OprfServerTokens(key, workers=workers)
    raise UnknownScheme(f"unknown token function {str(token)[:20]!r}")


def make_client_tokens(
    token: TokenName | str, info: ServerInfo, *, pinned: Mapping[str, bytes] | None = None
) -> ClientTokens:
    """Client side of ``token`` for a server's published ``info``.

    ``pinned`` are VOPRF public keys obtained over an authenticated channel (shipped with the
    app); without them the client trusts ``info.public_key`` — enough to stop a server from
    using a per-user key only if every client saw the same info.

    Raises:
        UnknownScheme: no token function has that name.
    """
    if token in ("plain", "sha256"):
        return PublicClientTokens(token)
    if token == "hmac":
        return HmacClientTokens(info.key_id, info.scheme)
    if token in _MODES:
        keys = pinned if pinned is not None else {info.key_id: info.public_key}
        return OprfClientTokens(_MODES[token], info.scheme, keys)
    raise UnknownScheme(f"unknown token function {str(token)[:20]!r}")
