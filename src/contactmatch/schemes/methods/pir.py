"""``pir``: filter hits' entries retrieved by single-server PIR; the server learns not which.

The client tests its tokens against the published filter as in ``filter``, then retrieves the
database column of each hit (:mod:`contactmatch.registry.pir`) with SimplePIR queries
(:mod:`contactmatch.hazmat.pir`), padded to a whole batch, and opens its own sealed entries.
The server multiplies its database by the batch and learns only the batch's size.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from contactmatch.errors import MalformedMessage
from contactmatch.registry.shared import TokenRegistry
from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.base import MembershipMethod
from contactmatch.schemes.wire import LookupRequest, Message, PirRequest, PirResponse

__all__ = ["PirMethod"]


class PirMethod(MembershipMethod):
    """Answer a batch of PIR queries over the registry's PIR database."""

    name: ClassVar[MethodName] = "pir"
    requests: ClassVar[tuple[type[Message], ...]] = (PirRequest, LookupRequest)

    def answer(self, msg: Message, registry: TokenRegistry, *, key_id: str, bits: int) -> Message:
        del bits
        if isinstance(msg, LookupRequest):
            return self.empty_lookup(msg, key_id)
        assert isinstance(msg, PirRequest)
        pub = registry.pir()
        cols = pub.params.cols
        if len(msg.queries) != msg.batch * cols * 4:
            raise MalformedMessage(f"PIR queries must be {msg.batch} rows of {cols} u32 words")
        queries = np.frombuffer(msg.queries, dtype="<u4").astype(np.uint32).reshape(msg.batch, cols)
        version, delta, answers = pub.answer(msg.version, queries)
        return PirResponse(
            key_id=key_id,
            version=version,
            delta=delta,
            batch=msg.batch,
            answers=answers.astype("<u4").tobytes(),
        )
