"""The discovery service: the API a messenger backend imports, and the app's reference client.

:class:`DiscoveryServer` ties numbers, keys, schemes, the token index and the store together:
account lifecycle (register, change number, delete), privacy settings, discovery with rate
limits, opt-in "contact joined", and aggregate statistics. :class:`DiscoveryClient` is the
app's side in Python. Both are sans-I/O: requests and responses are bytes, moved by whatever
transport the application uses (in-process calls, :mod:`contactmatch.server` over HTTP).

A discovery is one round trip when the client already holds tokens for all its contacts (the
steady state: re-syncs), and two on a first sync with a keyed scheme (evaluate, then match)::

    request = client.prepare(contacts)
    while request is not None:
        result = client.finalize(server.discover(user_id, request))
        request = result.next_request
    result.matches, result.unregistered
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contactmatch.atrest import DataKey
from contactmatch.contacts import load_contacts
from contactmatch.errors import (
    Conflict,
    ContactMatchError,
    InvalidInput,
    InvalidKey,
    MalformedMessage,
    RateLimited,
    UnknownKeyId,
    UnknownScheme,
    UnknownUser,
    VerificationFailed,
)
from contactmatch.filters import BloomFilter, GolombFilter, is_delta, load_filter
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode
from contactmatch.phone import normalize, normalize_many
from contactmatch.ratelimit import RateLimiter, RateLimits
from contactmatch.registry.follower import RegistryFollower
from contactmatch.schemes.base import ServerInfo, get_scheme
from contactmatch.schemes.client import SchemeClient
from contactmatch.schemes.factory import make_client_tokens, make_server_tokens
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.table import fingerprint_of, open_sealed, seal_user_id
from contactmatch.schemes.tokens import ServerTokens
from contactmatch.schemes.wire import (
    BucketRequest,
    ContactsUpload,
    EvalRequest,
    LookupRequest,
    LookupResponse,
    ServiceResponse,
    decode,
)
from contactmatch.stores.base import Discoverability, RegistryStore, UserRecord

__all__ = [
    "DEFAULT_SCHEMES",
    "DiscoveryClient",
    "DiscoveryResult",
    "DiscoveryServer",
    "NumberVerifier",
    "ServiceSettings",
]

#: The flows a backend serves by default: OPRF with a client-side filter, or with k-anonymity
#: buckets for clients that do not hold the filter.
DEFAULT_SCHEMES = ("oprf+filter", "oprf+bucket")
_log = logging.getLogger("contactmatch.service")

#: Proof that a user possesses a number: ``(user_id, e164, proof) -> bool``. It receives the
#: normalised E.164 number that will be registered — never the raw input, which the verifier
#: might normalise differently — and the client's ``proof`` (e.g. the SMS code it was sent).
NumberVerifier = Callable[[str, str, str | None], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """How a :class:`DiscoveryServer` behaves; the defaults suit a messenger backend."""

    #: Schemes served; None serves the default flows (filter and bucket) in the key's mode:
    #: ``oprf+filter``/``oprf+bucket`` for an OPRF key, ``voprf+…`` for a VOPRF key. Keyed
    #: schemes must match the key's mode; plain/sha256/hmac may be added for comparisons.
    schemes: tuple[str, ...] | None = None
    #: Default region for numbers written without a country code.
    region: str | None = None
    #: Target anonymity set (registered users per bucket) of bucket schemes.
    anonymity: int = 64
    #: False-positive rate of published filters.
    filter_fpr: float = 2.0**-20
    limits: RateLimits = field(default_factory=RateLimits)
    #: Threads one OPRF batch is evaluated on: None uses every core (one server process
    #: per machine); ``serve --workers N`` gives each worker ``cores // N`` so the workers
    #: together use each core once instead of N times over.
    oprf_threads: int | None = None


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


def _derive(key: ServerKey, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
        key.private_bytes()
    )


class DiscoveryServer:
    """The backend's discovery service.

    Args:
        store: where registrations, uploads, rate state, filters and counters live.
        keys: the OPRF server key (or a ring during a rotation).
        data_key: encrypts numbers at rest; kept apart from the store.
        settings: schemes, region, bucket and filter parameters, quotas.
    """

    def __init__(
        self,
        store: RegistryStore,
        keys: ServerKey | KeyRing,
        data_key: DataKey,
        *,
        settings: ServiceSettings | None = None,
        snapshot_dir: str | Path | None = None,
        allow_foreign_keys: bool = False,
        _clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys)
        self.data_key = data_key
        self.settings = settings or ServiceSettings()
        self._clock = _clock
        self._lock = threading.RLock()
        self.canonical = "voprf" if self.keys.mode is Mode.VOPRF else "oprf"
        self._token_fns: dict[str, ServerTokens] = {
            self.canonical: make_server_tokens(
                self.canonical, self.keys, workers=self.settings.oprf_threads
            )
        }
        self._schemes: dict[str, SchemeServer] = {}
        names = self.settings.schemes or (f"{self.canonical}+filter", f"{self.canonical}+bucket")
        for name in names:
            s = get_scheme(name)
            if s.token in ("oprf", "voprf") and s.token != self.canonical:
                raise InvalidInput(
                    f"{name} needs a key of mode {s.token.upper()}; this key is "
                    f"{self.keys.mode.name}"
                )
            if s.token not in self._token_fns:
                self._token_fns[s.token] = make_server_tokens(s.token, self.keys.current)
        self._check_keys(allow_foreign_keys)
        self._follower = RegistryFollower(
            store,
            canonical=self.canonical,
            token_fns=self._token_fns,
            key_id=self.key_id,
            numbers_of=self._numbers_of,
            snapshot_dir=snapshot_dir,
        )
        for name in names:
            s = get_scheme(name)
            self._schemes[name] = SchemeServer(
                s,
                self._token_fns[s.token],
                registry=self._follower.registries[s.token],
                anonymity=self.settings.anonymity,
                filter_fpr=self.settings.filter_fpr,
            )
        self.limiter = RateLimiter(
            store,
            self.settings.limits,
            _derive(self.keys.current, b"contactmatch/seen-set/v1"),
            _clock,
        )
        #: Where the registries came from at start-up: ``"snapshot"`` or ``"store"``.
        self.started_from = self._follower.start()

    def __repr__(self) -> str:
        return f"<DiscoveryServer schemes={list(self._schemes)} key_id={self.key_id}>"

    # -- state ------------------------------------------------------------------------------
    @property
    def key_id(self) -> str:
        return self.keys.current.key_id

    @property
    def schemes(self) -> list[str]:
        return list(self._schemes)

    def _scheme(self, name: str) -> SchemeServer:
        try:
            return self._schemes[name]
        except KeyError:
            raise UnknownScheme(f"this server does not serve {name[:40]!r}") from None

    def _numbers_of(self, recs: Sequence[UserRecord]) -> list[str]:
        key = self.data_key
        return [key.open_number(r.number_ct, r.wrapped_key, r.user_id, r.token) for r in recs]

    def _check_keys(self, allow_foreign: bool) -> None:
        """Refuse to serve a store whose users this server cannot serve or decrypt.

        Users under an OPRF key id the ring does not hold are invisible to discovery; users
        whose numbers are wrapped under a data key this server does not hold cannot be
        rotated or served by research schemes. Both are counted, logged, and refused unless
        ``allow_foreign`` (e.g. during a staged rotation).
        """
        census = self.store.key_census()
        held = set(self.keys.key_ids)
        foreign = {k: n for k, n in census.oprf.items() if n and k not in held}
        data_held = set(self.data_key.key_ids)
        foreign_data = {k: n for k, n in census.data.items() if n and k not in data_held}
        problems = []
        if foreign:
            problems.append(
                f"{sum(foreign.values())} users are registered under OPRF key id(s) "
                f"{', '.join(sorted(foreign))}, which this server does not hold (it holds "
                f"{', '.join(sorted(held))})"
            )
        if foreign_data:
            problems.append(
                f"{sum(foreign_data.values())} users' numbers are under data key id(s) "
                f"{', '.join(sorted(foreign_data))}, which this server does not hold (it holds "
                f"{', '.join(sorted(data_held))})"
            )
        if not problems:
            return
        message = "; ".join(problems)
        _log.warning("key mismatch: %s", message)
        if not allow_foreign:
            raise InvalidKey(message + " (pass allow_foreign_keys=True to serve anyway)")

    def refresh(self) -> tuple[int, int]:
        """Bring the registries up to date with the store; returns (upserted, removed) users.

        Several server processes share one store: each reads only the store's change feed
        since its last position, so a refresh costs in proportion to the changes made since
        (by any process), not to the registry. A deployment calls this periodically (the HTTP
        server runs it in the background with ``refresh_every``); the process's own writes
        are applied at once.
        """
        return self._follower.refresh()

    def save_snapshot(self) -> Path | None:
        """Write the registry snapshot (for fast start-up of the next process); None when
        the server has no snapshot directory."""
        return self._follower.save_snapshot()

    @property
    def feed_position(self) -> int:
        """The store feed position the registries reflect."""
        return self._follower.seq

    # -- account lifecycle ------------------------------------------------------------------
    def register(
        self,
        user_id: str,
        number: str,
        *,
        region: str | None = None,
        discoverability: Discoverability | str = Discoverability.EVERYONE,
        transfer: bool = True,
    ) -> str:
        """Register ``user_id`` with ``number``; returns the normalised E.164 number.

        Registering again replaces the user's number. If another account holds the number, it
        moves here (device transfer) and that account's registration is erased — so call this
        only once the caller has proven possession of the number (the messenger's SMS
        verification); with ``transfer=False`` a number held by another account is refused.

        Raises:
            InvalidNumber: the number is not a valid mobile number.
            InvalidInput: the user id or setting is malformed.
            Conflict: ``transfer`` is false and another account holds the number.
        """
        e164 = normalize(number, region or self.settings.region)
        setting = Discoverability(discoverability)
        self._register_numbers([user_id], [e164], setting, transfer=transfer)
        return e164

    def register_many(
        self,
        registrations: Sequence[tuple[str, str]],
        *,
        region: str | None = None,
        discoverability: Discoverability | str = Discoverability.EVERYONE,
    ) -> list[tuple[int, str]]:
        """Bulk registration (imports, demos); returns rejected ``(index, reason)`` pairs.

        A number that appears twice in the batch keeps its first registration; the later ones
        are rejected as ``duplicate``.
        """
        batch = normalize_many([n for _, n in registrations], region or self.settings.region)
        rejected = list(batch.rejected)
        seen: set[str] = set()
        uids, numbers = [], []
        for i, ((uid, _), e164) in enumerate(zip(registrations, batch.numbers, strict=True)):
            if e164 is None:
                continue
            if e164 in seen:
                rejected.append((i, "duplicate"))
                continue
            seen.add(e164)
            uids.append(uid)
            numbers.append(e164)
        if len(set(uids)) != len(uids):
            raise InvalidInput("a user id appears twice in one batch")
        self._register_numbers(uids, numbers, Discoverability(discoverability))
        return sorted(rejected)

    def _register_numbers(
        self,
        user_ids: Sequence[str],
        numbers: Sequence[str],
        setting: Discoverability,
        *,
        transfer: bool = True,
        tokens: Sequence[bytes] | None = None,
    ) -> None:
        if not user_ids:
            return
        now = float(self._clock())
        if tokens is None:  # a caller that metered by token already has them
            tokens = self._token_fns[self.canonical].tokens(numbers)
        with self._lock:
            existing = self.store.get_users(user_ids)
            holders = self.store.lookup_tokens(tokens)
            moved = sorted(
                {
                    h.user_id
                    for h, uid in zip(holders, user_ids, strict=True)
                    if h is not None and h.user_id != uid
                }
            )
            if moved and not transfer:
                raise Conflict("the number belongs to another account; verify it to transfer")
            for uid in moved:  # device transfer: the old account loses the number for good
                self.store.delete_account(uid)
            records = [
                UserRecord(
                    user_id=uid,
                    token=tok,
                    key_id=self.key_id,
                    # A fresh user key per registration, bound to this id and token.
                    number_ct=sealed.number_ct,
                    wrapped_key=sealed.wrapped_key,
                    discoverability=old.discoverability if old is not None else setting,
                    created_at=old.created_at if old is not None else now,
                    updated_at=now,
                )
                for uid, num, tok, old in zip(user_ids, numbers, tokens, existing, strict=True)
                for sealed in (self.data_key.seal_number(num, uid, tok),)
            ]
            self._follower.refresh()  # catch up first, so our own write can be taken in
            before = self.store.feed_head()
            self.store.put_users(records)
            self._follower.wrote(records, before)
            self.store.incr_stats({"registrations": len(records), "transfers": len(moved)})

    def change_number(
        self, user_id: str, new_number: str, *, region: str | None = None, transfer: bool = True
    ) -> str:
        """Move an existing account to a new number; returns the new E.164 number.

        Raises:
            UnknownUser: the user is not registered.
            InvalidNumber: the new number is not a valid mobile number.
            Conflict: ``transfer`` is false and another account holds the number.
        """
        if self.store.get_users([user_id])[0] is None:
            raise UnknownUser("no registered user has that id")
        return self.register(user_id, new_number, region=region, transfer=transfer)

    def claim_number(
        self,
        user_id: str,
        number: str,
        proof: str | None,
        verify: NumberVerifier | None,
        *,
        region: str | None = None,
        discoverability: Discoverability | str | None = None,
        existing: bool = False,
    ) -> str:
        """Register ``user_id`` with ``number``, or move it there, on behalf of a client.

        This is the path for requests from clients (the HTTP API); :meth:`register` is the
        backend's own, for numbers it has already verified. Every attempt is charged per
        account, per target number and globally *before* anything else happens, and then
        possession of the exact E.164 number that will be registered is checked with
        ``verify(user_id, e164, proof)`` — so an unverified caller gets the same refusal
        whether or not the number is registered, and cannot grind the verifier.

        With ``verify`` None (a development server only), no possession is checked: a number
        held by another account is refused with :class:`Conflict` instead of moved, which
        answers "is this number registered?" — metered, but an oracle all the same.

        Args:
            user_id: the authenticated account.
            number: the number as the client wrote it; normalised with ``region``.
            proof: the client's proof of possession (e.g. the SMS code), for ``verify``.
            verify: the messenger's possession check, given the normalised E.164 number.
            region: default region for a number without a country code.
            discoverability: setting of a new registration (an existing one keeps its own).
            existing: the account must already be registered (a number change).

        Raises:
            InvalidNumber: the number is not a valid mobile number.
            RateLimited: too many attempts by this account, on this number, or in all.
            UnknownUser: ``existing`` and the account is not registered.
            VerificationFailed: possession of the number was not proven.
            Conflict: ``verify`` is None and another account holds the number.
        """
        e164 = normalize(number, region or self.settings.region)
        setting = Discoverability(discoverability or Discoverability.EVERYONE)
        token = self._token_fns[self.canonical].tokens([e164])[0]
        self.limiter.registration(
            self.limiter.account_subject(user_id), self.limiter.number_subject(token)
        )
        if existing:
            self._account(user_id)
        if verify is not None and verify(user_id, e164, proof) is not True:
            self.store.incr_stats({"verifications_failed": 1})
            raise VerificationFailed
        self._register_numbers(
            [user_id], [e164], setting, transfer=verify is not None, tokens=[token]
        )
        return e164

    def charge_write(self, user_id: str) -> None:
        """Meter one client write (a setting change) against the account's number.

        Raises:
            UnknownUser: the account is not registered.
            RateLimited: the account's write quota is exhausted.
        """
        self.limiter.write(self.limiter.number_subject(self._account(user_id).token))

    def expire_rate_state(self) -> int:
        """Drop drained quota buckets and seen-set entries past their lifetime; returns how
        many. Rate state outlives an account by at most one quota period: run this (the HTTP
        server does, hourly; so does ``contactmatch vacuum``) so that bound holds."""
        return self.limiter.expire()

    def delete_account(self, user_id: str) -> None:
        """Erase the user everywhere: registration, number, uploads.

        The quota state of the user's number is not erased: it is keyed by a keyed hash of
        the number, not by the account, and disappears once drained (at most one quota
        period), so that deleting and re-registering cannot reset a quota.

        Raises:
            UnknownUser: the user is not registered.
        """
        with self._lock:
            self.store.delete_account(user_id)
            self._follower.refresh()
            self.store.incr_stats({"deletions": 1})

    def set_discoverability(self, user_id: str, setting: Discoverability | str) -> None:
        """Who may find the user: ``everyone``, their ``contacts`` only, or ``nobody``.

        Users not discoverable by everyone never appear in a published filter or bucket.
        """
        value = Discoverability(setting)
        with self._lock:
            rec = self.store.get_users([user_id])[0]
            if rec is None:
                raise UnknownUser("no registered user has that id")
            self.store.set_discoverability({user_id: value}, float(self._clock()))
            self._follower.refresh()

    # -- discovery --------------------------------------------------------------------------
    def info(self, scheme: str | None = None) -> bytes:
        """Published parameters of a scheme (key id, public key, bucket bits, filter version);
        the default scheme (the first served) when ``scheme`` is None."""
        return self._scheme(scheme or self.schemes[0]).info().encode()

    def filter_version(self, scheme: str | None = None) -> int:
        """Current version of a scheme's published filter (0 before the first publication)."""
        return self._scheme(scheme or self.schemes[0]).filter_version

    def published_filter(self, scheme: str | None = None, since: int | None = None) -> bytes:
        """The filter of a filter scheme, whole or as a delta from version ``since``."""
        return self._scheme(scheme or self.schemes[0]).published_filter(since)

    def _account(self, user_id: str) -> UserRecord:
        """The live registration of ``user_id``; discovery and writes need one."""
        rec = self.store.get_users([user_id])[0]
        if rec is None:
            raise UnknownUser("no registered user has that id")
        return rec

    def discover(self, requester_id: str, request: bytes) -> bytes:
        """Answer one discovery request of an authenticated, registered user.

        Quotas are charged to the requester's *number* (a keyed hash of its token), before
        any element is validated: deleting the account and registering the number again
        inherits what was spent, and invalid elements cost as much as valid ones.

        Raises:
            UnknownUser: the requester has no live registration.
            MalformedMessage: the request does not decode or breaks a size limit.
            RateLimited: a quota is exhausted (``retry_after`` says when to come back).
            UnknownScheme: the request is for a scheme this server does not serve.
            UnknownKeyId: the client used a rotated key: it should refresh ``info``.
            VerificationFailed: a blinded element is invalid.
        """
        stats: dict[str, int] = {"requests": 1}
        try:
            msg = decode(request)
            if not isinstance(msg, EvalRequest | LookupRequest | BucketRequest):
                raise MalformedMessage(f"{msg.NAME} is not a discovery request")
            srv = self._scheme(msg.scheme)
            me = self._account(requester_id)
            subject = self.limiter.number_subject(me.token)
            self.limiter.request(subject)
            if isinstance(msg, EvalRequest):
                self.limiter.evaluations(subject, len(msg.elements))
                stats["evaluated"] = len(msg.elements)
            elif isinstance(msg, LookupRequest):
                self.limiter.new_tokens(subject, msg.tokens)
                stats["looked_up"] = len(msg.tokens)
            else:
                self.limiter.new_buckets(subject, msg.bits, msg.prefixes)
                stats["buckets"] = len(set(msg.prefixes))
            answer = srv.handle_message(msg)
            if isinstance(answer, LookupResponse):
                stats["matches"] = len(answer.positions)
            # Lookup and bucket discoveries always end with a match round, so the personal
            # entries (three store reads) go with that round only; a filter discovery can end
            # after its evaluation round (no filter hits), so it gets them on every round.
            last_round = not isinstance(msg, EvalRequest) or srv.scheme.method == "filter"
            fps, sealed = self._personal(me, srv) if last_round else ([], [])
            return ServiceResponse(
                inner=answer.encode(),
                filter_version=srv.filter_version,
                fingerprints=fps,
                sealed=sealed,
            ).encode()
        except RateLimited:
            stats["rate_limited"] = 1
            raise
        except ContactMatchError:
            stats["rejected"] = 1
            raise
        finally:
            self.store.incr_stats(stats)

    def _personal(self, me: UserRecord, srv: SchemeServer) -> tuple[list[bytes], list[bytes]]:
        """Entries of *contacts-only* users who hold the requester in their uploaded book."""
        requester_id = me.user_id
        if me.key_id != self.key_id:
            return [], []
        owners = self.store.contact_owners([me.token])[0]
        recs = [
            r
            for r in self.store.get_users([o for o in owners if o != requester_id])
            if r is not None
            and r.discoverability is Discoverability.CONTACTS
            and r.key_id == self.key_id
        ]
        if not recs:
            return [], []
        tokens = self._follower.tokens_of(srv.scheme.token, recs)
        return (
            [fingerprint_of(t) for t in tokens],
            [seal_user_id(t, r.user_id) for t, r in zip(tokens, recs, strict=True)],
        )

    # -- opt-in contact uploads -------------------------------------------------------------
    def upload_contacts(self, owner_id: str, request: bytes) -> int:
        """Keep (opt-in) the tokens of ``owner_id``'s contacts; returns how many were kept.

        They decide who may discover a *contacts-only* user and whom to tell when a contact
        joins. Only OPRF tokens under the current key are accepted: the server never sees
        the numbers.
        """
        msg = decode(request, ContactsUpload)
        assert isinstance(msg, ContactsUpload)
        if msg.key_id != self.key_id:
            raise UnknownKeyId("uploaded tokens are under another key; refresh and retry")
        self.limiter.check_size(len(msg.tokens))
        self.limiter.write(self.limiter.number_subject(self._account(owner_id).token))
        tokens = list(dict.fromkeys(msg.tokens))
        self.store.replace_contacts(owner_id, tokens, msg.key_id)
        self.store.incr_stats({"contact_uploads": 1})
        return len(tokens)

    def contacts_to_notify(self, user_id: str) -> list[str]:
        """Users to tell that ``user_id`` joined: those who have the number in their uploaded
        book, when ``user_id``'s setting allows them to see it."""
        rec = self.store.get_users([user_id])[0]
        if rec is None:
            raise UnknownUser("no registered user has that id")
        if rec.discoverability is Discoverability.NOBODY or rec.key_id != self.key_id:
            return []
        owners = [o for o in self.store.contact_owners([rec.token])[0] if o != user_id]
        if rec.discoverability is Discoverability.EVERYONE or not owners:
            return owners
        # Contacts only: notify an owner only if the new user has the owner in their book too.
        owner_recs = self.store.get_users(owners)
        present = [r for r in owner_recs if r is not None and r.key_id == self.key_id]
        holders = self.store.contact_owners([r.token for r in present])
        return [r.user_id for r, h in zip(present, holders, strict=True) if user_id in h]

    def stats(self) -> dict[str, int]:
        """Aggregate counters (never per user)."""
        return self.store.get_stats()


class DiscoveryClient:
    """The app's side of discovery (the reference client, in Python).

    Args:
        info: the server's published info for the chosen scheme (bytes or decoded).
        filter_blob: the published filter, for filter schemes.
        region: default region of the phone book's numbers.
        pinned_keys: VOPRF public keys from an authenticated channel (the app bundle).
        cache: token cache ``{(key_id, e164): token}``; keep it across syncs so a re-sync
            evaluates only numbers it has not seen under the current key.
    """

    def __init__(
        self,
        info: bytes | ServerInfo,
        *,
        filter_blob: bytes | None = None,
        region: str | None = None,
        pinned_keys: dict[str, bytes] | None = None,
        cache: dict[tuple[str, str], bytes] | None = None,
    ) -> None:
        self.info = info if isinstance(info, ServerInfo) else ServerInfo.decode(info)
        self.scheme = get_scheme(self.info.scheme)
        self.region = region
        self.pinned_keys = pinned_keys
        self.cache: dict[tuple[str, str], bytes] = cache if cache is not None else {}
        self._filter: GolombFilter | BloomFilter | None = None
        if filter_blob is not None:
            self.update_filter(filter_blob)
        elif self.scheme.method == "filter":
            raise InvalidInput("a filter scheme needs the published filter")
        self._run: SchemeClient | None = None
        self._numbers: list[str] = []
        self._rejected: dict[str, int] = {}
        self._personal: list[tuple[bytes, bytes]] = []
        self._server_filter_version = 0

    def __repr__(self) -> str:
        return f"<DiscoveryClient scheme={self.scheme.name} cached={len(self.cache)}>"

    @property
    def filter_version(self) -> int:
        return self._filter.version if self._filter is not None else 0

    def update_filter(self, data: bytes) -> None:
        """Install a whole published filter, or apply a delta to the one held."""
        if is_delta(data) and self._filter is not None:
            self._filter.apply_delta(data)
        else:
            self._filter = load_filter(data)
            if self._filter.key_id != self.info.key_id:
                raise UnknownKeyId("the filter was built under another key; refresh info")

    def prepare(self, contacts: Iterable[str] | Iterable[Mapping[str, Any]] | str | bytes) -> bytes:
        """Start a discovery of a phone book (numbers, contact dicts or vCard text).

        Names and every other card field are dropped before anything else happens. Returns
        the first request. A client runs one discovery at a time.
        """
        book = load_contacts(contacts, self.region)
        self._numbers = list(book.numbers)
        self._rejected = dict(book.rejected)
        self._personal = []
        self._run = SchemeClient(
            self.scheme,
            self.info,
            make_client_tokens(self.scheme.token, self.info, pinned=self.pinned_keys),
            filter_blob=self._filter,
            cache=self.cache,
        )
        first = self._run.start(self._numbers)
        # A filter client whose contacts are all cached and miss the filter has nothing to
        # ask; it still sends an empty lookup so the service can hand it personal entries.
        return first if first is not None else self._empty_lookup()

    def _empty_lookup(self) -> bytes:
        return LookupRequest(scheme=self.scheme.name, key_id=self.info.key_id, tokens=[]).encode()

    def finalize(self, response: bytes) -> DiscoveryResult:
        """Consume the server's answer; see :class:`DiscoveryResult` for more rounds."""
        if self._run is None:
            raise RuntimeError("call prepare() first")
        env = decode(response, ServiceResponse)
        assert isinstance(env, ServiceResponse)
        self._personal.extend(zip(env.fingerprints, env.sealed, strict=True))
        self._server_filter_version = env.filter_version
        run = self._run
        next_request = None if run.done else run.receive(env.inner)
        if next_request is not None:
            return DiscoveryResult(
                matches={}, unregistered=[], rejected=self._rejected, next_request=next_request
            )
        result = run.result
        matches = dict(result.matches)
        if self._personal:
            by_fp: dict[bytes, list[bytes]] = {}
            for fp, sealed in self._personal:
                by_fp.setdefault(fp, []).append(sealed)
            for number, tok in run.tokens.items():
                for sealed in by_fp.get(fingerprint_of(tok), []):
                    uid = open_sealed(tok, sealed)
                    if uid is not None:
                        matches[number] = uid
        self._run = None
        return DiscoveryResult(
            matches=matches,
            unregistered=[n for n in self._numbers if n not in matches],
            rejected=self._rejected,
            filter_stale=(
                self.scheme.method == "filter"
                and self._server_filter_version != self.filter_version
            ),
        )

    def discover(
        self,
        contacts: Iterable[str] | Iterable[Mapping[str, Any]] | str | bytes,
        send: Callable[[bytes], bytes],
    ) -> DiscoveryResult:
        """Run a whole discovery over ``send`` (request bytes -> response bytes)."""
        result = self.finalize(send(self.prepare(contacts)))
        while result.next_request is not None:
            result = self.finalize(send(result.next_request))
        return result

    def upload_request(self) -> bytes:
        """Opt-in upload of the last discovered phone book's tokens (OPRF schemes only)."""
        if self.scheme.token not in ("oprf", "voprf"):
            raise InvalidInput(
                "contact uploads need an OPRF scheme (the server must not see numbers)"
            )
        key_id = self.info.key_id
        tokens = [t for n in self._numbers if (t := self.cache.get((key_id, n))) is not None]
        return ContactsUpload(key_id=key_id, tokens=tokens).encode()
