"""``localfilter``: one round; the published filter alone says which contacts are registered.

For messengers that identify a user by the mobile number itself: the app needs to know which
contacts are registered, not a user id, so it never asks the server about its filter hits.
The filter's false-positive rate is sized for that (:data:`LOCAL_FPR`): a 10,000-contact
sync misreports a contact with probability at most 2^-20, and a false report is caught when
the app first contacts that number. The server sees the evaluation round only.
"""

from __future__ import annotations

from typing import ClassVar, Final

from contactmatch.registry.shared import TokenRegistry
from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.base import MembershipMethod
from contactmatch.schemes.wire import LookupRequest, Message

__all__ = ["LOCAL_BOOK", "LOCAL_FPR", "LocalFilterMethod"]

#: The phone book size the false-report bound is stated for.
LOCAL_BOOK: Final = 10_000
#: Per-test false-positive rate: 2^-34 <= 2^-20 / 10,000 (= 2^-33.29), so by the union bound
#: a sync of 10,000 unregistered contacts reports one of them with probability <= 2^-20.
LOCAL_FPR: Final = 2.0**-34


class LocalFilterMethod(MembershipMethod):
    """Answers no question about tokens: matching is the client's filter test alone."""

    name: ClassVar[MethodName] = "localfilter"
    requests: ClassVar[tuple[type[Message], ...]] = (LookupRequest,)

    def answer(self, msg: Message, registry: TokenRegistry, *, key_id: str, bits: int) -> Message:
        del registry, bits
        assert isinstance(msg, LookupRequest)
        return self.empty_lookup(msg, key_id)
