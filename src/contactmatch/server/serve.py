"""Running the app: ``contactmatch serve`` (uvicorn) and a background-thread server.

Importing this module is cheap (no uvicorn, no Starlette): the CLI imports it to build its
argument parser, and the heavy imports happen in :func:`run` and :class:`ServerThread`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, cast

from contactmatch.errors import InvalidInput, InvalidKey

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from contactmatch.atrest import DataKey
    from contactmatch.server.auth import Authenticator, NumberVerifier
    from contactmatch.service import DiscoveryServer, ServiceSettings

__all__ = [
    "ServerThread",
    "add_serve_arguments",
    "build_server",
    "load_callable",
    "load_or_create_data_key",
    "run",
    "serve_command",
]

_DEFAULT_STORE = "sqlite:///contactmatch.db"
_MiB = 1024 * 1024


def load_or_create_data_key(path: str | Path, *, store_key_ids: Sequence[str] = ()) -> DataKey:
    """Load the at-rest data key, creating it (mode 0600) with a notice if it is missing.

    Args:
        path: the key file.
        store_key_ids: data key ids the store already holds numbers under. A new key is
            never created for such a store: its numbers would be unreadable, and the cause
            (a wrong path) would only show at the next rotation.

    Raises:
        InvalidKey: the file exists but is unusable (permissions, format), or it is missing
            while the store holds numbers under other data keys.
    """
    from contactmatch.atrest import DataKey

    p = Path(path)
    if not p.exists() and store_key_ids:
        raise InvalidKey(
            f"no data key file {p.name!r}, and the store holds numbers under data key id(s) "
            f"{', '.join(sorted(store_key_ids))}: pass the data key that made them "
            "(--data-key); a new key would not read them"
        )
    if not p.exists():
        try:
            DataKey.generate().save(p)
        except InvalidKey:
            pass  # another process created it between the check and the save: use theirs
        else:
            sys.stderr.write(
                f"contactmatch: created data key {p} (mode 0600); back it up and keep it "
                "apart from the database: without it the stored numbers cannot be read\n"
            )
    return DataKey.load(p)


def load_callable(spec: str) -> Callable[..., object]:
    """Import ``module:attribute`` (dots allowed in both parts), e.g. a number verifier.

    Raises:
        InvalidInput: the spec is malformed, the module or attribute is missing, or the
            attribute is not callable.
    """
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput("expected MODULE:CALLABLE, e.g. mymessenger.sms:verify_number")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise InvalidInput(f"cannot import {module_name!r} ({type(exc).__name__})") from None
    except AttributeError:
        raise InvalidInput(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise InvalidInput(f"{spec!r} is not callable")
    return obj


def build_server(
    store_url: str,
    key_path: str,
    *,
    data_key_path: str | None = None,
    settings: ServiceSettings | None = None,
    snapshot_dir: str | None = None,
    allow_foreign_keys: bool = False,
) -> DiscoveryServer:
    """Open the store and keys and build the discovery server ``run`` serves.

    Args:
        store_url: ``memory://``, ``sqlite:///path.db``, ``postgresql://...``, ``redis://...``.
        key_path: the OPRF server key file (``contactmatch keygen``).
        data_key_path: the at-rest data key; ``<key_path>.data`` by default, created if missing.
        settings: schemes, region and quotas.
        snapshot_dir: where registry snapshots are read at start-up and written.
        allow_foreign_keys: serve even if the store holds users under keys this server
            does not hold (they stay invisible); otherwise that is refused.

    Raises:
        InvalidKey: a key file is unusable, or does not match the store's keys.
        FileNotFoundError: the server key file does not exist.
        StoreUnavailable: the store cannot be reached.
    """
    from contactmatch.keys import ServerKey
    from contactmatch.service import DiscoveryServer
    from contactmatch.stores import open_store

    key = ServerKey.load(key_path)
    store = open_store(store_url)
    try:
        census = store.key_census()
        data_key = load_or_create_data_key(
            data_key_path or f"{key_path}.data",
            store_key_ids=[k for k, n in census.data.items() if n],
        )
        return DiscoveryServer(
            store,
            key,
            data_key,
            settings=settings,
            snapshot_dir=snapshot_dir,
            allow_foreign_keys=allow_foreign_keys,
        )
    except BaseException:
        store.close()
        raise


def run(
    store_url: str,
    key_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    data_key_path: str | None = None,
    settings: ServiceSettings | None = None,
    max_body: int = 4 * _MiB,
    token_ttl: float = 3600.0,
    authenticate: Authenticator | None = None,
    admin: Authenticator | None = None,
    refresh_every: float = 0.0,
    verify_number: NumberVerifier | None = None,
    allow_unverified_numbers: bool = False,
    snapshot_dir: str | None = None,
    snapshot_every: float = 600.0,
    allow_foreign_keys: bool = False,
) -> None:
    """Serve the HTTP API with uvicorn until interrupted.

    Args:
        store_url: the registry store URL.
        key_path: the OPRF server key file.
        host: interface to listen on.
        port: TCP port.
        data_key_path: the at-rest data key (default ``<key_path>.data``, created if missing).
        settings: schemes, region and quotas.
        max_body: largest request body in bytes.
        token_ttl: lifetime of the default signed tokens (used when ``authenticate`` is None).
        authenticate: bearer token -> user id; by default :class:`SignedTokens` keyed from
            the server key (a demo default: a messenger passes its own session check).
        admin: authenticator for ``/v1/stats``; without it that endpoint answers 403.
        verify_number: proves possession of a number (the messenger's SMS check), given the
            normalised E.164 number; without it the number endpoints are not served.
        allow_unverified_numbers: development only: serve the number endpoints without a
            verifier (logged loudly; see :func:`~contactmatch.server.app.create_app`).
        snapshot_dir: registry snapshots: start-up maps the newest and reads the store's
            change feed from there; written every ``snapshot_every`` seconds and at shutdown.
        snapshot_every: seconds between snapshot writes (with ``snapshot_dir``).
        allow_foreign_keys: serve a store with users under keys this server does not hold.
        refresh_every: seconds between background re-syncs of the index with the store
            (for several server processes on one store); 0 for a single process.
    """
    import uvicorn

    from contactmatch.server.app import create_app
    from contactmatch.server.auth import SignedTokens

    server = build_server(
        store_url,
        key_path,
        data_key_path=data_key_path,
        settings=settings,
        snapshot_dir=snapshot_dir,
        allow_foreign_keys=allow_foreign_keys,
    )
    try:
        auth = authenticate or SignedTokens.from_server_key(server.keys.current, token_ttl)
        app = create_app(
            server,
            authenticate=auth,
            max_body=max_body,
            admin=admin,
            refresh_every=refresh_every,
            verify_number=verify_number,
            allow_unverified_numbers=allow_unverified_numbers,
            snapshot_every=snapshot_every if snapshot_dir else 0.0,
        )
        if verify_number is None and not allow_unverified_numbers:
            sys.stderr.write(
                "contactmatch: no --verify-number given: /v1/register and /v1/number are not "
                "served (register users from the backend, or pass a verifier)\n"
            )
        # The lifespan runs the background refresh task.
        uvicorn.run(app, host=host, port=port, lifespan="on", ws="none", server_header=False)
    finally:
        server.store.close()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``contactmatch serve`` to ``parser`` (imports nothing heavy)."""
    parser.add_argument(
        "--store",
        default=_DEFAULT_STORE,
        metavar="URL",
        help=f"registry store: memory://, sqlite:///PATH, postgresql://, redis:// "
        f"(default {_DEFAULT_STORE})",
    )
    parser.add_argument(
        "--key", required=True, metavar="PATH", help="OPRF server key file (contactmatch keygen)"
    )
    parser.add_argument(
        "--data-key",
        default=None,
        metavar="PATH",
        help="key encrypting numbers at rest (default KEY.data; created, mode 0600, if missing)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument(
        "--region", default=None, help="default region for numbers without +CC (e.g. IR)"
    )
    parser.add_argument(
        "--scheme",
        action="append",
        dest="schemes",
        default=None,
        metavar="NAME",
        help="serve this scheme (repeatable; default oprf+filter and oprf+bucket, or their "
        "voprf twins for a VOPRF key)",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=4 * _MiB,
        metavar="BYTES",
        help="largest request body (default 4 MiB)",
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of the demo's signed bearer tokens (default 3600)",
    )
    parser.add_argument(
        "--refresh-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="re-sync the index with the store this often, for several server processes "
        "sharing one store (default 0: off, a single process)",
    )
    parser.add_argument(
        "--snapshot-dir",
        default=None,
        metavar="DIR",
        help="registry snapshots: start-up maps the newest valid one and reads the store's "
        "change feed from there (fast); written every --snapshot-every seconds and at shutdown",
    )
    parser.add_argument(
        "--snapshot-every",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds between snapshot writes (default 600)",
    )
    parser.add_argument(
        "--allow-foreign-keys",
        action="store_true",
        help="serve even if the store holds users under OPRF or data keys this server does "
        "not hold (they stay invisible); refused by default",
    )
    parser.add_argument(
        "--verify-number",
        default=None,
        metavar="MODULE:CALLABLE",
        help="the messenger's proof-of-possession check, called as "
        "f(user_id, e164, proof) -> bool for every registration and number change (e.g. "
        "mymessenger.sms:verify_code); without it /v1/register and /v1/number are not served",
    )
    parser.add_argument(
        "--allow-unverified-numbers",
        action="store_true",
        help="DEVELOPMENT ONLY: serve /v1/register and /v1/number without a verifier; they "
        "then reveal whether a number is registered. Logged as a warning",
    )


def serve_command(args: argparse.Namespace) -> int:
    """Handler of ``contactmatch serve``: run the server until interrupted; returns 0."""
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode
    from contactmatch.service import DEFAULT_SCHEMES, ServiceSettings

    schemes = tuple(args.schemes or ())
    if not schemes:
        # The default flows are OPRF ones; a VOPRF key serves their verifiable twins.
        verifiable = ServerKey.load(args.key).mode is Mode.VOPRF
        schemes = tuple("v" + s if verifiable else s for s in DEFAULT_SCHEMES)
    settings = ServiceSettings(schemes=schemes, region=args.region)
    verifier = (
        cast("NumberVerifier", load_callable(args.verify_number)) if args.verify_number else None
    )
    if args.allow_unverified_numbers:
        sys.stderr.write(
            "contactmatch: WARNING: --allow-unverified-numbers: registration needs no proof "
            "of possession and answers whether a number is registered. Development only.\n"
        )
    run(
        args.store,
        args.key,
        host=args.host,
        port=args.port,
        data_key_path=args.data_key,
        settings=settings,
        max_body=args.max_body,
        token_ttl=args.token_ttl,
        refresh_every=args.refresh_every,
        verify_number=verifier,
        allow_unverified_numbers=args.allow_unverified_numbers,
        snapshot_dir=args.snapshot_dir,
        snapshot_every=args.snapshot_every,
        allow_foreign_keys=args.allow_foreign_keys,
    )
    return 0


class ServerThread:
    """uvicorn serving an ASGI app in a background thread (tests, demos).

    ``with ServerThread(app) as url:`` starts the server on a free port of ``127.0.0.1``,
    waits until it accepts connections, gives its base URL, and on exit stops it and waits
    for the thread.

    Args:
        app: the ASGI application.
        host: interface to bind.
        port: TCP port; 0 picks a free one (see :attr:`port` once started).
        timeout: seconds to wait for start-up and for shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 10.0,
        lifespan: Literal["on", "off"] = "off",
    ) -> None:
        import uvicorn

        self.host = host
        self.port = port
        self.timeout = timeout
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan=lifespan,
            ws="none",
            # log_config=None leaves the host process's logging configuration alone.
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        self._server: uvicorn.Server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="contactmatch-http", daemon=True)
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"<ServerThread {self.url} alive={self._thread.is_alive()}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # uvicorn exits with SystemExit on bind errors
            self._failure = exc

    def start(self) -> str:
        """Start serving; returns the base URL.

        Raises:
            OSError: the server did not start (port taken, start-up error) in time.
        """
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self._server.started:
            if not self._thread.is_alive():
                cause = type(self._failure).__name__ if self._failure else "exited"
                raise OSError(
                    f"the HTTP server failed to start on {self.host}:{self.port} ({cause})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server did not start within {self.timeout:g}s")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self.url

    def stop(self) -> None:
        """Ask uvicorn to shut down gracefully and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self.timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
