"""What a discovery server is made of: keys, token functions, schemes, registries, limiter.

:class:`ServerCore` builds and holds the parts; :class:`~contactmatch.service.DiscoveryServer`
adds the API on top (accounts, discovery, uploads). Kept apart so that the construction
rules (which schemes a key can serve, which stores it may open) read in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, InvalidKey, UnknownScheme, UnknownUser
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import RateLimiter
from contactmatch.registry.follower import RegistryFollower
from contactmatch.schemes.base import Scheme, TokenName, get_scheme
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.tokens import ServerTokens, make_server_tokens
from contactmatch.service.settings import ServiceSettings
from contactmatch.stores.base import RegistryStore, UserRecord

__all__ = ["SEEN_SET_LABEL", "ServerCore"]

#: The :meth:`ServerKey.derive_secret` label of the seen-set fingerprint key (never change
#: it: every requester's seen set in the store is keyed by it).
SEEN_SET_LABEL: Final = "contactmatch/seen-set/v1"
#: Seconds between writes of a process's discovery counters to the store.
STATS_FLUSH_EVERY: Final = 1.0
_log = logging.getLogger("contactmatch.service")


class ServerCore:
    """The parts of a :class:`~contactmatch.service.DiscoveryServer` (see its arguments).

    Raises:
        InvalidInput: a keyed scheme needs another OPRF mode than the key's.
        InvalidKey: the store holds users this server cannot serve (foreign keys).
        UnknownScheme: a scheme name is unknown.
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
        # Discovery counters are added up here and written at most every
        # STATS_FLUSH_EVERY seconds: one store write per request less, and on SQLite one
        # lock fewer for the processes of a server to queue on.
        self._pending_stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._stats_flushed = time.monotonic()
        #: The token function registrations are stored under: the key's OPRF mode.
        self.canonical: TokenName = "voprf" if self.keys.mode is Mode.VOPRF else "oprf"
        self._token_fns: dict[TokenName, ServerTokens] = {
            # make_server_tokens checks the mode: a POPRF key is refused here (InvalidKey).
            self.canonical: make_server_tokens(
                self.canonical, self.keys, workers=self.settings.oprf_threads
            )
        }
        served = self.settings.schemes or (
            Scheme(self.canonical, "filter").name,
            Scheme(self.canonical, "bucket").name,
        )
        schemes = [get_scheme(name) for name in served]
        for s in schemes:
            if s.oblivious and s.token != self.canonical:
                raise InvalidInput(
                    f"{s.name} needs a key of mode {s.token.upper()}; this key is "
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
        self._schemes: dict[str, SchemeServer] = {
            s.name: SchemeServer(
                s,
                self._token_fns[s.token],
                registry=self._follower.registries[s.token],
                anonymity=self.settings.anonymity,
                filter_fpr=self.settings.filter_fpr,
            )
            for s in schemes
        }
        self.limiter = RateLimiter(
            store, self.settings.limits, self.keys.current.derive_secret(SEEN_SET_LABEL), _clock
        )
        #: Where the registries came from at start-up: ``"snapshot"`` or ``"store"``.
        self.started_from = self._follower.start()
        for srv in self._schemes.values():
            if srv.scheme.retrieves_privately:
                # Lay the registry out for PIR now (seconds at 10^6), not in a client's request.
                srv.registry.pir()
        #: Called after every discovery round with (scheme, counters, seconds): how the HTTP
        #: app feeds its metrics without the service knowing about Prometheus. The scheme is
        #: a served scheme's name or "" (never a string a client chose).
        self.observer: Callable[[str, Mapping[str, int], float], None] | None = None

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

    def _canonical_tokens(self, numbers: Sequence[str]) -> list[bytes]:
        """Tokens of numbers under the stored token function (registration, metering)."""
        return self._token_fns[self.canonical].tokens(numbers)

    def _numbers_of(self, recs: Sequence[UserRecord]) -> list[str]:
        key = self.data_key
        return [key.open_number(r.number_ct, r.wrapped_key, r.user_id, r.token) for r in recs]

    def _account(self, user_id: str) -> UserRecord:
        """The live registration of ``user_id``; discovery and writes need one."""
        rec = self.store.get_users([user_id])[0]
        if rec is None:
            raise UnknownUser("no registered user has that id")
        return rec

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

    def _count(self, deltas: Mapping[str, int]) -> None:
        """Add discovery counters; written to the store once ``STATS_FLUSH_EVERY`` has passed."""
        with self._stats_lock:
            self._pending_stats.update(deltas)
            due = time.monotonic() - self._stats_flushed >= STATS_FLUSH_EVERY
        if due:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Write the counters this process has not written yet (at shutdown, before reads).

        A process that dies loses at most ``STATS_FLUSH_EVERY`` seconds of counts: they
        are aggregate statistics, not quotas (quotas are charged in the store at once).
        """
        with self._stats_lock:
            pending, self._pending_stats = self._pending_stats, Counter()
            self._stats_flushed = time.monotonic()
        if not pending:
            return
        try:
            self.store.incr_stats(dict(pending))
        except BaseException:
            with self._stats_lock:  # kept for the next flush
                self._pending_stats.update(pending)
            raise

    def refresh(self) -> tuple[int, int]:
        """Bring the registries up to date with the store; returns (upserted, removed) users.

        Several server processes share one store: each reads only the store's change feed
        since its last position, so a refresh costs in proportion to the changes made since
        (by any process), not to the registry. A deployment calls this periodically (the HTTP
        server runs it in the background with ``refresh_every``); the process's own writes
        are applied at once.
        """
        self.flush_stats()
        return self._follower.refresh()

    def save_snapshot(self) -> Path | None:
        """Write the registry snapshot (for fast start-up of the next process); None when
        the server has no snapshot directory."""
        self.flush_stats()
        return self._follower.save_snapshot()

    @property
    def registry_size(self) -> int:
        """Users the canonical registry holds (for metrics and readiness)."""
        return len(self._follower.registries[self.canonical])

    @property
    def feed_position(self) -> int:
        """The store feed position the registries reflect."""
        return self._follower.seq
