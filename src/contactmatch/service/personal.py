"""Personal entries: how users discoverable by *their contacts only* are found, both sides.

Contacts-only users are never in a published filter or bucket. Instead the service appends
to each answer (the :class:`~contactmatch.schemes.wire.ServiceResponse` envelope) the entries
of contacts-only users who hold the requester in their uploaded book, as ``(fingerprint,
sealed user id)`` pairs like bucket entries; the requester opens only those whose number it
holds too. The server side (:func:`personal_entries`) and the client side
(:class:`PersonalEntries`) live here together so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from contactmatch.schemes.sealed import open_entries, seal_entries
from contactmatch.schemes.wire import ServiceResponse
from contactmatch.stores.base import Discoverability, RegistryStore, UserRecord

__all__ = ["PersonalEntries", "personal_entries"]

#: The tokens of users under the scheme's token function, aligned with the records.
TokensOf = Callable[[Sequence[UserRecord]], list[bytes]]


def personal_entries(
    store: RegistryStore, me: UserRecord, key_id: str, tokens_of: TokensOf
) -> tuple[list[bytes], list[bytes]]:
    """Entries of contacts-only users who hold the requester ``me`` in their uploaded book.

    Uploads are OPRF tokens under the current key, so a requester registered under another
    key (mid-rotation) has none; users under another key are skipped for the same reason.

    Returns:
        ``(fingerprints, sealed user ids)``, aligned: what the envelope carries.
    """
    if me.key_id != key_id:
        return [], []
    owners = store.contact_owners([me.token])[0]
    recs = [
        r
        for r in store.get_users([o for o in owners if o != me.user_id])
        if r is not None and r.discoverability is Discoverability.CONTACTS and r.key_id == key_id
    ]
    if not recs:
        return [], []
    return seal_entries(tokens_of(recs), [r.user_id for r in recs])


class PersonalEntries:
    """The client's side: entries gathered over a discovery's rounds, opened at the end."""

    def __init__(self) -> None:
        self._fingerprints: list[bytes] = []
        self._sealed: list[bytes] = []

    def __len__(self) -> int:
        return len(self._sealed)

    def add(self, envelope: ServiceResponse) -> None:
        """Keep the entries one answer carried (a filter discovery gets them every round)."""
        self._fingerprints.extend(envelope.fingerprints)
        self._sealed.extend(envelope.sealed)

    def open(self, tokens: Mapping[str, bytes]) -> dict[str, str]:
        """``{number: user id}`` of the entries sealed to one of ``tokens``."""
        return open_entries(tokens, self._fingerprints, self._sealed)
