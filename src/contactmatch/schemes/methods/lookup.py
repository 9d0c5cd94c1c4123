"""``lookup``: the client sends its tokens, the server answers which are registered."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from contactmatch.registry.shared import TokenRegistry
from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.base import MembershipMethod
from contactmatch.schemes.wire import LookupRequest, LookupResponse, Message

__all__ = ["LookupMethod"]


class LookupMethod(MembershipMethod):
    """Screen the tokens by hash in the registry, confirm the candidates in full."""

    name: ClassVar[MethodName] = "lookup"
    requests: ClassVar[tuple[type[Message], ...]] = (LookupRequest,)

    def answer(self, msg: Message, registry: TokenRegistry, *, key_id: str, bits: int) -> Message:
        del bits
        assert isinstance(msg, LookupRequest)
        tokens = msg.tokens
        positions: list[int] = []
        user_ids: list[bytes] = []
        if tokens:
            cand = np.flatnonzero(registry.table.lookup_candidates(tokens)).tolist()
            found = registry.confirm([tokens[i] for i in cand]) if cand else []
            for i, uid in zip(cand, found, strict=True):
                if uid is not None:
                    positions.append(i)
                    user_ids.append(uid.encode("utf-8"))
        return LookupResponse(key_id=key_id, positions=positions, user_ids=user_ids)
