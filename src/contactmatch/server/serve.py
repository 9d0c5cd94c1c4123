"""Running the app: :func:`run` (uvicorn, what ``contactmatch serve`` calls) and a
background-thread server.

Importing this module is cheap (no uvicorn, no Starlette): the heavy imports happen in
:func:`run` and :class:`ServerThread`. ``run(..., workers=N)`` (N > 1) runs N uvicorn worker
processes on one port; each builds its own app from a key-free configuration (see
:mod:`contactmatch.server._workers`). The command line itself (options, signals) lives in
:mod:`contactmatch.cli.serve`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from contactmatch._json import load_json
from contactmatch._urls import redact_url
from contactmatch.errors import InvalidInput, InvalidKey
from contactmatch.ratelimit import Quota, RateLimits

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from contactmatch.atrest import DataKey
    from contactmatch.server.auth import Authenticator, NumberVerifier
    from contactmatch.service import DiscoveryServer, ServiceSettings

__all__ = [
    "LOG_FORMATS",
    "WORKER_REFRESH_EVERY",
    "JsonLogFormatter",
    "ServerThread",
    "build_server",
    "configure_logging",
    "limits_from_json",
    "limits_to_json",
    "load_callable",
    "load_limits",
    "load_or_create_data_key",
    "log_startup",
    "operator_token",
    "run",
]

logger = logging.getLogger("contactmatch.server")
#: ``serve --log-format``: ``text`` for people, ``json`` (one object per line) for shippers.
LOG_FORMATS = ("text", "json")

_MiB = 1024 * 1024
#: Refresh interval of worker processes when none is given: the workers of one server are
#: several processes on one store, so without it a registration made through one worker
#: would never reach the others. A refresh that finds no change costs about a millisecond
#: (docs/registry.md, "Measured").
WORKER_REFRESH_EVERY = 1.0


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


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``.

    An exception adds its type only (``exception``): a traceback's text can quote the
    values being processed, numbers and tokens included.
    """

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{when}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> Callable[[], None]:
    """Send the ``contactmatch.*`` loggers to stderr in ``log_format`` (``serve`` and its
    workers call it; a host application configures logging its own way instead).

    uvicorn's own loggers are left alone, so its access log keeps its standard format.

    Returns:
        A function that undoes it (removes the handler, restores the level).

    Raises:
        InvalidInput: an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise InvalidInput(f"unknown log format {log_format!r} (known: {', '.join(LOG_FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("contactmatch")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous)

    return undo


def log_startup(server: DiscoveryServer, store_url: str) -> None:
    """The start-up summary at INFO: what is served, from where, at which feed position.

    Key ids are public (they travel with every evaluation); the store URL is printed without
    its password.
    """
    logger.info(
        "serving %s: OPRF key ids %s, %d users, schemes %s, registry from %s at feed sequence %d",
        redact_url(store_url),
        ", ".join(server.keys.key_ids),
        server.registry_size,
        ", ".join(server.schemes),
        server.started_from,
        server.feed_position,
    )


def operator_token(path: str | None, operator: str) -> Authenticator | None:
    """The :class:`~contactmatch.server.auth.StaticToken` in ``path`` (None for None).

    Raises:
        InvalidKey: the file is missing, readable by others or holds too short a token.
    """
    if path is None:
        return None
    from contactmatch.server.auth import StaticToken

    return StaticToken.from_file(path, operator=operator)


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


def _number(value: object, where: str) -> float:
    # bool is an int to Python, never a quota to an operator.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number")
    return float(value)


def limits_from_json(obj: object, *, source: str = "limits") -> RateLimits:
    """Quotas from their JSON form: an object whose keys are fields of :class:`RateLimits`.

    A quota field is an object ``{"capacity": number, "period": seconds}`` (either key may be
    left out to keep the default); ``reserve_share`` and ``max_account_share`` are numbers,
    ``max_items`` a positive integer. Fields left out keep their defaults. Quota names are
    not configurable: they key the rate state in the store, so renaming one would silently
    hand every account a fresh quota.

    Args:
        obj: the parsed document.
        source: named in error messages (the file, for ``--limits``).

    Raises:
        InvalidInput: not an object, an unknown key, a value of the wrong type, or quotas
            :class:`RateLimits` refuses (e.g. one account could take too much of a ceiling).
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"{source}: expected a JSON object of RateLimits fields")
    defaults = RateLimits()
    names = [f.name for f in dataclasses.fields(RateLimits)]
    unknown = sorted(str(k)[:40] for k in set(obj) - set(names))
    if unknown:
        raise InvalidInput(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown[:5]))} "
            f"(known: {', '.join(names)})"
        )
    values: dict[str, Any] = {}
    for name, value in obj.items():
        default = getattr(defaults, name)
        where = f"{source}: {name}"
        if isinstance(default, Quota):
            if not isinstance(value, dict):
                raise InvalidInput(f'{where} must be an object {{"capacity": ..., "period": ...}}')
            extra = sorted(str(k)[:40] for k in set(value) - {"capacity", "period"})
            if extra:
                raise InvalidInput(f"{where}: unknown key(s) {', '.join(map(repr, extra[:5]))}")
            capacity = _number(value.get("capacity", default.capacity), f"{where}.capacity")
            period = _number(value.get("period", default.period), f"{where}.period")
            try:
                values[name] = Quota(name=default.name, capacity=capacity, period=period)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {exc}") from None
        elif isinstance(default, bool) or not isinstance(default, int | float):
            raise TypeError(f"RateLimits.{name} has a type limits_from_json does not know")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{where} must be a positive integer")
            values[name] = value
        else:
            values[name] = _number(value, where)
    try:
        return RateLimits(**values)
    except InvalidInput as exc:
        raise InvalidInput(f"{source}: {exc}") from None


def limits_to_json(limits: RateLimits) -> dict[str, Any]:
    """The JSON form :func:`limits_from_json` reads (every field, defaults included).

    Raises:
        InvalidInput: a quota was renamed (the JSON form cannot carry names; see above).
    """
    defaults = RateLimits()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(RateLimits):
        value = getattr(limits, f.name)
        if isinstance(value, Quota):
            if value.name != getattr(defaults, f.name).name:
                raise InvalidInput(f"quota {f.name} is renamed; its name cannot be configured")
            out[f.name] = {"capacity": value.capacity, "period": value.period}
        else:
            out[f.name] = value
    return out


def load_limits(path: str | Path) -> RateLimits:
    """Read a ``--limits`` file (JSON, see :func:`limits_from_json`) with the strict loader.

    Raises:
        InvalidInput: the file cannot be read, is not strict JSON, or holds bad quotas.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read limits file {p}: {exc.strerror or exc}") from None
    try:
        obj = load_json(raw)
    except InvalidInput as exc:
        raise InvalidInput(f"limits file {p}: {exc}") from None
    return limits_from_json(obj, source=f"limits file {p}")


def build_server(
    store_url: str,
    key_path: str,
    *,
    data_key_path: str | None = None,
    settings: ServiceSettings | None = None,
    snapshot_dir: str | None = None,
    allow_foreign_keys: bool = False,
    previous_key_paths: Sequence[str] = (),
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
        previous_key_paths: key files of the keys a rotation is moving away from: served
            beside ``key_path`` (a :class:`~contactmatch.keys.KeyRing`) so that users not yet
            rekeyed and clients holding old tokens keep working (docs/operations.md).

    Raises:
        InvalidKey: a key file is unusable, keys of different modes, or the keys do not
            match the store's.
        FileNotFoundError: a server key file does not exist.
        StoreUnavailable: the store cannot be reached.
    """
    from contactmatch.keys import KeyRing, ServerKey
    from contactmatch.service import DiscoveryServer
    from contactmatch.stores import open_store

    current = ServerKey.load(key_path)
    key = KeyRing(current, [ServerKey.load(p) for p in previous_key_paths])
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
    workers: int = 1,
    previous_key_paths: Sequence[str] = (),
    admin_token_file: str | None = None,
    metrics_token_file: str | None = None,
    log_format: str | None = None,
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
            (for several server processes on one store); 0 for a single process, and
            :data:`WORKER_REFRESH_EVERY` when ``workers`` > 1.
        workers: worker processes sharing the port (uvicorn's multiprocess supervisor).
            With more than one, each worker builds its own server and app from the same
            options (``authenticate``, ``admin`` and ``verify_number`` must then be
            importable module-level callables), the store must be shared (not
            ``memory://``), and each worker evaluates OPRF batches on cores // workers
            threads.
        previous_key_paths: key files served beside ``key_path`` during a rotation.
        admin_token_file: a file holding the operator token of ``/v1/stats`` (instead of
            ``admin``; workers read the file themselves).
        metrics_token_file: a file holding the token ``/metrics`` then requires.
        log_format: ``"text"`` or ``"json"``: configure the ``contactmatch`` loggers
            (:func:`configure_logging`); None leaves logging to the caller.

    Raises:
        InvalidInput: a bad option, or ``workers`` > 1 with options a worker cannot rebuild.
        InvalidKey: a key file is unusable, or does not match the store's keys.
        StoreUnavailable: the store cannot be reached.
        ContactMatchError: a worker process failed to start (its error in the message).
    """
    if type(workers) is not int or workers < 1:
        raise InvalidInput("workers must be a positive integer")
    if admin is not None and admin_token_file is not None:
        raise InvalidInput("pass admin or admin_token_file, not both")
    with contextlib.ExitStack() as stack:
        if log_format is not None:
            # Undone on return: a process that runs the server and then goes on (tests, an
            # embedding application) gets its logging configuration back.
            stack.callback(configure_logging(log_format))
        # Read the token files here once, so a bad one fails before any worker starts.
        admin_token = operator_token(admin_token_file, "admin")
        metrics_auth = operator_token(metrics_token_file, "metrics")
        if workers > 1:
            from contactmatch.server._workers import WorkerConfig, serve_workers

            config = WorkerConfig.build(
                store_url,
                key_path,
                data_key_path=data_key_path,
                settings=settings,
                max_body=max_body,
                token_ttl=token_ttl,
                authenticate=authenticate,
                admin=admin,
                refresh_every=refresh_every or WORKER_REFRESH_EVERY,
                verify_number=verify_number,
                allow_unverified_numbers=allow_unverified_numbers,
                snapshot_dir=snapshot_dir,
                snapshot_every=snapshot_every,
                allow_foreign_keys=allow_foreign_keys,
                workers=workers,
                previous_key_paths=previous_key_paths,
                admin_token_file=admin_token_file,
                metrics_token_file=metrics_token_file,
                log_format=log_format,
            )
            serve_workers(config, host=host, port=port, workers=workers)
            return
        from contactmatch.server import require_extra

        require_extra("server")
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
            previous_key_paths=previous_key_paths,
        )
        try:
            auth = authenticate or SignedTokens.from_server_key(server.keys.current, token_ttl)
            log_startup(server, store_url)
            app = create_app(
                server,
                authenticate=auth,
                max_body=max_body,
                admin=admin or admin_token,
                metrics_auth=metrics_auth,
                refresh_every=refresh_every,
                verify_number=verify_number,
                allow_unverified_numbers=allow_unverified_numbers,
                snapshot_every=snapshot_every if snapshot_dir else 0.0,
            )
            if verify_number is None and not allow_unverified_numbers:
                _notice_no_verifier()
            # The lifespan runs the background refresh task.
            uvicorn.run(app, host=host, port=port, lifespan="on", ws="none", server_header=False)
        finally:
            server.store.close()


def _notice_no_verifier() -> None:
    """Say (once per server, on stderr) that the number endpoints are not served."""
    sys.stderr.write(
        "contactmatch: no --verify-number given: /v1/register and /v1/number are not "
        "served (register users from the backend, or pass a verifier)\n"
    )


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
        from contactmatch.server import require_extra

        require_extra("server")
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
