"""``contactmatch serve``: the HTTP API under uvicorn (the ``[server]`` extra).

The options are defined here, without importing anything of the server, so that they exist
even when the extra is missing: ``contactmatch serve --store ... --key ...`` then reaches the
handler, which raises :class:`~contactmatch.errors.MissingDependency` naming the
``pip install`` that fixes it, instead of argparse refusing the options as unrecognised.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, cast

from contactmatch.cli._args import port_number
from contactmatch.stores import DEFAULT_URL

if TYPE_CHECKING:
    from contactmatch.server.auth import NumberVerifier

__all__ = ["ENV_PREFIX", "add_parser", "add_serve_arguments", "env_name", "serve_command"]

_MiB = 1024 * 1024
#: Every option ``--some-flag`` can also come from ``CONTACTMATCH_SOME_FLAG`` (flags win).
ENV_PREFIX = "CONTACTMATCH_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Repeatable(argparse._AppendAction):
    """``action="append"`` whose first flag replaces a default from the environment instead
    of adding to it (flags win over environment variables, also for lists)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        del parser, option_string  # argparse's signature
        items = getattr(namespace, self.dest, None)
        if items is None or items is self.default:
            items = []
        setattr(namespace, self.dest, [*items, values])


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``contactmatch serve`` to ``parser`` (imports nothing of the server).

    The refresh default for several workers, named in ``--refresh-every``'s help, is
    ``contactmatch.server.serve.WORKER_REFRESH_EVERY`` (a test keeps the two in step).
    """
    parser.add_argument(
        "--store",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"registry store: memory://, sqlite:///PATH, postgresql://, redis:// "
        f"(default {DEFAULT_URL})",
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
    parser.add_argument(
        "--port", type=port_number, default=8080, help="TCP port, 1-65535 (default 8080)"
    )
    parser.add_argument(
        "--region", default=None, help="default region for numbers without +CC (e.g. IR)"
    )
    parser.add_argument(
        "--scheme",
        action=_Repeatable,
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
        "sharing one store (default 0: off for a single process; 1 s with --workers > 1, "
        "whose workers are several processes on one store)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (default 1: one process). Each maps the "
        "snapshot, follows the store's change feed and evaluates OPRF batches on "
        "cores // N threads; about one worker per core. Needs a shared store (not memory://)",
    )
    parser.add_argument(
        "--limits",
        default=None,
        metavar="PATH",
        help='quotas: a JSON object of RateLimits fields, e.g. {"requests": {"capacity": '
        '600, "period": 3600}, "max_items": 25000}; fields left out keep their defaults',
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
    parser.add_argument(
        "--previous-key",
        action=_Repeatable,
        dest="previous_keys",
        default=None,
        metavar="PATH",
        help="during a key rotation: also serve this older key (repeatable), so users not "
        "yet rekeyed and clients holding old tokens keep working (docs/operations.md)",
    )
    parser.add_argument(
        "--admin-token-file",
        default=None,
        metavar="PATH",
        help="file (mode 0600) holding the operator token of /v1/stats (e.g. openssl rand "
        "-hex 32); without it /v1/stats answers 403",
    )
    parser.add_argument(
        "--metrics-token-file",
        default=None,
        metavar="PATH",
        help="file (mode 0600) holding the token /metrics then requires (Bearer); without it "
        "/metrics is open (aggregates only)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="the contactmatch loggers' format: text, or json (one object per line: time, "
        "level, logger, message) for log shippers; uvicorn's access log keeps its own",
    )
    _defaults_from_environment(parser)


def env_name(option: str) -> str:
    """The environment variable of a long option: ``--data-key`` -> ``CONTACTMATCH_DATA_KEY``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def _defaults_from_environment(parser: argparse.ArgumentParser) -> None:
    """Take each option's default from its environment variable, when set.

    Defaults, not values: a flag on the command line still wins. Repeatable options take a
    comma-separated list; on/off options take 1/0, true/false, yes/no or on/off. A value
    the option refuses makes the parser exit with the variable's name, like a bad flag.
    """
    for action in parser._actions:  # argparse has no public iterator over its options
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest == "help":
            continue
        name = env_name(longs[0])
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            value = _env_value(action, raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}: {exc}")
        action.default = value
        # A required option set in the environment is given.
        action.required = False


def _env_value(action: argparse.Action, raw: str) -> object:
    """An environment variable's text as the option's value.

    Raises:
        ArgumentTypeError, ValueError: the option refuses it (as argparse's converters do).
    """
    if isinstance(action, argparse._StoreTrueAction):
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise argparse.ArgumentTypeError("expected 1/0, true/false, yes/no or on/off")
        return word in _TRUE
    if isinstance(action, argparse._AppendAction):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        return [_convert(action, item) for item in items] or None
    return _convert(action, raw)


def _convert(action: argparse.Action, raw: str) -> object:
    value: object = raw
    if callable(action.type):
        value = action.type(raw)
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C for the duration, then restore the old handler.

    uvicorn finishes in-flight requests on either signal and then re-raises the signal it
    caught under the handler it found: with the default SIGTERM handler the process would die
    by the signal, skipping every ``finally`` (the store would not be closed). As a
    KeyboardInterrupt it unwinds, and uvicorn (or :func:`serve_command`) treats it as the
    stop it is. Outside the main thread signals cannot be handled; nothing changes there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_command(args: argparse.Namespace) -> int:
    """Handler of ``contactmatch serve``: run the server until stopped; returns 0.

    SIGTERM and SIGINT (Ctrl-C) are how a server is stopped, so they are not an interruption:
    in-flight requests finish, and the process exits 0 without a traceback, also when the
    stop comes while it starts.

    Raises:
        MissingDependency: the ``[server]`` extra is not installed.
    """
    try:
        with _sigterm_interrupts():
            _serve(args)
    except KeyboardInterrupt:
        pass  # a stop requested while starting (or one uvicorn handed back): nothing to report
    return 0


def _serve(args: argparse.Namespace) -> None:
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode
    from contactmatch.ratelimit import RateLimits
    from contactmatch.server import require_extra
    from contactmatch.server.serve import load_callable, load_limits, run
    from contactmatch.service import DEFAULT_SCHEMES, ServiceSettings

    # Before reading any file: without the extra, say which pip install is missing.
    require_extra("server")
    limits = load_limits(args.limits) if args.limits is not None else RateLimits()
    schemes = tuple(args.schemes or ())
    if not schemes:
        # The default flows are OPRF ones; a VOPRF key serves their verifiable twins.
        verifiable = ServerKey.load(args.key).mode is Mode.VOPRF
        schemes = tuple("v" + s if verifiable else s for s in DEFAULT_SCHEMES)
    settings = ServiceSettings(schemes=schemes, region=args.region, limits=limits)
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
        workers=args.workers,
        previous_key_paths=tuple(args.previous_keys or ()),
        admin_token_file=args.admin_token_file,
        metrics_token_file=args.metrics_token_file,
        log_format=args.log_format,
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "serve",
        help="serve the HTTP API with uvicorn (needs contactmatch[server])",
        description="Serve registration, discovery, filter downloads, settings and deletion "
        "over HTTP; see docs/http.md.",
    )
    add_serve_arguments(p)
    p.set_defaults(handler=serve_command)
