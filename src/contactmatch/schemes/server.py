"""The server side of a scheme: request bytes in, response bytes out, over a shared registry.

Sans-I/O: :meth:`SchemeServer.handle` takes a request's bytes and returns the response's
bytes; transports (in-process, HTTP) only move them. Every request is decoded with length
checks before any work, and a request for another scheme or key is refused. The token
function answers its own evaluation round; everything else goes to the scheme's
:class:`~contactmatch.schemes.methods.MembershipMethod` over the
:class:`~contactmatch.registry.shared.TokenRegistry` of its token function, which a
:class:`~contactmatch.service.DiscoveryServer` shares between every scheme of that function.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from contactmatch.errors import InvalidInput, MalformedMessage, UnknownKeyId
from contactmatch.registry.shared import TokenRegistry
from contactmatch.registry.table import RegistryTable
from contactmatch.schemes.base import Scheme, ServerInfo, get_scheme
from contactmatch.schemes.methods import MembershipMethod, method_for
from contactmatch.schemes.methods.localfilter import LOCAL_FPR
from contactmatch.schemes.tokens import ServerTokens
from contactmatch.schemes.wire import EvalRequest, Message, decode

__all__ = ["SchemeServer"]


class SchemeServer:
    """Answers one scheme's requests.

    Args:
        scheme: the scheme (or its name).
        tokens: the server side of the scheme's token function.
        registry: the registry of that token function, shared with the other schemes that
            use it; a new, standalone one (confirming in memory) when omitted.
        anonymity: target number of registered users per bucket (``bucket`` method).
        filter_fpr: false-positive rate of the published filter (``filter`` method).

    Raises:
        UnknownScheme: no scheme has that name.
        InvalidInput: ``tokens`` is another token function than the scheme's.
    """

    def __init__(
        self,
        scheme: Scheme | str,
        tokens: ServerTokens,
        *,
        registry: TokenRegistry | None = None,
        anonymity: int = 64,
        filter_fpr: float = 2.0**-20,
    ) -> None:
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        if tokens.name != self.scheme.token:
            raise InvalidInput(f"{self.scheme.name} needs {self.scheme.token} tokens")
        self.token_fn = tokens
        self.method: MembershipMethod = method_for(self.scheme.method)
        if registry is None:  # (not ``or``: an empty registry is falsy)
            registry = TokenRegistry(RegistryTable.empty(key_id=tokens.key_id))
        self.registry = registry
        self.anonymity = anonymity
        # localfilter's filter is the whole answer: its rate is set by the method, not here.
        self.filter_fpr = LOCAL_FPR if self.scheme.decides_locally else filter_fpr

    def __repr__(self) -> str:
        return f"<SchemeServer {self.scheme.name} users={len(self.registry)}>"

    # -- standalone registry (the research harness) ------------------------------------------
    def register(self, user_ids: Sequence[str], numbers: Sequence[str]) -> list[bytes]:
        """Compute and register tokens of ``numbers``; returns the tokens."""
        if len(user_ids) != len(numbers):
            raise MalformedMessage("user_ids and numbers differ in length")
        toks = self.token_fn.tokens(numbers)
        self.registry.apply(list(zip(user_ids, toks, strict=True)), [])
        return toks

    def add_tokens(self, user_ids: Sequence[str], tokens: Sequence[bytes]) -> None:
        """Register tokens computed earlier (one token function, several schemes)."""
        self.registry.apply(list(zip(user_ids, tokens, strict=True)), [])

    def unregister(self, user_ids: Sequence[str]) -> None:
        """Remove users from every answer (and, as a delta, from the published filter)."""
        self.registry.apply([], list(user_ids))

    # -- published parameters ---------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.method.bits(self.registry, self.anonymity)

    def info(self) -> ServerInfo:
        """Public parameters a client needs before it can prepare a request."""
        pub = self.token_fn.public_info()
        return ServerInfo(
            scheme=self.scheme.name,
            key_id=self.token_fn.key_id,
            bits=self.bits,
            public_key=bytes(pub.get("public_key", b"")),
            filter_version=self.filter_version,
            extra={"pir": self.registry.pir().info()} if self.scheme.retrieves_privately else {},
        )

    @property
    def filter_version(self) -> int:
        """Version of the published filter: a digest of its content, the same in every
        process holding the same membership (0 for methods that publish none)."""
        if not self.method.publishes_filter:
            return 0
        return self.registry.publisher(self.filter_fpr).version

    def published_filter(self, since: int | None = None) -> bytes:
        """The filter of registered tokens: whole, or a delta from version ``since`` when this
        process can still patch from it (see :mod:`contactmatch.registry.publisher`)."""
        if not self.method.publishes_filter:
            raise MalformedMessage(f"{self.scheme.name} publishes no filter")
        return self.registry.publisher(self.filter_fpr).published(since)

    @property
    def hint_version(self) -> int:
        """Version of the PIR database (0 for methods without one)."""
        return self.registry.pir().version if self.scheme.retrieves_privately else 0

    def published_hint(self, since: int | None = None) -> bytes:
        """The PIR hint, whole or as a delta from version ``since`` (``pir`` only)."""
        if not self.scheme.retrieves_privately:
            raise MalformedMessage(f"{self.scheme.name} publishes no PIR hint")
        return self.registry.pir().published(since)

    # -- requests ---------------------------------------------------------------------------
    def _check(self, scheme: str, key_id: str | None) -> None:
        if scheme != self.scheme.name:
            raise MalformedMessage("request is for another scheme")
        if key_id is not None and not hmac.compare_digest(
            key_id.encode(), self.token_fn.key_id.encode()
        ):
            raise UnknownKeyId("request names a key this server does not serve")

    def handle(self, request: bytes) -> bytes:
        """Answer one request; raises MalformedMessage / UnknownKeyId / VerificationFailed."""
        return self.handle_message(decode(request)).encode()

    def handle_message(self, msg: Message) -> Message:
        """Answer an already decoded request (used by transports that decode JSON)."""
        if isinstance(msg, EvalRequest):
            self._check(msg.scheme, None)
            if not self.scheme.interactive:
                raise MalformedMessage(f"{self.scheme.name} has no evaluation round")
            return self.token_fn.evaluate(msg)
        if not isinstance(msg, self.method.requests):
            raise self.method.refuse(msg, self.scheme.name)
        self._check(getattr(msg, "scheme", ""), getattr(msg, "key_id", None))
        return self.method.answer(msg, self.registry, key_id=self.token_fn.key_id, bits=self.bits)
