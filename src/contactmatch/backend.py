"""The discovery backend as a type: what code may call on a discovery server, wherever it runs.

:class:`~contactmatch.service.DiscoveryServer` (in process) and
:class:`~contactmatch.server.client.HttpClient` (the same service over HTTP) both satisfy
:class:`DiscoveryBackend`, and mypy checks that they do (see the end of this module). Code
typed against the protocol — a demo, a benchmark, an app's sync loop — runs on either
without a hand-kept mirror of signatures drifting apart.

Not part of it, on purpose: ``schemes`` (a property in process, a round trip over HTTP, so
neither spelling fits both), ``sync`` (a client convenience), and the backend's own
operations (bulk registration, ``claim_number``, refresh, snapshots), which no client
reaches. Behind the same signature, ``register`` differs in one way that matters: in process
it is the backend's own, already verified registration; over HTTP the server asks for proof
of possession (the client's extra ``proof=`` argument) before it moves a number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from contactmatch.stores.base import Discoverability

__all__ = ["DiscoveryBackend"]


class DiscoveryBackend(Protocol):
    """The operations a discovery server offers to the users it serves."""

    def info(self, scheme: str | None = None) -> bytes:
        """Published parameters of a scheme (``ServerInfo`` JSON); the default scheme if
        None."""
        ...

    def published_filter(self, scheme: str | None = None, since: int | None = None) -> bytes:
        """The filter of a filter scheme, whole or as a delta from version ``since``."""
        ...

    def discover(self, requester_id: str, request: bytes) -> bytes:
        """Answer one discovery request (wire bytes in, ``ServiceResponse`` bytes out)."""
        ...

    def upload_contacts(self, owner_id: str, request: bytes) -> int:
        """Keep an opt-in ``ContactsUpload``; returns how many tokens were kept."""
        ...

    def register(
        self,
        user_id: str,
        number: str,
        *,
        region: str | None = None,
        discoverability: Discoverability | str = Discoverability.EVERYONE,
    ) -> str:
        """Register ``user_id`` with ``number``; returns the normalised E.164 number."""
        ...

    def change_number(self, user_id: str, new_number: str, *, region: str | None = None) -> str:
        """Move an existing account to a new number; returns the new E.164 number."""
        ...

    def set_discoverability(self, user_id: str, setting: Discoverability | str) -> None:
        """Who may find the user: ``everyone``, ``contacts`` or ``nobody``."""
        ...

    def delete_account(self, user_id: str) -> None:
        """Erase the user everywhere."""
        ...

    def stats(self) -> dict[str, int]:
        """Aggregate counters (never per user)."""
        ...


if TYPE_CHECKING:
    from contactmatch.server.client import HttpClient
    from contactmatch.service import DiscoveryServer

    def _both_are_backends(
        local: DiscoveryServer, remote: HttpClient
    ) -> tuple[DiscoveryBackend, DiscoveryBackend]:
        """Never called: mypy proves here that both implementations satisfy the protocol."""
        return local, remote
