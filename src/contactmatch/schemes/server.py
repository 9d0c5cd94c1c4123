"""The server side of a scheme: registered tokens in, request bytes in, response bytes out.

Sans-I/O: :meth:`SchemeServer.handle` takes a request's bytes and returns the response's
bytes; transports (in-process, HTTP) only move them. Every request is decoded with length
checks before any work, and a request for another scheme or key is refused.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Sequence

from contactmatch.errors import InvalidInput, MalformedMessage, UnknownKeyId
from contactmatch.filters import GolombFilter
from contactmatch.schemes.base import Scheme, ServerInfo, get_scheme
from contactmatch.schemes.table import TokenTable, bits_for
from contactmatch.schemes.tokens import ServerTokens
from contactmatch.schemes.wire import (
    BucketRequest,
    BucketResponse,
    EvalRequest,
    LookupRequest,
    LookupResponse,
    Message,
    decode,
)

__all__ = ["SchemeServer"]


class SchemeServer:
    """Answers one scheme's requests over a table of registered tokens.

    Args:
        scheme: the scheme (or its name).
        tokens: the server side of the scheme's token function.
        anonymity: target number of registered users per bucket (``bucket`` method).
        filter_fpr: false-positive rate of the published filter (``filter`` method).
    """

    def __init__(
        self,
        scheme: Scheme | str,
        tokens: ServerTokens,
        *,
        anonymity: int = 64,
        filter_fpr: float = 2.0**-20,
    ) -> None:
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        if tokens.name != self.scheme.token:
            raise ValueError(f"{self.scheme.name} needs {self.scheme.token} tokens")
        self.token_fn = tokens
        self.table = TokenTable(uniform_tokens=self.scheme.token != "plain")
        self.anonymity = anonymity
        self.filter_fpr = filter_fpr
        self._lock = threading.RLock()
        self._filter: GolombFilter | None = None
        self._filter_blob: tuple[int, bytes] | None = None
        self._filter_capacity = 0
        self._next_version = 1

    # -- registry ---------------------------------------------------------------------------
    def register(self, user_ids: Sequence[str], numbers: Sequence[str]) -> list[bytes]:
        """Compute and index tokens of registered numbers; returns the tokens."""
        if len(user_ids) != len(numbers):
            raise MalformedMessage("user_ids and numbers differ in length")
        toks = self.token_fn.tokens(numbers)
        self.add_tokens(user_ids, toks)
        return toks

    def add_tokens(self, user_ids: Sequence[str], tokens: Sequence[bytes]) -> None:
        """Index tokens computed earlier (e.g. loaded from a store)."""
        with self._lock:
            gone = self.table.add(user_ids, tokens)
            if self._filter is not None:
                if len(self.table) > self._filter_capacity:
                    self._filter = None  # outgrown: the next publication is a fresh build
                    return
                if gone:
                    self._filter.remove_many(gone)
                if tokens:
                    self._filter.add_many(list(tokens))

    def unregister(self, user_ids: Sequence[str]) -> list[bytes]:
        """Remove users from every answer (and, as a delta, from the published filter)."""
        with self._lock:
            gone = self.table.remove(user_ids)
            if gone and self._filter is not None:
                self._filter.remove_many(gone)
            return gone

    @property
    def bits(self) -> int:
        return bits_for(len(self.table), self.anonymity) if self.scheme.method == "bucket" else 0

    def info(self) -> ServerInfo:
        """Public parameters a client needs before it can prepare a request."""
        pub = self.token_fn.public_info()
        return ServerInfo(
            scheme=self.scheme.name,
            key_id=self.token_fn.key_id,
            bits=self.bits,
            public_key=bytes(pub.get("public_key", b"")),
            filter_version=self.filter_version,
        )

    @property
    def filter_version(self) -> int:
        """Version of the published filter (0 before the first publication)."""
        f = self._filter
        return f.version if f is not None else 0

    def published_filter(self, since: int | None = None) -> bytes:
        """The filter of registered tokens (``filter`` method): the whole filter, or, when
        ``since`` names a version still in the history, just the delta from it.

        The filter is built on first use and then updated in place as users come and go, so
        each change is a small delta; it is rebuilt (new salt, clients download it whole) only
        when the registry outgrows the capacity its false-positive rate was sized for.
        """
        if self.scheme.method != "filter":
            raise MalformedMessage(f"{self.scheme.name} publishes no filter")
        with self._lock:
            f = self._filter
            if f is None:
                n = len(self.table)
                self._filter_capacity = max(2 * n, 1024)
                # Versions keep rising across rebuilds, so a client's old version number can
                # never name a version of the new filter.
                f = GolombFilter.build(
                    self.table.tokens(),
                    fpr=self.filter_fpr,
                    capacity=self._filter_capacity,
                    version=self._next_version,
                    key_id=self.token_fn.key_id,
                )
                self._filter = f
            self._next_version = f.version + 1
            if since is not None and since != f.version:
                try:
                    return f.delta(since)
                except InvalidInput:
                    pass  # too old or from another build: fall back to the whole filter
            if self._filter_blob is None or self._filter_blob[0] != f.version:
                self._filter_blob = (f.version, f.to_bytes())
            return self._filter_blob[1]

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
        if isinstance(msg, LookupRequest):
            self._check(msg.scheme, msg.key_id)
            if self.scheme.method == "bucket":
                raise MalformedMessage("bucket schemes answer bucket requests only")
            found = self.table.lookup(msg.tokens)
            positions = [i for i, u in enumerate(found) if u is not None]
            return LookupResponse(
                key_id=self.token_fn.key_id,
                positions=positions,
                user_ids=[str(found[i]).encode() for i in positions],
            )
        if isinstance(msg, BucketRequest):
            self._check(msg.scheme, msg.key_id)
            if self.scheme.method != "bucket":
                raise MalformedMessage(f"{self.scheme.name} answers no bucket requests")
            if msg.bits != self.bits:
                raise MalformedMessage("bucket size changed; refresh the server info")
            prefixes = sorted(set(msg.prefixes))
            buckets = self.table.bucket(prefixes, msg.bits)
            return BucketResponse(
                key_id=self.token_fn.key_id,
                bits=msg.bits,
                prefixes=prefixes,
                counts=[len(b) for b in buckets],
                fingerprints=[fp for b in buckets for fp, _ in b],
                sealed=[s for b in buckets for _, s in b],
            )
        raise MalformedMessage(f"a server does not accept {msg.NAME}")
