"""The client side of a scheme: a small state machine over request/response bytes.

``start(numbers)`` returns the first request (or None when nothing needs asking), each
``receive(response)`` returns the next request or None when the discovery is complete, and
``result`` holds the matches. Keyed schemes take two rounds (evaluate, then match); public
ones take one; a filter client whose filter has no hits takes none.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from enum import Enum

from contactmatch.errors import (
    MalformedMessage,
    ProtocolStateError,
    UnknownKeyId,
    VerificationFailed,
)
from contactmatch.filters import Filter, load_filter
from contactmatch.schemes.base import MatchResult, Scheme, ServerInfo, get_scheme
from contactmatch.schemes.pirclient import PirHint, PirRetrieval
from contactmatch.schemes.sealed import bucket_of, open_entries
from contactmatch.schemes.tokens import ClientTokens
from contactmatch.schemes.wire import (
    BucketRequest,
    BucketResponse,
    EvalResponse,
    LookupRequest,
    LookupResponse,
    decode,
)

__all__ = ["SchemeClient", "filter_for"]


def filter_for(info: ServerInfo, data: bytes | Filter) -> Filter:
    """The published filter (decoded if need be), checked to be built under ``info``'s key.

    Every client installs a whole filter through here, so a filter of a rotated key is
    refused in one place rather than matched against tokens it cannot contain.

    Raises:
        MalformedMessage: ``data`` is not a filter.
        UnknownKeyId: the filter was built under another key; download it again.
    """
    flt = load_filter(data) if isinstance(data, bytes | bytearray | memoryview) else data
    if not hmac.compare_digest(flt.key_id.encode(), info.key_id.encode()):
        raise UnknownKeyId("the filter was built under another key; download it again")
    return flt


class _State(Enum):
    NEW = "new"
    EVAL = "awaiting evaluation"
    MATCH = "awaiting match"
    DONE = "done"


class SchemeClient:
    """One discovery on the client.

    Args:
        scheme: the scheme (or its name); must match ``info.scheme``.
        info: the server's published info (key id, bucket bits, public key).
        tokens: the client side of the token function.
        filter_blob: the published filter, serialised or loaded (filter-publishing methods).
        hint: the PIR hint held (``pir`` only), serialised or loaded; answers patch it.
        cache: token cache ``{(key_id, number): token}`` reused across syncs; numbers whose
            token is cached under the current key are not evaluated again.
    """

    def __init__(
        self,
        scheme: Scheme | str,
        info: ServerInfo,
        tokens: ClientTokens,
        *,
        filter_blob: bytes | Filter | None = None,
        hint: bytes | PirHint | None = None,
        cache: dict[tuple[str, str], bytes] | None = None,
    ) -> None:
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        if info.scheme != self.scheme.name:
            raise MalformedMessage("server info is for another scheme")
        self.info = info
        self.token_fn = tokens
        self.cache = cache if cache is not None else {}
        self._filter: Filter | None = None
        if self.scheme.publishes_filter:
            if filter_blob is None:
                raise MalformedMessage("a filter scheme needs the published filter")
            self._filter = filter_for(info, filter_blob)
        self._hint: PirHint | None = None
        self._pir: PirRetrieval | None = None
        if self.scheme.retrieves_privately:
            if hint is None:
                raise MalformedMessage("a pir scheme needs the PIR hint")
            self._hint = hint if isinstance(hint, PirHint) else PirHint(hint)
        self._state = _State.NEW
        self._numbers: list[str] = []
        self._tokens: dict[str, bytes] = {}
        self._eval_state: object = None
        self._pending: list[str] = []
        self._asked: list[str] = []
        self._matches: dict[str, str] = {}
        self.rounds = 0

    # -- protocol ---------------------------------------------------------------------------
    def start(self, numbers: Sequence[str]) -> bytes | None:
        """Begin a discovery of ``numbers`` (normalised E.164); returns the first request.

        Raises:
            ProtocolStateError: this client already ran a discovery (make a new one).
        """
        if self._state is not _State.NEW:
            raise ProtocolStateError("a SchemeClient runs one discovery; make a new one")
        self._numbers = list(dict.fromkeys(numbers))
        key_id = self.info.key_id
        if self.scheme.interactive:
            for n in self._numbers:
                tok = self.cache.get((key_id, n))
                if tok is not None:
                    self._tokens[n] = tok
            self._pending = [n for n in self._numbers if n not in self._tokens]
            if self._pending:
                self._eval_state, req = self.token_fn.begin(self._pending)
                self._state = _State.EVAL
                self.rounds += 1
                return req.encode()
        else:
            self._tokens = dict(zip(self._numbers, self.token_fn.local(self._numbers), strict=True))
        return self._match_request()

    def receive(self, response: bytes) -> bytes | None:
        """Consume a response; returns the next request, or None when done.

        Raises:
            ProtocolStateError: no response is expected (before :meth:`start`, or done).
            MalformedMessage: the response does not decode or does not fit the request.
            UnknownKeyId, VerificationFailed: the evaluation is under another key, or its
                elements or proof do not verify.
        """
        if self._state is _State.EVAL:
            msg = decode(response, EvalResponse)
            key_id, toks = self.token_fn.finish(self._eval_state, msg)
            if len(toks) != len(self._pending):
                raise VerificationFailed()
            for n, t in zip(self._pending, toks, strict=True):
                self._tokens[n] = t
                self.cache[(key_id, n)] = t
            return self._match_request()
        if self._state is _State.MATCH:
            if self._pir is not None:
                self._pir.receive(response)
                nxt = self._pir.next_request()
                if nxt is not None:
                    self.rounds += 1
                    return nxt
                self._matches.update(self._pir.matches)
            elif self.scheme.uses_buckets:
                self._finish_bucket(response)
            else:
                self._finish_lookup(response)
            self._state = _State.DONE
            return None
        raise ProtocolStateError(f"no response expected in state {self._state.value!r}")

    @property
    def tokens(self) -> dict[str, bytes]:
        """Tokens of the discovery's numbers known so far (all of them once evaluated)."""
        return dict(self._tokens)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def result(self) -> MatchResult:
        if self._state is not _State.DONE:
            raise ProtocolStateError("the discovery is not complete")
        return MatchResult(
            matches=dict(self._matches),
            unregistered=[n for n in self._numbers if n not in self._matches],
            key_id=self.info.key_id,
        )

    # -- membership methods -----------------------------------------------------------------
    def _match_request(self) -> bytes | None:
        key_id = self.info.key_id
        if self.scheme.uses_buckets:
            self._asked = list(self._numbers)
            prefixes = sorted({bucket_of(self._tokens[n], self.info.bits) for n in self._asked})
            self._state = _State.MATCH
            self.rounds += 1
            return BucketRequest(
                scheme=self.scheme.name, key_id=key_id, bits=self.info.bits, prefixes=prefixes
            ).encode()
        if self._filter is not None:  # set exactly when the scheme publishes a filter
            toks = [self._tokens[n] for n in self._numbers]
            hits = self._filter.contains_many(toks)
            self._asked = [n for n, h in zip(self._numbers, hits, strict=True) if h]
        else:
            self._asked = list(self._numbers)
        if self.scheme.decides_locally:
            # The filter is the answer (its rate is sized for it): the number is the id.
            self._matches = {n: n for n in self._asked}
            self._state = _State.DONE
            return None
        if not self._asked:
            self._state = _State.DONE
            return None
        if self._hint is not None:  # set exactly when the scheme retrieves by PIR
            batch = int(self.info.extra.get("pir", {}).get("batch", 64))
            self._pir = PirRetrieval(
                self.scheme.name,
                key_id,
                self._hint,
                {n: self._tokens[n] for n in self._asked},
                batch,
            )
            first = self._pir.next_request()
            if first is None:  # pragma: no cover - hits always have a column
                self._state = _State.DONE
                return None
            self._state = _State.MATCH
            self.rounds += 1
            return first
        self._state = _State.MATCH
        self.rounds += 1
        return LookupRequest(
            scheme=self.scheme.name,
            key_id=key_id,
            tokens=[self._tokens[n] for n in self._asked],
        ).encode()

    def _finish_lookup(self, response: bytes) -> None:
        msg = decode(response, LookupResponse)
        if any(p >= len(self._asked) for p in msg.positions):
            raise MalformedMessage("lookup answer names a position that was not asked")
        for p, uid in zip(msg.positions, msg.user_ids, strict=True):
            try:
                self._matches[self._asked[p]] = uid.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedMessage("a user id is not UTF-8") from exc

    def _finish_bucket(self, response: bytes) -> None:
        msg = decode(response, BucketResponse)
        if msg.bits != self.info.bits:
            raise MalformedMessage("bucket answer uses other bits than asked")
        # Only entries whose fingerprint is one of ours are opened (open_entries).
        self._matches.update(
            open_entries({n: self._tokens[n] for n in self._asked}, msg.fingerprints, msg.sealed)
        )
