"""The backend's discovery service: :class:`DiscoveryServer`.

Account lifecycle (register, change number, delete), privacy settings, discovery with rate
limits, opt-in "contact joined", and aggregate statistics, over the parts
:class:`~contactmatch.service._core.ServerCore` builds. Sans-I/O: requests and responses are
bytes, moved by whatever transport the application uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

from contactmatch.errors import (
    Conflict,
    ContactMatchError,
    InvalidInput,
    MalformedMessage,
    RateLimited,
    UnknownKeyId,
    UnknownUser,
    VerificationFailed,
)
from contactmatch.phone import normalize, normalize_many
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.wire import (
    BucketRequest,
    ContactsUpload,
    EvalRequest,
    LookupRequest,
    LookupResponse,
    PirRequest,
    ServiceResponse,
    decode,
)
from contactmatch.service._core import ServerCore
from contactmatch.service.personal import TokensOf, personal_entries
from contactmatch.service.settings import NumberVerifier
from contactmatch.stores.base import Discoverability, UserRecord

__all__ = ["DiscoveryServer"]


class DiscoveryServer(ServerCore):
    """The backend's discovery service.

    Args:
        store: where registrations, uploads, rate state, filters and counters live.
        keys: the OPRF server key (or a ring during a rotation).
        data_key: encrypts numbers at rest; kept apart from the store.
        settings: schemes, region, bucket and filter parameters, quotas.
        snapshot_dir: where registry snapshots are read at start-up and written.
        allow_foreign_keys: serve a store holding users under keys this server lacks.

    Raises:
        InvalidInput: a keyed scheme needs another OPRF mode than the key's.
        InvalidKey: the store holds users this server cannot serve (foreign keys).
        UnknownScheme: a scheme name is unknown.
    """

    def __repr__(self) -> str:
        return f"<DiscoveryServer schemes={self.schemes} key_id={self.key_id}>"

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
            tokens = self._canonical_tokens(numbers)
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
        token = self._canonical_tokens([e164])[0]
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

    def hint_version(self, scheme: str | None = None) -> int:
        """Current version of a ``pir`` scheme's database (0 for other schemes)."""
        return self._scheme(scheme or self.schemes[0]).hint_version

    def published_hint(self, scheme: str | None = None, since: int | None = None) -> bytes:
        """The PIR hint of a ``pir`` scheme, whole or as a delta from version ``since``."""
        return self._scheme(scheme or self.schemes[0]).published_hint(since)

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
        started = time.perf_counter()
        scheme = ""
        try:
            msg = decode(request)
            if not isinstance(msg, EvalRequest | LookupRequest | BucketRequest | PirRequest):
                raise MalformedMessage(f"{msg.NAME} is not a discovery request")
            srv = self._scheme(msg.scheme)
            scheme = srv.scheme.name
            me = self._account(requester_id)
            subject = self.limiter.number_subject(me.token)
            self.limiter.request(subject)
            if isinstance(msg, EvalRequest):
                self.limiter.evaluations(subject, len(msg.elements))
                stats["evaluated"] = len(msg.elements)
            elif isinstance(msg, LookupRequest):
                self.limiter.new_tokens(subject, msg.tokens)
                stats["looked_up"] = len(msg.tokens)
            elif isinstance(msg, PirRequest):
                # A PIR batch names no token: what a scraper can read from it is bounded by
                # the evaluations it was charged for. The batch size is still a size limit.
                self.limiter.check_size(msg.batch)
                stats["pir_retrievals"] = msg.batch
            else:
                self.limiter.new_buckets(subject, msg.bits, msg.prefixes)
                stats["buckets"] = len(set(msg.prefixes))
            answer = srv.handle_message(msg)
            if isinstance(answer, LookupResponse):
                stats["matches"] = len(answer.positions)
            # Lookup and bucket discoveries always end with a match round, so the personal
            # entries (three store reads) go with that round only; a filter discovery can end
            # after its evaluation round (no filter hits), so it gets them on every round.
            last_round = not isinstance(msg, EvalRequest) or srv.scheme.publishes_filter
            fps, sealed = (
                personal_entries(self.store, me, self.key_id, self._tokens_of(srv))
                if last_round
                else ([], [])
            )
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
            self._count(stats)
            if self.observer is not None:
                self.observer(scheme, stats, time.perf_counter() - started)

    # -- opt-in contact uploads -------------------------------------------------------------
    def upload_contacts(self, owner_id: str, request: bytes) -> int:
        """Keep (opt-in) the tokens of ``owner_id``'s contacts; returns how many were kept.

        They decide who may discover a *contacts-only* user and whom to tell when a contact
        joins. Only OPRF tokens under the current key are accepted: the server never sees
        the numbers.
        """
        msg = decode(request, ContactsUpload)
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
        """Aggregate counters (never per user); this process's pending ones included."""
        self.flush_stats()
        return self.store.get_stats()

    def _tokens_of(self, srv: SchemeServer) -> TokensOf:
        """Tokens of users under ``srv``'s token function (for personal entries)."""
        return partial(self._follower.tokens_of, srv.scheme.token)
