"""The two sides of a token function, as abstract classes, and the input check they share."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Final

from contactmatch.errors import MalformedMessage
from contactmatch.schemes.base import TokenName
from contactmatch.schemes.wire import EvalRequest, EvalResponse

__all__ = ["NO_KEY", "ClientTokens", "ServerTokens", "e164_bytes"]

_E164: Final = re.compile(rb"\+[1-9][0-9]{6,14}")
#: The key id of public token functions, which have no key.
NO_KEY: Final = "none"


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

    @property
    @abstractmethod
    def name(self) -> TokenName:
        """The token function's name in scheme names (``oprf`` in ``oprf+filter``)."""

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
