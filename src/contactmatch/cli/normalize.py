"""``contactmatch normalize``: lines, vCards or JSON contacts to E.164 numbers on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def _read_source(path: str) -> bytes:
    """The input as bytes, at most one byte more than the library accepts.

    Bytes, not text: ``read_contacts`` decodes them and refuses non-UTF-8 or binary input
    with ``InvalidContactCard`` (``read_text`` would raise a bare ``UnicodeDecodeError``, a
    traceback). An input past the library's limit is refused with the library's error after
    reading one byte more than the limit, not all of it.
    """
    from contactmatch.contacts import MAX_INPUT_BYTES
    from contactmatch.errors import InvalidContactCard

    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        with Path(path).open("rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidContactCard("contact input is too large")
    return data


def run(args: argparse.Namespace) -> int:
    """Write one E.164 number per accepted entry; masked rejects and a summary to stderr."""
    from contactmatch.contacts import read_contacts
    from contactmatch.errors import mask_number
    from contactmatch.phone import normalize_many

    raws = read_contacts(_read_source(args.file))
    batch = normalize_many(raws, args.region, mobile_only=not args.all_types)
    seen: set[str] = set()
    out = sys.stdout
    for number in batch.numbers:
        if number is None or (args.unique and number in seen):
            continue
        seen.add(number)
        out.write(number + "\n")
    for index, reason in batch.rejected:
        # Rejects go to stderr masked (digits only: a CSV line may hold a name too), as they
        # may be typos of real numbers.
        masked = mask_number(raws[index])
        shown = f" ({masked})" if masked else ""
        sys.stderr.write(f"entry {index + 1}{shown}: {reason}\n")
    accepted = len(raws) - len(batch.rejected)
    sys.stderr.write(
        f"{accepted} of {len(raws)} entries normalised, {len(batch.rejected)} rejected\n"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "normalize",
        help="turn a list of numbers or a vCard file into E.164 numbers",
        description=(
            "Read FILE (one number per line, vCard 3.0/4.0, or a JSON list of contacts; '-' "
            "for stdin) and write one E.164 number per accepted entry to stdout. Rejected "
            "entries go to stderr, masked, with a reason code. Names, photos and every other "
            "contact field are discarded."
        ),
    )
    p.add_argument("file", metavar="FILE", help="input file, or '-' for standard input")
    p.add_argument(
        "--region",
        type=str.upper,
        default=None,
        help="ISO 3166 region for numbers written without +CC (e.g. IR, DE)",
    )
    p.add_argument(
        "--all-types",
        action="store_true",
        help="accept every valid number type, not only mobile numbers",
    )
    p.add_argument("--unique", action="store_true", help="write each number once")
    p.set_defaults(handler=run)
