"""``oprf`` / ``voprf`` (RFC 9497, ristretto255-SHA512): keyed tokens the server computes
without seeing the numbers; VOPRF proofs let clients check everyone gets the same key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from contactmatch.errors import ProtocolStateError
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import BlindState, Evaluation, Mode, OprfClient, OprfServer
from contactmatch.schemes.tokens.base import ClientTokens, ServerTokens, e164_bytes
from contactmatch.schemes.wire import EvalRequest, EvalResponse

__all__ = ["OprfClientTokens", "OprfServerTokens"]


class OprfServerTokens(ServerTokens):
    """RFC 9497 OPRF/VOPRF tokens: the server evaluates blinded elements it cannot read."""

    def __init__(self, keys: ServerKey | KeyRing, *, workers: int | None = None) -> None:
        self._server = OprfServer(keys, workers=workers)

    def __repr__(self) -> str:
        return f"OprfServerTokens({self.name}, key_id={self.key_id!r})"

    @property
    def name(self) -> Literal["oprf", "voprf"]:
        return "voprf" if self._server.mode is Mode.VOPRF else "oprf"

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

    def __init__(self, mode: Mode, scheme: str, public_keys: Mapping[str, bytes]) -> None:
        self._client = OprfClient(mode, public_keys=public_keys)
        self._mode = mode
        self.scheme = scheme

    def begin(self, numbers: Sequence[str]) -> tuple[object, EvalRequest]:
        state, blinded = self._client.blind(e164_bytes(numbers))
        return state, EvalRequest(scheme=self.scheme, elements=blinded)

    def finish(self, state: object, response: EvalResponse) -> tuple[str, list[bytes]]:
        if not isinstance(state, BlindState):
            raise ProtocolStateError("finish() needs the state begin() returned")
        ev = Evaluation(
            key_id=response.key_id,
            mode=self._mode,
            evaluated_elements=tuple(response.elements),
            proof=response.proof or None,
        )
        toks = self._client.finalize(state, ev)
        return toks.key_id, list(toks.tokens)
