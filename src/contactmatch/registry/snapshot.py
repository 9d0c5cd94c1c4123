"""Registry snapshots: one file per table, mapped read-only so worker processes share its pages.

Layout (little-endian; every column starts on a 64-byte boundary, so it maps straight into a
numpy array without a copy)::

    fixed header   magic "CMREGSNP", format version (u16), flags (u16), header length (u32),
                   feed sequence (u64), rows (u64), sealed bytes (u64), filter salt (16),
                   user salt (16), key id length (u16), store id length (u16), columns (u16),
                   reserved (u16)
    key id, store id (UTF-8)
    column table   per column: name (8), offset (u64), length in bytes (u64), BLAKE2b-256 (32)
    header digest  BLAKE2b-256 of every header byte before it
    zero padding to 64, then the columns in the order of ``_columns.COLUMNS``, each followed by
    zero padding to 64 (the last one ends the file)

A file is written to a temporary name in the same directory, fsynced, renamed over the final
name and the directory fsynced: a crash leaves the old file or the new one, never half a file
under the final name. Loading checks the header digest, that the file is for this key and
store, the exact length, the zero padding and (by default) every column digest, hashed in
parallel threads: any flipped byte or truncation is refused with :class:`SnapshotError`.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contactmatch.errors import ContactMatchError, InvalidInput
from contactmatch.registry._columns import COLUMNS, MAX_ROWS, Base, column_lengths
from contactmatch.registry._derive import check_key_id, filter_salt
from contactmatch.registry.table import RegistryTable

__all__ = [
    "FORMAT_VERSION",
    "Snapshot",
    "SnapshotError",
    "load",
    "newest",
    "persist",
    "prune",
    "save",
    "snapshot_path",
    "write_in",
]

MAGIC = b"CMREGSNP"
FORMAT_VERSION = 1
ALIGN = 64
_FIXED = struct.Struct("<8sHHIQQQ16s16sHHHH")
_ENTRY = struct.Struct("<8sQQ32s")
_DIGEST = 32
_SUFFIX = ".snap"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})-(?P<seq>[0-9]{20})\.snap")
_TEMP = re.compile(r"\.(?P<final>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]+\.tmp")


class SnapshotError(ContactMatchError):
    """A snapshot file is unusable: corrupt, truncated, foreign, of an unknown format, or
    unreadable. The caller falls back to an older snapshot or to the store."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A loaded snapshot: the table, the feed sequence it reflects, and its file."""

    table: RegistryTable
    seq: int
    path: Path


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _digest(data: memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


def _digests(parts: list[memoryview]) -> list[bytes]:
    """BLAKE2b of every part, in parallel: hashlib releases the GIL on large buffers."""
    workers = max(1, min(len(parts), os.cpu_count() or 1))
    if workers == 1:
        return [_digest(p) for p in parts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_digest, parts))


# --- writing ------------------------------------------------------------------------------------
def _header(
    table: RegistryTable, base: Base, *, seq: int, store_id: bytes, digests: list[bytes]
) -> tuple[bytes, list[tuple[int, int]]]:
    key = table.key_id.encode()
    header_len = _FIXED.size + len(key) + len(store_id) + len(COLUMNS) * _ENTRY.size + _DIGEST
    spans, at = [], _align(header_len)
    for name, _ in COLUMNS:
        size = int(getattr(base, name).nbytes)
        spans.append((at, size))
        at = _align(at + size)
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        header_len,
        seq,
        base.n,
        int(base.sealed.shape[0]),
        table.salt,
        table.user_salt,
        len(key),
        len(store_id),
        len(COLUMNS),
        0,
    )
    entries = b"".join(
        _ENTRY.pack(name.encode(), off, size, d)
        for (name, _), (off, size), d in zip(COLUMNS, spans, digests, strict=True)
    )
    body = fixed + key + store_id + entries
    return body + _digest(memoryview(body)), spans


def _check_store_id(store_id: object) -> bytes:
    if not isinstance(store_id, str) or not 0 < len(store_id.encode()) <= 0xFFFF:
        raise InvalidInput("store_id must be a non-empty str of at most 65535 bytes")
    return store_id.encode()


def save(table: RegistryTable, path: str | os.PathLike[str], *, seq: int, store_id: str) -> Path:
    """Write ``table`` to ``path`` atomically, tagged with the feed sequence it reflects.

    A table with uncompacted changes is compacted first (in memory, for this write only).

    Args:
        table: the registry to write.
        path: the final file name; the temporary file is made next to it.
        seq: the store feed sequence the table reflects (0..2**64 - 1).
        store_id: names the store the table came from (never shown in messages: it may be a
            URL); :func:`load` refuses a file of another store.

    Returns:
        The path written.

    Raises:
        InvalidInput: ``seq`` or ``store_id`` is out of range.
        SnapshotError: the file could not be written (the old file, if any, is untouched).
    """
    if not isinstance(seq, int) or not 0 <= seq < 2**64:
        raise InvalidInput("seq must be an int in 0..2**64-1")
    store = _check_store_id(store_id)
    base = table.compacted_base()
    cols = [np.ascontiguousarray(getattr(base, name), dtype=dt) for name, dt in COLUMNS]
    views = [c.data.cast("B") for c in cols]
    header, spans = _header(table, base, seq=seq, store_id=store, digests=_digests(views))
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            at = len(header)
            for view, (off, size) in zip(views, spans, strict=True):
                f.write(b"\0" * (off - at))
                f.write(view)
                at = off + size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"cannot write snapshot {final.name}: {exc.strerror}") from exc
    return final


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry is data too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str], *, key_id: str, store_id: str, verify: bool = True
) -> tuple[RegistryTable, int]:
    """Map a snapshot read-only and check it.

    Args:
        path: the snapshot file.
        key_id: the key the table must be for.
        store_id: the store the table must come from.
        verify: check every column digest (one parallel pass over the file). Without it only
            the header, lengths and padding are checked: trust the file system instead.

    Returns:
        The table (its columns are views of the mapping, shared with every process that
        maps the same file) and the feed sequence it reflects.

    Raises:
        SnapshotError: unreadable, not a snapshot, unknown format version, for another key
            or store, truncated, or corrupt.
    """
    key_id = check_key_id(key_id)
    store = _check_store_id(store_id)
    name = Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotError(f"cannot open snapshot {name}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size < _FIXED.size:
            raise SnapshotError(f"snapshot {name} is truncated")
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise SnapshotError(f"cannot map snapshot {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return _parse(mm, name=name, key_id=key_id, store=store, verify=verify)


def _parse(
    mm: mmap.mmap, *, name: str, key_id: str, store: bytes, verify: bool
) -> tuple[RegistryTable, int]:
    size = len(mm)
    fields = _FIXED.unpack_from(mm, 0)
    magic, version, flags, header_len, seq, rows, sealed_bytes = fields[:7]
    salt, user_salt, key_len, store_len, ncols, reserved = fields[7:]
    if magic != MAGIC:
        raise SnapshotError(f"{name} is not a registry snapshot")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot {name} has format version {version}; this library reads {FORMAT_VERSION}"
        )
    expect_len = _FIXED.size + key_len + store_len + ncols * _ENTRY.size + _DIGEST
    if header_len != expect_len or _align(header_len) > size:
        raise SnapshotError(f"snapshot {name} is truncated or its header is corrupt")
    body = memoryview(mm)[: header_len - _DIGEST]
    try:
        if not hmac.compare_digest(_digest(body), mm[header_len - _DIGEST : header_len]):
            raise SnapshotError(f"snapshot {name} header is corrupt (checksum mismatch)")
    finally:
        body.release()
    if flags or reserved or ncols != len(COLUMNS) or rows > MAX_ROWS:
        raise SnapshotError(f"snapshot {name} uses features this library does not know")
    at = _FIXED.size
    their_key = mm[at : at + key_len].decode("utf-8", "replace")
    their_store = mm[at + key_len : at + key_len + store_len]
    if their_key != key_id:
        raise SnapshotError(f"snapshot {name} is for key id {their_key!r}, not {key_id!r}")
    if not hmac.compare_digest(their_store, store):
        raise SnapshotError(f"snapshot {name} was written for another store")
    if salt != filter_salt(key_id):
        raise SnapshotError(f"snapshot {name} header is corrupt (filter salt)")
    entries = _entries(mm, at + key_len + store_len, rows, sealed_bytes, name)
    ends = [off + size_ for _, off, size_, _ in entries]
    if ends[-1] != size:
        raise SnapshotError(f"snapshot {name} is truncated or has trailing bytes")
    gaps = [(header_len, entries[0][1])]
    gaps += [(end, e[1]) for end, e in zip(ends, entries[1:], strict=False)]
    if any(mm[a:b].strip(b"\0") for a, b in gaps):
        raise SnapshotError(f"snapshot {name} is corrupt (padding)")
    if verify:
        view = memoryview(mm)
        parts = [view[off : off + size_] for _, off, size_, _ in entries]
        got = _digests(parts)
        for p in parts:
            p.release()
        view.release()
        if not all(hmac.compare_digest(g, e[3]) for g, e in zip(got, entries, strict=True)):
            raise SnapshotError(f"snapshot {name} is corrupt (column checksum mismatch)")
    arrays = {
        col: np.frombuffer(mm, dtype=np.dtype(dt), count=size_ // np.dtype(dt).itemsize, offset=off)
        for (col, dt), (_, off, size_, _) in zip(COLUMNS, entries, strict=True)
    }
    base = Base(**arrays)
    if rows and int(base.offsets(np.array([rows], dtype=np.int64))[0]) != sealed_bytes:
        raise SnapshotError(f"snapshot {name} is corrupt (sealed offsets)")
    return RegistryTable(base, key_id=key_id, user_salt=user_salt), int(seq)


def _entries(
    mm: mmap.mmap, at: int, rows: int, sealed_bytes: int, name: str
) -> list[tuple[str, int, int, bytes]]:
    """The column table, checked against the expected names, sizes and alignment."""
    lengths = column_lengths(rows, sealed_bytes)
    out = []
    end = at + len(COLUMNS) * _ENTRY.size + _DIGEST
    for i, (col, dt) in enumerate(COLUMNS):
        raw, off, size, digest = _ENTRY.unpack_from(mm, at + i * _ENTRY.size)
        if raw != col.encode().ljust(8, b"\0") or size != lengths[col] * np.dtype(dt).itemsize:
            raise SnapshotError(f"snapshot {name} column table is corrupt")
        if off != _align(end):
            raise SnapshotError(f"snapshot {name} column table is corrupt")
        out.append((col, off, size, digest))
        end = off + size
    return out


# --- a directory of snapshots -------------------------------------------------------------------
def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput("snapshot name must be 1-64 characters of [A-Za-z0-9._-]")
    return name


def snapshot_path(directory: str | os.PathLike[str], *, name: str, seq: int) -> Path:
    """Where the snapshot ``name`` at feed sequence ``seq`` lives: ``<name>-<seq:020>.snap``."""
    if not isinstance(seq, int) or not 0 <= seq < 2**64:
        raise InvalidInput("seq must be an int in 0..2**64-1")
    return Path(directory) / f"{_check_name(name)}-{seq:020d}{_SUFFIX}"


def write_in(
    directory: str | os.PathLike[str],
    table: RegistryTable,
    *,
    name: str,
    seq: int,
    store_id: str,
) -> Path:
    """:func:`save` under :func:`snapshot_path` (what :func:`newest` and :func:`prune` find)."""
    return save(table, snapshot_path(directory, name=name, seq=seq), seq=seq, store_id=store_id)


def persist(
    directory: str | os.PathLike[str],
    table: RegistryTable,
    *,
    name: str,
    seq: int,
    store_id: str,
) -> Snapshot:
    """Write ``table`` (compacting its overlay on the way) and map the file back.

    How a long-running process folds its changes in without moving its rows into anonymous
    memory (which :meth:`RegistryTable.compact` does): the returned table's base is the
    mapped file, shared with the other processes that load it, and its overlay is empty.
    The caller swaps it in, and must not apply changes to ``table`` in between (they would
    be missing from the new table). The file just written is not verified again.

    Raises:
        InvalidInput: bad ``name``, ``seq`` or ``store_id``.
        SnapshotError: the file could not be written or read back.
    """
    path = write_in(directory, table, name=name, seq=seq, store_id=store_id)
    mapped, got = load(path, key_id=table.key_id, store_id=store_id, verify=False)
    mapped.compact_at, mapped.compact_min = table.compact_at, table.compact_min
    return Snapshot(mapped, got, path)


def _listed(directory: Path, name: str) -> Iterator[tuple[int, Path]]:
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise SnapshotError(f"cannot list snapshot directory: {exc.strerror}") from exc
    for p in entries:
        m = _FILE.fullmatch(p.name)
        if m and m["name"] == name:
            yield int(m["seq"]), p


def newest(
    directory: str | os.PathLike[str],
    *,
    name: str,
    key_id: str,
    store_id: str,
    verify: bool = True,
    on_reject: Callable[[Path, SnapshotError], None] | None = None,
) -> Snapshot | None:
    """The valid snapshot ``name`` with the highest sequence, or None if there is none.

    Files that fail to load are skipped (and passed to ``on_reject``, e.g. to log them);
    temporary files of interrupted writes are never candidates.

    Raises:
        SnapshotError: the directory cannot be listed.
    """
    _check_name(name)
    for seq, path in sorted(_listed(Path(directory), name), reverse=True):
        try:
            table, got = load(path, key_id=key_id, store_id=store_id, verify=verify)
        except SnapshotError as exc:
            if on_reject is not None:
                on_reject(path, exc)
            continue
        if got == seq:
            return Snapshot(table, got, path)
        if on_reject is not None:
            on_reject(path, SnapshotError(f"snapshot {path.name} names another sequence"))
    return None


def prune(directory: str | os.PathLike[str], *, name: str, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots ``name``, and abandoned temporary files.

    Counting is by file name, not validity: keep at least 2 so a corrupt newest file still
    leaves one to fall back on. A temporary file is abandoned when its writer process is
    gone. Mapped files stay readable by the processes that mapped them after deletion.

    Returns:
        The files deleted.

    Raises:
        InvalidInput: ``keep`` < 1.
        SnapshotError: the directory cannot be listed.
    """
    _check_name(name)
    if keep < 1:
        raise InvalidInput("keep must be >= 1")
    d = Path(directory)
    old = [p for _, p in sorted(_listed(d, name), reverse=True)[keep:]]
    for p in d.glob(f".{name}-*{_SUFFIX}.*.tmp"):
        m = _TEMP.fullmatch(p.name)
        if m and not _alive(int(m["pid"])):
            old.append(p)
    gone = []
    for p in old:
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
