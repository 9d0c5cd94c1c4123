"""The ``contactmatch`` command line: one module per command, all argparse and rich here.

Each command module defines ``add_parser(sub)``, which registers its options and handler,
and imports what the handler needs inside it, so that building the parser imports no
optional extra: the options of ``serve`` exist even without ``[server]``, and its handler
names the ``pip install`` that is missing. The library below takes plain values and
callbacks and returns reports; only this package prints.

:func:`main` turns every expected failure into one line on stderr, never a traceback:
library errors (already masked) and OS errors exit 2, with the file name; Ctrl-C exits 130,
saying how to resume where resuming exists (``import``, ``rotate``). Stopping ``serve`` is
its normal end and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contactmatch._version import __version__
from contactmatch.cli import (
    audit,
    bench,
    bulk_import,
    demo,
    keygen,
    normalize,
    rotate,
    serve,
    vacuum,
)
from contactmatch.errors import ContactMatchError

__all__ = ["main"]

if TYPE_CHECKING:
    from typing import TypeAlias

    # Not subscriptable at run time; annotations are never evaluated here.
    _Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

#: Each command's ``add_parser``, in the order ``contactmatch --help`` lists them.
_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    normalize.add_parser,
    keygen.add_parser,
    bulk_import.add_parser,
    rotate.add_parser,
    vacuum.add_parser,
    serve.add_parser,
    bench.add_parser,
    audit.add_parser,
    demo.add_parser,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contactmatch",
        description=(
            "Privacy-first contact discovery: normalise phone books to E.164, "
            "and match them against a registry without revealing them."
        ),
        epilog="Run 'contactmatch COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"contactmatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _COMMANDS:
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contactmatch`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        resume = "; run again to resume" if getattr(args, "resumable", False) else ""
        sys.stderr.write(f"contactmatch: interrupted{resume}\n")
        return 130
    except ContactMatchError as exc:
        # Library errors are user-facing and already masked; no traceback for them.
        sys.stderr.write(f"contactmatch: error: {exc}\n")
        return 2
    except OSError as exc:
        # The file's name, not its path: enough to act on, and no directory layout in logs.
        where = f": {Path(exc.filename).name}" if exc.filename else ""
        sys.stderr.write(f"contactmatch: error: {exc.strerror or exc}{where}\n")
        return 2
