"""``plain`` and ``sha256``: token functions anyone can compute, so they resist nothing.

``plain`` matches the E.164 bytes themselves; ``sha256`` an unsalted hash of them, which is
what many messengers ship and which a numbering plan of ~10^9 numbers reverses in minutes.
They are here to be compared against, and so that their leakage is measured, not assumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from contactmatch.errors import InvalidInput
from contactmatch.schemes.tokens.base import NO_KEY, ClientTokens, ServerTokens, e164_bytes

__all__ = ["PublicClientTokens", "PublicServerTokens"]

PublicName = Literal["plain", "sha256"]


class PublicServerTokens(ServerTokens):
    """``plain`` (the E.164 bytes) or ``sha256`` (unsalted SHA-256, as some messengers ship)."""

    def __init__(self, name: str) -> None:
        self._name: PublicName
        if name == "plain":
            self._name = "plain"
        elif name == "sha256":
            self._name = "sha256"
        else:
            raise InvalidInput(f"not a public token function: {str(name)[:20]!r}")

    def __repr__(self) -> str:
        return f"PublicServerTokens({self._name!r})"

    @property
    def name(self) -> PublicName:
        return self._name

    @property
    def key_id(self) -> str:
        return NO_KEY

    def tokens(self, numbers: Sequence[str]) -> list[bytes]:
        raw = e164_bytes(numbers)
        if self._name == "plain":
            return raw
        return [hashlib.sha256(b).digest() for b in raw]


class PublicClientTokens(ClientTokens):
    """Client of a public token function: computes tokens locally, no round trip."""

    def __init__(self, name: str) -> None:
        self._server = PublicServerTokens(name)

    def local(self, numbers: Sequence[str]) -> list[bytes]:
        return self._server.tokens(numbers)
