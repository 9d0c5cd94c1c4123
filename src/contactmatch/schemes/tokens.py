"""Token functions: what value of a normalised number is matched.

``plain`` and ``sha256`` are public (anyone can compute them, so they only resist nothing);
``hmac`` is keyed, but the server sees the numbers while keying them; ``oprf`` / ``voprf``
(RFC 9497) give the client the keyed value of its own numbers while the server sees only
blinded group elements. Each has a server side (tokens of registered numbers, and the
evaluation round for keyed functions) and a client side.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NoReturn

from contactmatch.errors import MalformedMessage, UnknownKeyId, VerificationFailed
from contactmatch.schemes.leakage import TokenTraits
from contactmatch.schemes.wire import EvalRequest, EvalResponse

__all__ = [
    "TOKEN_TRAITS",
    "ClientTokens",
    "HmacClientTokens",
    "HmacServerTokens",
    "PublicClientTokens",
    "PublicServerTokens",
    "ServerTokens",
]

_E164 = re.compile(rb"\+[1-9][0-9]{6,14}")
NO_KEY = "none"

TOKEN_TRAITS: dict[str, TokenTraits] = {
    "plain": TokenTraits(
        public=True,
        server_sees_inputs=False,
        keyed=False,
        clear=True,
        thief_reverses="every registered number, in the clear",
    ),
    "sha256": TokenTraits(
        public=True,
        server_sees_inputs=False,
        keyed=False,
        thief_reverses=(
            "every registered number: an unsalted hash of a ~10^9-number plan is reversed by "
            "brute force in minutes (see `contactmatch audit`)"
        ),
    ),
    "hmac": TokenTraits(
        public=False,
        server_sees_inputs=True,
        keyed=True,
        thief_reverses="nothing without the HMAC key file; everything with it",
    ),
    "oprf": TokenTraits(
        public=False,
        server_sees_inputs=False,
        keyed=True,
        thief_reverses="nothing without the OPRF key file; everything with it",
    ),
    "voprf": TokenTraits(
        public=False,
        server_sees_inputs=False,
        keyed=True,
        verifiable=True,
        thief_reverses="nothing without the OPRF key file; everything with it",
    ),
}


def e164_bytes(numbers: Sequence[str]) -> list[bytes]:
    """Numbers as the ASCII bytes every token function hashes; rejects non-E.164 input."""
    out = []
    for n in numbers:
        b = n.encode("ascii", "replace") if isinstance(n, str) else b""
        if not _E164.fullmatch(b):
            # Tokens of anything but normalised numbers would never match; refuse early.
            raise MalformedMessage("token inputs must be normalised E.164 numbers")
        out.append(b)
    return out


class ServerTokens(ABC):
    """The server side of a token function."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def key_id(self) -> str:
        """Identifies the key tokens were made under (``"none"`` for public functions)."""

    @abstractmethod
    def tokens(self, numbers: Sequence[str]) -> list[bytes]:
        """Tokens of registered numbers (the server precomputes these at registration)."""

    def evaluate(self, request: EvalRequest) -> EvalResponse:
        """Round 1 of a keyed function; public functions have no such round."""
        del request
        raise MalformedMessage(f"{self.name} tokens need no evaluation round")

    def public_info(self) -> dict[str, Any]:
        """What a client needs to compute or verify tokens (never secret)."""
        return {"key_id": self.key_id}


class ClientTokens:
    """The client side of a token function.

    Public functions override :meth:`local`; keyed (interactive) ones override
    :meth:`begin` and :meth:`finish`. Calling the other kind's methods is a protocol error.
    """

    interactive: ClassVar[bool] = False

    def local(self, numbers: Sequence[str]) -> list[bytes]:
        """Tokens computed without the server (public functions only)."""
        del numbers
        raise MalformedMessage("this token function needs the server")

    def begin(self, numbers: Sequence[str]) -> tuple[object, EvalRequest]:
        """Start round 1: return opaque state and the request to send."""
        del numbers
        raise MalformedMessage("this token function needs no evaluation round")

    def finish(self, state: object, response: EvalResponse) -> tuple[str, list[bytes]]:
        """Finish round 1: the key id and the tokens, aligned with ``begin``'s numbers."""
        del state, response
        raise MalformedMessage("this token function needs no evaluation round")


class PublicServerTokens(ServerTokens):
    """``plain`` (the E.164 bytes) or ``sha256`` (unsalted SHA-256, as some messengers ship)."""

    def __init__(self, name: str) -> None:
        if name not in ("plain", "sha256"):
            raise ValueError(f"not a public token function: {name}")
        self.name = name  # type: ignore[misc]

    @property
    def key_id(self) -> str:
        return NO_KEY

    def tokens(self, numbers: Sequence[str]) -> list[bytes]:
        raw = e164_bytes(numbers)
        if self.name == "plain":
            return raw
        return [hashlib.sha256(b).digest() for b in raw]


class PublicClientTokens(ClientTokens):
    """Client of a public token function: computes tokens locally, no round trip."""

    def __init__(self, name: str) -> None:
        self._server = PublicServerTokens(name)

    def local(self, numbers: Sequence[str]) -> list[bytes]:
        return self._server.tokens(numbers)


class HmacServerTokens(ServerTokens):
    """HMAC-SHA256 under a server key: a stolen database is useless without the key file,
    but the server sees every number it is asked to key."""

    name = "hmac"

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 32:
            raise ValueError("an HMAC key must be at least 32 bytes")
        self._key = key
        self._key_id = hashlib.sha256(b"contactmatch/hmac-key-id/v1" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"HmacServerTokens(key_id={self._key_id!r})"

    def __reduce__(self) -> NoReturn:
        # It holds the raw HMAC key: pickles end up in caches, queues and crash dumps.
        raise TypeError("HmacServerTokens holds a key and cannot be pickled")

    @property
    def key_id(self) -> str:
        return self._key_id

    def tokens(self, numbers: Sequence[str]) -> list[bytes]:
        key = self._key
        return [_hmac.digest(key, b, "sha256") for b in e164_bytes(numbers)]

    def evaluate(self, request: EvalRequest) -> EvalResponse:
        try:
            numbers = [e.decode("ascii") for e in request.elements]
        except UnicodeDecodeError as exc:
            raise MalformedMessage("hmac inputs must be E.164 numbers") from exc
        return EvalResponse(key_id=self._key_id, elements=self.tokens(numbers))


class HmacClientTokens(ClientTokens):
    """Client of ``hmac``: sends its numbers, receives their keyed tokens."""

    interactive = True

    def __init__(self, key_id: str, scheme: str) -> None:
        self.key_id = key_id
        self.scheme = scheme

    def begin(self, numbers: Sequence[str]) -> tuple[object, EvalRequest]:
        raw = e164_bytes(numbers)
        return len(raw), EvalRequest(scheme=self.scheme, elements=raw)

    def finish(self, state: object, response: EvalResponse) -> tuple[str, list[bytes]]:
        if not _hmac.compare_digest(response.key_id.encode(), self.key_id.encode()):
            raise UnknownKeyId("the server answered under a different key; refresh its info")
        if len(response.elements) != state or any(len(t) != 32 for t in response.elements):
            raise VerificationFailed()
        return response.key_id, list(response.elements)
