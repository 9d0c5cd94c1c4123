"""The app's side of discovery: :class:`DiscoveryClient`, the reference client in Python.

It adds to a :class:`~contactmatch.schemes.client.SchemeClient` only what a product needs:
reading phone books (names die on the way in), the token cache across syncs, the published
filter kept current by deltas, the service envelope with its personal entries, and a
:class:`DiscoveryResult` that says what to invite. The scheme's own work (checking the
filter's key, matching, opening sealed entries) stays in the scheme client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contactmatch.contacts import load_contacts
from contactmatch.errors import InvalidInput, ProtocolStateError
from contactmatch.filters import Filter, is_delta
from contactmatch.schemes.base import ServerInfo, get_scheme
from contactmatch.schemes.client import SchemeClient, filter_for
from contactmatch.schemes.pirclient import PirHint
from contactmatch.schemes.tokens import make_client_tokens
from contactmatch.schemes.wire import ContactsUpload, LookupRequest, ServiceResponse, decode
from contactmatch.service.personal import PersonalEntries

__all__ = ["DiscoveryClient", "DiscoveryResult", "PhoneBook"]

#: A phone book as the app holds it: numbers, contact dicts, or vCard text.
PhoneBook = Iterable[str] | Iterable[Mapping[str, Any]] | str | bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryResult:
    """What a discovery found, on the client.

    ``matches`` maps registered contacts (E.164) to user ids; ``unregistered`` lists the
    contacts to invite (computed here, never sent). While ``next_request`` is set, the
    discovery is not complete: send it and ``finalize`` the answer.
    """

    matches: dict[str, str]
    unregistered: list[str]
    rejected: dict[str, int]
    next_request: bytes | None = None
    filter_stale: bool = False

    @property
    def complete(self) -> bool:
        return self.next_request is None

    def __repr__(self) -> str:
        return (
            f"DiscoveryResult(<{len(self.matches)} matches>, "
            f"<{len(self.unregistered)} unregistered>, complete={self.complete})"
        )


class DiscoveryClient:
    """The app's side of discovery (the reference client, in Python).

    Args:
        info: the server's published info for the chosen scheme (bytes or decoded).
        filter_blob: the published filter, for filter schemes.
        hint_blob: the published PIR hint, for ``pir`` schemes (patched by every answer).
        region: default region of the phone book's numbers.
        pinned_keys: VOPRF public keys from an authenticated channel (the app bundle).
        cache: token cache ``{(key_id, e164): token}``; keep it across syncs so a re-sync
            evaluates only numbers it has not seen under the current key.

    Raises:
        MalformedMessage: ``info`` does not decode.
        InvalidInput: a filter scheme without its filter.
        UnknownKeyId: the filter was built under another key than ``info`` names.
    """

    def __init__(
        self,
        info: bytes | ServerInfo,
        *,
        filter_blob: bytes | None = None,
        hint_blob: bytes | PirHint | None = None,
        region: str | None = None,
        pinned_keys: dict[str, bytes] | None = None,
        cache: dict[tuple[str, str], bytes] | None = None,
    ) -> None:
        self.info = info if isinstance(info, ServerInfo) else ServerInfo.decode(info)
        self.scheme = get_scheme(self.info.scheme)
        self.region = region
        self.pinned_keys = pinned_keys
        self.cache: dict[tuple[str, str], bytes] = cache if cache is not None else {}
        self._filter: Filter | None = None
        if filter_blob is not None:
            self.update_filter(filter_blob)
        elif self.scheme.publishes_filter:
            raise InvalidInput("a filter scheme needs the published filter")
        self._hint: PirHint | None = None
        if hint_blob is not None:
            self.update_hint(hint_blob)
        elif self.scheme.retrieves_privately:
            raise InvalidInput("a pir scheme needs the published PIR hint")
        self._run: SchemeClient | None = None
        self._numbers: list[str] = []
        self._rejected: dict[str, int] = {}
        self._personal = PersonalEntries()
        self._server_filter_version = 0

    def __repr__(self) -> str:
        return f"<DiscoveryClient scheme={self.scheme.name} cached={len(self.cache)}>"

    @property
    def filter_version(self) -> int:
        return self._filter.version if self._filter is not None else 0

    def update_filter(self, data: bytes) -> None:
        """Install a whole published filter, or apply a delta to the one held.

        Raises:
            MalformedMessage: the blob does not decode, or a delta does not reproduce the
                server's filter (the filter held is then unchanged).
            UnknownKeyId: a whole filter was built under another key than ``info`` names.
        """
        if is_delta(data) and self._filter is not None:
            self._filter.apply_delta(data)
        else:
            self._filter = filter_for(self.info, data)

    @property
    def hint_version(self) -> int:
        """Version of the PIR hint held (0 if none)."""
        return self._hint.version if self._hint is not None else 0

    @property
    def hint(self) -> PirHint | None:
        """The PIR hint held (``pir`` schemes), kept current by answers and deltas."""
        return self._hint

    def update_hint(self, data: bytes | PirHint) -> None:
        """Install a whole PIR hint, or patch the one held with a delta from its version.

        Raises:
            MalformedMessage: the blob does not decode, or a delta is not from the hint held.
        """
        if isinstance(data, PirHint):
            self._hint = data
        elif self._hint is None:
            self._hint = PirHint(data)
        else:
            self._hint.update(data)

    def prepare(self, contacts: PhoneBook) -> bytes:
        """Start a discovery of a phone book (numbers, contact dicts or vCard text).

        Names and every other card field are dropped before anything else happens. Returns
        the first request. A client runs one discovery at a time.
        """
        book = load_contacts(contacts, self.region)
        self._numbers = list(book.numbers)
        self._rejected = dict(book.rejected)
        self._personal = PersonalEntries()
        self._run = SchemeClient(
            self.scheme,
            self.info,
            make_client_tokens(self.scheme.token, self.info, pinned=self.pinned_keys),
            filter_blob=self._filter,
            hint=self._hint,
            cache=self.cache,
        )
        first = self._run.start(self._numbers)
        # A filter client whose contacts are all cached and miss the filter has nothing to
        # ask; it still sends an empty lookup so the service can hand it personal entries.
        return first if first is not None else self._empty_lookup()

    def _empty_lookup(self) -> bytes:
        return LookupRequest(scheme=self.scheme.name, key_id=self.info.key_id, tokens=[]).encode()

    def finalize(self, response: bytes) -> DiscoveryResult:
        """Consume the server's answer; see :class:`DiscoveryResult` for more rounds.

        Raises:
            ProtocolStateError: no discovery is under way (call :meth:`prepare` first).
            MalformedMessage: the answer does not decode or does not fit the request.
        """
        if self._run is None:
            raise ProtocolStateError("call prepare() first")
        env = decode(response, ServiceResponse)
        self._personal.add(env)
        self._server_filter_version = env.filter_version
        run = self._run
        next_request = None if run.done else run.receive(env.inner)
        if next_request is not None:
            return DiscoveryResult(
                matches={}, unregistered=[], rejected=self._rejected, next_request=next_request
            )
        matches = dict(run.result.matches)
        if self._personal:
            matches.update(self._personal.open(run.tokens))
        self._run = None
        return DiscoveryResult(
            matches=matches,
            unregistered=[n for n in self._numbers if n not in matches],
            rejected=self._rejected,
            filter_stale=(
                self.scheme.publishes_filter and self._server_filter_version != self.filter_version
            ),
        )

    def discover(self, contacts: PhoneBook, send: Callable[[bytes], bytes]) -> DiscoveryResult:
        """Run a whole discovery over ``send`` (request bytes -> response bytes)."""
        result = self.finalize(send(self.prepare(contacts)))
        while result.next_request is not None:
            result = self.finalize(send(result.next_request))
        return result

    def upload_request(self) -> bytes:
        """Opt-in upload of the last discovered phone book's tokens (OPRF schemes only).

        Raises:
            InvalidInput: the scheme's tokens are not oblivious (the server would be handed
                tokens it can map back to numbers).
        """
        if not self.scheme.oblivious:
            raise InvalidInput(
                "contact uploads need an OPRF scheme (the server must not see numbers)"
            )
        key_id = self.info.key_id
        tokens = [t for n in self._numbers if (t := self.cache.get((key_id, n))) is not None]
        return ContactsUpload(key_id=key_id, tokens=tokens).encode()
