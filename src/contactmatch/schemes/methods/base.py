"""The protocol every membership method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from contactmatch.errors import MalformedMessage
from contactmatch.registry.shared import TokenRegistry
from contactmatch.schemes.base import METHOD_TRAITS, MethodName
from contactmatch.schemes.wire import LookupRequest, LookupResponse, Message

__all__ = ["MembershipMethod"]


class MembershipMethod(ABC):
    """Decides where a match happens and answers the server's side of it.

    Methods are stateless: everything they read is in the registry they are handed, so one
    instance serves every scheme that uses the method.
    """

    #: The method's name in scheme names (``oprf+filter``).
    name: ClassVar[MethodName]
    #: Request message types this method answers (after the token function's own round).
    requests: ClassVar[tuple[type[Message], ...]]

    @property
    def publishes_filter(self) -> bool:
        """Whether the method publishes a filter that clients download (from the registry of
        names, so the method object and :attr:`Scheme.publishes_filter` cannot disagree)."""
        return METHOD_TRAITS[self.name].publishes_filter

    def bits(self, registry: TokenRegistry, anonymity: int) -> int:
        """Bucket prefix bits published in the scheme's info (0 for methods without)."""
        del registry, anonymity
        return 0

    @abstractmethod
    def answer(self, msg: Message, registry: TokenRegistry, *, key_id: str, bits: int) -> Message:
        """Answer a request of one of :attr:`requests` over ``registry``."""

    def empty_lookup(self, msg: LookupRequest, key_id: str) -> LookupResponse:
        """The answer to the empty lookup a client of a method with no lookup round
        (``localfilter``, ``pir``) sends only to collect its personal (contacts-only)
        entries; a lookup with tokens is refused."""
        if msg.tokens:
            raise MalformedMessage(f"{self.name} answers no lookups")
        return LookupResponse(key_id=key_id, positions=[], user_ids=[])

    def refuse(self, msg: Message, scheme: str) -> MalformedMessage:
        """The error for a request this method does not answer."""
        return MalformedMessage(f"{scheme} does not answer {msg.NAME}")
