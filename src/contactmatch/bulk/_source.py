"""Reading an import file: ``user_id,number`` lines, with or without a header, maybe gzipped.

The reader is the only part of an import that runs once, on the coordinator, so it is kept
to plain byte splits; the csv module is used only for the rare line that quotes a field.
Lines are numbered as a text editor numbers them (the header is line 1), so a rejection
report points at the line an operator will open.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from contactmatch.errors import InvalidInput, mask_number
from contactmatch.stores.base import check_user_id

__all__ = ["Partition", "Rejection", "read_partitions"]

_ID_NAMES = frozenset({"user_id", "userid", "user", "uid", "id", "account", "account_id"})
_NUMBER_NAMES = frozenset(
    {"number", "phone", "phone_number", "e164", "msisdn", "mobile", "tel", "telephone"}
)
_MAX_LINE = 4096  # a user id (64) and a number as written (a few dozen characters)
# An ASCII line "user_id,number" whose user id is valid (the rule of check_user_id) and
# whose number field has no comma or quote: everything else takes the careful path.
_FAST = re.compile(rb"([A-Za-z0-9][A-Za-z0-9._-]{0,63}) *,([^,\"\x80-\xff]*)").fullmatch


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected line: its number in the file, a reason code, and the masked number."""

    line: int
    reason: str
    masked: str


@dataclass(slots=True)
class Partition:
    """A run of consecutive lines: ``user_ids[i]``/``raws[i]`` came from line ``lines[i]``."""

    index: int
    lines: list[int] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    raws: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def __repr__(self) -> str:  # the raws are phone numbers: never in a repr
        return f"<Partition {self.index} lines={len(self.lines)} rejected={len(self.rejected)}>"


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _fields(text: str) -> list[str]:
    if '"' in text:
        return next(csv.reader(io.StringIO(text)), [])
    if "," in text:
        return text.split(",")
    if "\t" in text:
        return text.split("\t")
    return text.split(";") if ";" in text else text.split()


def _header(fields: list[str]) -> tuple[int, int] | None:
    names = [f.strip().lower().lstrip("\ufeff") for f in fields]
    uid = next((i for i, n in enumerate(names) if n in _ID_NAMES), None)
    num = next((i for i, n in enumerate(names) if n in _NUMBER_NAMES), None)
    return None if uid is None or num is None else (uid, num)


def _lines(fh: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Lines with their end-of-line stripped, and whether each was cut at ``_MAX_LINE``.

    Bounded reads: a binary file with no newline must not be read into memory whole.
    """
    while line := fh.readline(_MAX_LINE + 1):
        if len(line) > _MAX_LINE and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield b"", True
            continue
        yield line.rstrip(b"\r\n"), False


def read_partitions(path: str | Path, size: int) -> Iterator[Partition]:
    """Yield the file's lines in partitions of ``size`` lines (the last one shorter).

    A line that cannot be read (not UTF-8, too long, fewer than two fields, a malformed user
    id) is kept out of the partition's work and listed in its ``rejected`` with a reason
    code; it still counts towards the partition's size, so partition boundaries depend on
    the file alone and a resumed import splits it the same way. Blank lines and a header
    (``user_id,number`` or similar names, in either order) take no place.

    Raises:
        OSError: the file cannot be opened or read (the error keeps its path).
        InvalidInput: the file looks gzipped but its compressed data is damaged.
    """
    p = Path(path)
    cols = (0, 1)
    fast = True
    current = Partition(0)
    count = 0
    with _open(p) as fh:
        try:
            for lineno, (body, too_long) in enumerate(_lines(fh), start=1):
                if fast and lineno > 1 and (m := _FAST(body)) is not None:
                    # The common line, decided by one C-level match (10^8-line files).
                    current.lines.append(lineno)
                    current.user_ids.append(m.group(1).decode("ascii"))
                    current.raws.append(m.group(2).decode("ascii").strip())
                    count += 1
                    if count == size:
                        yield current
                        current = Partition(current.index + 1)
                        count = 0
                    continue
                if too_long:
                    verdict: _Row | Rejection | tuple[int, int] = Rejection(
                        lineno, "line_too_long", ""
                    )
                elif not body.strip():
                    continue
                else:
                    verdict = _read_line(body, lineno, cols)
                if isinstance(verdict, tuple):
                    cols = verdict  # the header names the columns
                    fast = cols == (0, 1)
                    continue
                if isinstance(verdict, Rejection):
                    current.rejected.append(verdict)
                else:
                    current.lines.append(lineno)
                    current.user_ids.append(verdict.user_id)
                    current.raws.append(verdict.raw)
                count += 1
                if count == size:
                    yield current
                    current = Partition(current.index + 1)
                    count = 0
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput(
                f"{p.name}: damaged compressed data ({type(exc).__name__})"
            ) from None
    if count or current.index == 0:
        yield current


@dataclass(frozen=True, slots=True)
class _Row:
    user_id: str
    raw: str


def _read_line(
    body: bytes, lineno: int, cols: tuple[int, int]
) -> _Row | Rejection | tuple[int, int]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(lineno, "not_utf8", "")
    fields = _fields(text)
    if lineno == 1 and (header := _header(fields)) is not None:
        return header
    if len(fields) <= max(cols):
        return Rejection(lineno, "malformed_line", mask_number(text))
    uid, raw = fields[cols[0]].strip().lstrip("\ufeff"), fields[cols[1]].strip()
    try:
        check_user_id(uid)
    except InvalidInput:
        return Rejection(lineno, "bad_user_id", mask_number(raw))
    return _Row(uid, raw)
