"""``hmac``: HMAC-SHA256 under a server key.

A stolen database is useless without the key file, but the server sees every number it is
asked to key: the baseline that shows what an OPRF adds.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from collections.abc import Sequence
from typing import Final, Literal, NoReturn

from contactmatch.errors import InvalidKey, MalformedMessage, UnknownKeyId, VerificationFailed
from contactmatch.keys import ServerKey
from contactmatch.schemes.tokens.base import ClientTokens, ServerTokens, e164_bytes
from contactmatch.schemes.wire import EvalRequest, EvalResponse

__all__ = ["HMAC_KEY_LABEL", "HmacClientTokens", "HmacServerTokens", "hmac_key_from"]

#: The :meth:`ServerKey.derive_secret` label of the HMAC token key (never change it: every
#: registered hmac token depends on it).
HMAC_KEY_LABEL: Final = "contactmatch/hmac-token/v1"


def hmac_key_from(key: ServerKey) -> bytes:
    """The HMAC token key derived from a server key file, so one file serves every scheme."""
    return key.derive_secret(HMAC_KEY_LABEL)


class HmacServerTokens(ServerTokens):
    """HMAC-SHA256 tokens under a raw key of 32 bytes or more."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 32:
            raise InvalidKey("an HMAC key must be at least 32 bytes")
        self._key = key
        self._key_id = hashlib.sha256(b"contactmatch/hmac-key-id/v1" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"HmacServerTokens(key_id={self._key_id!r})"

    def __reduce__(self) -> NoReturn:
        # It holds the raw HMAC key: pickles end up in caches, queues and crash dumps.
        raise TypeError("HmacServerTokens holds a key and cannot be pickled")

    @property
    def name(self) -> Literal["hmac"]:
        return "hmac"

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
