"""``bucket``: k-anonymity buckets; the client sends short prefixes and matches locally."""

from __future__ import annotations

from typing import ClassVar

from contactmatch.errors import MalformedMessage
from contactmatch.registry.shared import TokenRegistry
from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.base import MembershipMethod
from contactmatch.schemes.sealed import bits_for
from contactmatch.schemes.wire import BucketRequest, BucketResponse, Message

__all__ = ["BucketMethod"]


class BucketMethod(MembershipMethod):
    """Answer every registered ``(fingerprint, sealed user id)`` under each asked prefix."""

    name: ClassVar[MethodName] = "bucket"
    requests: ClassVar[tuple[type[Message], ...]] = (BucketRequest,)

    def bits(self, registry: TokenRegistry, anonymity: int) -> int:
        return bits_for(len(registry), anonymity)

    def answer(self, msg: Message, registry: TokenRegistry, *, key_id: str, bits: int) -> Message:
        assert isinstance(msg, BucketRequest)
        if msg.bits != bits:
            raise MalformedMessage("bucket size changed; refresh the server info")
        prefixes = sorted(set(msg.prefixes))
        found = registry.table.bucket(prefixes, bits)
        return BucketResponse(
            key_id=key_id,
            bits=bits,
            prefixes=prefixes,
            counts=found.counts.tolist(),
            fingerprints=found.fingerprint_list(),
            sealed=found.sealed_list(),
        )
