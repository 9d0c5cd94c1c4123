"""``contactmatch serve --workers N``: N uvicorn worker processes on one port.

Why uvicorn's workers: one listening socket shared by every worker (no port per process, no
proxy in front of them), a supervisor that replaces a worker that dies and stops when one
cannot start, and a graceful stop on SIGTERM or SIGINT in which every worker finishes its
in-flight requests. It is the server ``serve`` already runs, so nothing new is installed.

The supervisor spawns fresh interpreters (not forks), so a worker inherits nothing from the
parent: each builds its own :class:`~contactmatch.service.DiscoveryServer` and app from a
:class:`WorkerConfig` the parent writes to a private temporary file named by the environment
variable ``CONTACTMATCH_SERVE_CONFIG``. The file holds paths, URLs and options only: each
worker reads every key from its own file, so no key material is ever written anywhere new.

The workers of one server are exactly "several server processes on one store", and follow the
library's rule for them: quotas are charged atomically in the store; each worker maps the
shared snapshot at start-up and follows the store's change feed (``refresh_every`` defaults to
:data:`~contactmatch.server.serve.WORKER_REFRESH_EVERY` here); filter versions are digests of
content, so every worker publishes the same filter under the same version.

Snapshots: every worker writes its own, like separate ``serve`` processes sharing a snapshot
directory. That is safe: a snapshot is written under a temporary name unique to the writer
(pid and random suffix), fsynced and renamed over its final name, so a reader maps a whole old
file or a whole new one; pruning never deletes another live process's temporary file; and a
deleted file stays valid for the processes that mapped it. It is also needed: writing is how a
process folds the changes it applied since start-up into a freshly mapped base
(:meth:`~contactmatch.registry.follower.RegistryFollower.save_snapshot`). With a single writer
the other workers would keep every change since their start in anonymous memory, because the
follower has no way to adopt a snapshot another process wrote while it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from contactmatch._json import load_json
from contactmatch.errors import ContactMatchError, InvalidInput
from contactmatch.server.serve import (
    _notice_no_verifier,
    build_server,
    configure_logging,
    limits_from_json,
    limits_to_json,
    load_callable,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from contactmatch.server.auth import Authenticator, NumberVerifier
    from contactmatch.service import DiscoveryServer, ServiceSettings

__all__ = ["CONFIG_ENV", "WorkerConfig", "app_from_environment", "serve_workers"]

#: Environment variable naming the worker configuration file (set by the parent only).
CONFIG_ENV = "CONTACTMATCH_SERVE_CONFIG"
#: prometheus_client's multiprocess switch (``contactmatch.server.metrics.MULTIPROC_ENV``;
#: not imported from there, which would import prometheus_client too early).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_CONFIG_NAME = "worker.json"
#: A worker that cannot start appends its error here, next to the configuration file.
_FAILED_NAME = "failed"
#: uvicorn's exit status for a worker that failed before serving: its supervisor then stops
#: instead of restarting the worker in a loop (``uvicorn.config.STARTUP_FAILURE``).
_STARTUP_FAILURE = 3


def _spec_of(fn: Callable[..., object] | None, what: str) -> str | None:
    """``module:qualname`` of a callable a spawned worker can import, or None for None."""
    if fn is None:
        return None
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    refusal = InvalidInput(
        f"with workers > 1, {what} must be a module-level callable each worker can import "
        "(MODULE:CALLABLE): workers are fresh processes and share no objects"
    )
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        raise refusal
    spec = f"{module}:{qualname}"
    try:
        found = load_callable(spec)
    except InvalidInput:
        raise refusal from None
    if found is not fn:
        raise refusal
    return spec


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """Everything a worker needs to build its server and app: no key material, only the
    paths of the key files, the store URL and options (serialised as JSON)."""

    store_url: str
    key_path: str
    data_key_path: str | None
    schemes: list[str] | None
    region: str | None
    anonymity: int
    filter_fpr: float
    #: :class:`~contactmatch.ratelimit.RateLimits` in the ``--limits`` JSON form.
    limits: dict[str, Any]
    max_body: int
    token_ttl: float
    #: ``MODULE:CALLABLE`` specs; None: signed tokens from the server key / no admin / none.
    authenticate: str | None
    admin: str | None
    verify_number: str | None
    allow_unverified_numbers: bool
    refresh_every: float
    snapshot_dir: str | None
    snapshot_every: float
    allow_foreign_keys: bool
    #: Threads each worker evaluates one OPRF batch on.
    oprf_threads: int
    #: Key files served beside ``key_path`` during a rotation (paths, never key bytes).
    previous_key_paths: list[str]
    #: Files holding the operator tokens of ``/v1/stats`` and ``/metrics`` (paths only).
    admin_token_file: str | None
    metrics_token_file: str | None
    #: ``text`` / ``json``: how each worker configures the ``contactmatch`` loggers.
    log_format: str | None
    #: prometheus_client's multiprocess directory, private to this run (set by
    #: :func:`serve_workers`); every worker writes its values there, any worker's scrape
    #: adds them up.
    metrics_dir: str | None = None

    @classmethod
    def build(
        cls,
        store_url: str,
        key_path: str,
        *,
        data_key_path: str | None,
        settings: ServiceSettings | None,
        max_body: int,
        token_ttl: float,
        authenticate: Authenticator | None,
        admin: Authenticator | None,
        refresh_every: float,
        verify_number: NumberVerifier | None,
        allow_unverified_numbers: bool,
        snapshot_dir: str | None,
        snapshot_every: float,
        allow_foreign_keys: bool,
        workers: int,
        previous_key_paths: Sequence[str] = (),
        admin_token_file: str | None = None,
        metrics_token_file: str | None = None,
        log_format: str | None = None,
    ) -> WorkerConfig:
        """The configuration of ``workers`` workers serving these options.

        Raises:
            InvalidInput: the store is ``memory://`` (one process's own: the workers would
                each hold a different registry and separate quotas), or a callable is not
                importable by name.
        """
        from contactmatch.hazmat._pool import available_cores
        from contactmatch.service import ServiceSettings

        if store_url.partition(":")[0].lower() == "memory":
            raise InvalidInput(
                "memory:// is one process's own store: --workers > 1 needs a shared store "
                "(sqlite:///, postgresql://, redis://)"
            )
        s = settings or ServiceSettings()
        return cls(
            store_url=store_url,
            key_path=str(key_path),
            data_key_path=None if data_key_path is None else str(data_key_path),
            schemes=None if s.schemes is None else list(s.schemes),
            region=s.region,
            anonymity=s.anonymity,
            filter_fpr=s.filter_fpr,
            limits=limits_to_json(s.limits),
            max_body=max_body,
            token_ttl=token_ttl,
            authenticate=_spec_of(authenticate, "authenticate"),
            admin=_spec_of(admin, "admin"),
            verify_number=_spec_of(verify_number, "verify_number"),
            allow_unverified_numbers=allow_unverified_numbers,
            refresh_every=refresh_every,
            snapshot_dir=None if snapshot_dir is None else str(snapshot_dir),
            snapshot_every=snapshot_every,
            allow_foreign_keys=allow_foreign_keys,
            # N workers each splitting every batch over all cores would run N × cores
            # threads on the cores: more switching, no more throughput.
            oprf_threads=max(1, available_cores() // workers),
            previous_key_paths=[str(p) for p in previous_key_paths],
            admin_token_file=None if admin_token_file is None else str(admin_token_file),
            metrics_token_file=None if metrics_token_file is None else str(metrics_token_file),
            log_format=log_format,
        )

    def settings(self) -> ServiceSettings:
        """The :class:`~contactmatch.service.ServiceSettings` this configuration carries."""
        from contactmatch.service import ServiceSettings

        return ServiceSettings(
            schemes=None if self.schemes is None else tuple(self.schemes),
            region=self.region,
            anonymity=self.anonymity,
            filter_fpr=self.filter_fpr,
            limits=limits_from_json(self.limits, source="worker configuration"),
            oprf_threads=self.oprf_threads,
        )

    def dumps(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode("utf-8")

    @classmethod
    def loads(cls, raw: bytes) -> WorkerConfig:
        """Read :meth:`dumps`' output back.

        Raises:
            InvalidInput: not strict JSON, or not the fields of this version.
        """
        obj = load_json(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(obj, dict) or set(obj) != names:
            raise InvalidInput("not a worker configuration of this contactmatch version")
        return cls(**obj)

    def server(self) -> DiscoveryServer:
        """Open the store and keys and build the discovery server (as ``serve`` does)."""
        return build_server(
            self.store_url,
            self.key_path,
            data_key_path=self.data_key_path,
            settings=self.settings(),
            snapshot_dir=self.snapshot_dir,
            allow_foreign_keys=self.allow_foreign_keys,
            previous_key_paths=self.previous_key_paths,
        )


def _closing_store(
    app: Starlette, server: DiscoveryServer, metrics_dir: str | None = None
) -> Starlette:
    """Close the worker's store when the app's lifespan ends (after the final snapshot),
    and retire its live gauges from the multiprocess metrics directory.

    uvicorn ends a worker that stopped on a signal by re-raising that signal under the
    default handler, so code after the server loop never runs; the lifespan's end does.
    """
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[Any]:
        try:
            async with inner(a) as state:
                yield state
        finally:
            server.store.close()
            if metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid(), metrics_dir)  # type: ignore[no-untyped-call]

    app.router.lifespan_context = lifespan
    return app


def _build_app(config: WorkerConfig) -> Starlette:
    from contactmatch.server.app import create_app
    from contactmatch.server.auth import SignedTokens
    from contactmatch.server.serve import log_startup, operator_token

    server = config.server()
    try:
        auth = (
            cast("Authenticator", load_callable(config.authenticate))
            if config.authenticate
            else SignedTokens.from_server_key(server.keys.current, config.token_ttl)
        )
        admin = (
            cast("Authenticator", load_callable(config.admin))
            if config.admin
            else operator_token(config.admin_token_file, "admin")
        )
        verify = (
            cast("NumberVerifier", load_callable(config.verify_number))
            if config.verify_number
            else None
        )
        app = create_app(
            server,
            authenticate=auth,
            max_body=config.max_body,
            admin=admin,
            refresh_every=config.refresh_every,
            verify_number=verify,
            allow_unverified_numbers=config.allow_unverified_numbers,
            snapshot_every=config.snapshot_every if config.snapshot_dir else 0.0,
            metrics_auth=operator_token(config.metrics_token_file, "metrics"),
        )
        log_startup(server, config.store_url)
    except BaseException:
        server.store.close()
        raise
    return _closing_store(app, server, config.metrics_dir)


def app_from_environment() -> Starlette:
    """uvicorn's app factory, called once in each worker process.

    Builds the server and app from the configuration file named by ``CONTACTMATCH_SERVE_CONFIG``.
    If that fails, the error (type and message, no traceback) is appended to the parent's
    run directory, where :func:`serve_workers` picks it up, and the worker exits with
    uvicorn's start-up failure status, which stops the supervisor rather than restarting a
    worker that would fail the same way.
    """
    where = os.environ.get(CONFIG_ENV)
    if not where:
        sys.stderr.write(f"contactmatch: error: {CONFIG_ENV} is not set (run contactmatch serve)\n")
        sys.exit(_STARTUP_FAILURE)
    path = Path(where)
    try:
        config = WorkerConfig.loads(path.read_bytes())
        if config.log_format is not None:
            configure_logging(config.log_format)
        if config.metrics_dir is not None:
            # Before prometheus_client is first imported: it picks its value store then.
            os.environ[MULTIPROC_ENV] = config.metrics_dir
        return _build_app(config)
    except Exception as exc:  # any failure ends the worker; its cause goes to the parent
        _report_failure(path.parent / _FAILED_NAME, f"{type(exc).__name__}: {exc}")
        sys.exit(_STARTUP_FAILURE)


def _report_failure(path: Path, message: str) -> None:
    line = " ".join(message.split()) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:  # the parent is gone: say it here instead
        sys.stderr.write(f"contactmatch: error: worker failed to start: {line}")


def _current_handlers() -> dict[signal.Signals, Any]:
    """The handlers of the signals uvicorn's supervisor replaces (none off the main thread,
    where it cannot install its own either)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    # The signals uvicorn's supervisor handles (uvicorn.supervisors.multiprocess.SIGNALS).
    names = ["INT", "TERM", "BREAK", "HUP", "QUIT", "TTIN", "TTOU", "USR1", "USR2", "WINCH"]
    sigs = [getattr(signal, f"SIG{n}") for n in names if hasattr(signal, f"SIG{n}")]
    return {sig: signal.getsignal(sig) for sig in sigs}


def _listening_socket(host: str, port: int) -> socket.socket:
    """The shared listening socket, created as TCP explicitly.

    uvicorn's ``Config.bind_socket`` creates it with protocol 0; asyncio then never sets
    ``TCP_NODELAY`` on the connections the workers accept (it checks the socket's
    ``proto``), and every request after the first on a keep-alive connection waits for
    Nagle's algorithm, about 40 ms (uvicorn issue #3149). One process serving alone is not
    affected: there asyncio creates the socket itself.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_workers(config: WorkerConfig, *, host: str, port: int, workers: int) -> None:
    """Run ``workers`` uvicorn workers of ``config`` on ``host:port`` until stopped.

    Before any worker starts, the parent builds the server once and closes it: a bad key,
    an unreachable store or a foreign key census fail here with one clear error instead of
    one per worker; the data key is created once; and with a snapshot directory the first
    snapshot is written once, so the workers start from it instead of each scanning the store.

    Raises:
        InvalidKey, StoreUnavailable, InvalidInput: from that first build.
        ContactMatchError: a worker failed to start (its error in the message).
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    server = config.server()
    server.store.close()
    del server
    if config.verify_number is None and not config.allow_unverified_numbers:
        _notice_no_verifier()
    run_dir = Path(tempfile.mkdtemp(prefix="contactmatch-serve-"))  # mode 0700
    try:
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir(mode=0o700)
        config = dataclasses.replace(config, metrics_dir=str(metrics_dir))
        path = run_dir / _CONFIG_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(config.dumps())
        previous = os.environ.get(CONFIG_ENV)
        # Spawned workers inherit the environment, also the ones started to replace a worker.
        os.environ[CONFIG_ENV] = str(path)
        # uvicorn's supervisor takes over SIGINT and SIGTERM (to stop its workers gracefully)
        # and leaves its handlers installed; put back the caller's when it returns.
        handlers = _current_handlers()
        try:
            uv_config = uvicorn.Config(
                f"{__name__}:app_from_environment",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                lifespan="on",
                ws="none",
                server_header=False,
            )
            sock = _listening_socket(host, port)
            try:
                Multiprocess(uv_config, sockets=[sock]).run()
            except KeyboardInterrupt:
                pass
            finally:
                sock.close()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous
        failed = run_dir / _FAILED_NAME
        if failed.exists():
            first = (failed.read_text(encoding="utf-8").splitlines() or ["(no message)"])[0]
            raise ContactMatchError(f"a worker process failed to start: {first}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
