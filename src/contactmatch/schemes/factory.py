"""Build the server and client sides of a token function from keys and published info."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contactmatch.errors import InvalidKey, UnknownScheme
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Evaluation, Mode, OprfClient, OprfServer
from contactmatch.schemes.base import ServerInfo
from contactmatch.schemes.tokens import (
    ClientTokens,
    HmacClientTokens,
    HmacServerTokens,
    PublicClientTokens,
    PublicServerTokens,
    ServerTokens,
    e164_bytes,
)
from contactmatch.schemes.wire import EvalRequest, EvalResponse

__all__ = [
    "OprfClientTokens",
    "OprfServerTokens",
    "hmac_key_from",
    "make_client_tokens",
    "make_server_tokens",
]

_MODES = {"oprf": Mode.OPRF, "voprf": Mode.VOPRF}


def hmac_key_from(key: ServerKey) -> bytes:
    """The HMAC token key derived from a server key file, so one file serves every scheme."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"contactmatch/hmac-token/v1"
    ).derive(key.private_bytes())


class OprfServerTokens(ServerTokens):
    """RFC 9497 OPRF/VOPRF tokens: the server evaluates blinded elements it cannot read."""

    def __init__(self, keys: ServerKey | KeyRing, *, workers: int | None = None) -> None:
        self._server = OprfServer(keys, workers=workers)
        self.name = "voprf" if self._server.mode is Mode.VOPRF else "oprf"  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"OprfServerTokens({self.name}, key_id={self.key_id!r})"

    @property
    def oprf(self) -> OprfServer:
        return self._server

    @property
    def key_id(self) -> str:
        return self._server.current_key_id

    def tokens(self, numbers: Sequence[str]) -> list[bytes]:
        if not numbers:
            return []
        return list(self._server.evaluate_tokens(e164_bytes(numbers)).tokens)

    def evaluate(self, request: EvalRequest) -> EvalResponse:
        ev = self._server.evaluate_batch(request.elements)
        return EvalResponse(
            key_id=ev.key_id, elements=list(ev.evaluated_elements), proof=ev.proof or b""
        )

    def public_info(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "public_key": self._server.public_keys()[self.key_id]}


class OprfClientTokens(ClientTokens):
    """The app's side of OPRF/VOPRF: blind, send, verify the proof, unblind."""

    interactive = True

    def __init__(self, mode: Mode, scheme: str, public_keys: dict[str, bytes]) -> None:
        self._client = OprfClient(mode, public_keys=public_keys)
        self._mode = mode
        self.scheme = scheme

    def begin(self, numbers: Sequence[str]) -> tuple[object, EvalRequest]:
        state, blinded = self._client.blind(e164_bytes(numbers))
        return state, EvalRequest(scheme=self.scheme, elements=blinded)

    def finish(self, state: object, response: EvalResponse) -> tuple[str, list[bytes]]:
        ev = Evaluation(
            key_id=response.key_id,
            mode=self._mode,
            evaluated_elements=tuple(response.elements),
            proof=response.proof or None,
        )
        toks = self._client.finalize(state, ev)  # type: ignore[arg-type]
        return toks.key_id, list(toks.tokens)


def make_server_tokens(
    token: str, key: ServerKey | KeyRing | bytes | None = None, *, workers: int | None = None
) -> ServerTokens:
    """Server side of ``token``; ``key=None`` draws a fresh key (research harness).

    ``oprf`` / ``voprf`` take a :class:`ServerKey` or :class:`KeyRing` of the matching mode;
    ``hmac`` takes 32+ raw bytes or a ServerKey (HKDF-derived); public functions take none.
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
    raise UnknownScheme(f"unknown token function {token[:20]!r}")


def make_client_tokens(
    token: str, info: ServerInfo, *, pinned: dict[str, bytes] | None = None
) -> ClientTokens:
    """Client side of ``token`` for a server's published ``info``.

    ``pinned`` are VOPRF public keys obtained over an authenticated channel (shipped with the
    app); without them the client trusts ``info.public_key`` — enough to stop a server from
    using a per-user key only if every client saw the same info.
    """
    if token in ("plain", "sha256"):
        return PublicClientTokens(token)
    if token == "hmac":
        return HmacClientTokens(info.key_id, info.scheme)
    if token in _MODES:
        keys = pinned if pinned is not None else {info.key_id: info.public_key}
        return OprfClientTokens(_MODES[token], info.scheme, keys)
    raise UnknownScheme(f"unknown token function {token[:20]!r}")
