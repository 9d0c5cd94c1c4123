"""The index file: a 64-byte checksummed header, the directory, then the entries.

Format 2 (written): ``magic | format | mode | key bits | directory bits | count | salt |
data checksum | header checksum``, then the ``uint32`` offsets padded to 8 bytes, then the
``uint64`` entries, so both arrays can be memory-mapped where they lie. Format 1 (sorted
fingerprints, then row ids) is still read, and laid out anew in memory.
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import blake2b
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from contactmatch.errors import MalformedMessage
from contactmatch.index._directory import REM_BITS, Directory

__all__ = ["MODES", "FingerprintMode", "read_index", "write_index"]

#: ``"hash"``: a salted 64-bit hash of the whole token; ``"prefix"``: its first 8 bytes.
FingerprintMode = Literal["hash", "prefix"]
#: The modes in the order of their code in the file header.
MODES: Final[tuple[FingerprintMode, ...]] = ("hash", "prefix")

_INDEX_MAGIC: Final = b"CMIX"
_FORMAT_VERSION: Final = 2
# magic, format version, mode, key bits, directory bits, pad, count, salt, data checksum;
# then a header checksum filling the 64 bytes.
_INDEX_HEAD = struct.Struct("<4sHBBB3xQ16s16s")
_INDEX_HEAD_V1 = struct.Struct("<4sHBxQ16s16s")  # format 1: no key or directory bits
_INDEX_HEADER_BYTES: Final = 64


def _pad8(nbytes: int) -> int:
    return -nbytes % 8


def write_index(
    path: str | os.PathLike[str], directory: Directory, mode: FingerprintMode, salt: bytes
) -> None:
    """Write a compacted index's directory (format 2)."""
    offsets = np.ascontiguousarray(directory.offsets, dtype="<u4")
    entries = np.ascontiguousarray(directory.entries, dtype="<u8")
    digest = blake2b(digest_size=16)
    digest.update(offsets.data)
    digest.update(entries.data)
    head = _INDEX_HEAD.pack(
        _INDEX_MAGIC,
        _FORMAT_VERSION,
        MODES.index(mode),
        directory.key_bits,
        directory.dir_bits,
        entries.shape[0],
        salt,
        digest.digest(),
    )
    head += blake2b(head, digest_size=_INDEX_HEADER_BYTES - len(head)).digest()
    with open(path, "wb") as f:
        f.write(head)
        f.write(offsets.tobytes())
        f.write(bytes(_pad8(offsets.nbytes)))
        f.write(entries.tobytes())


def read_index(
    path: str | os.PathLike[str], *, mmap: bool, verify: bool
) -> tuple[Directory, FingerprintMode, bytes]:
    """Read an index file: its directory, fingerprint mode and salt.

    Args:
        path: a file written by :func:`write_index` (format 2) or by 0.1 (format 1).
        mmap: map the arrays read-only instead of reading them into memory.
        verify: also check the data checksum (reads every page).

    Raises:
        MalformedMessage: the file is not an index, is truncated or fails a checksum.
    """
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(_INDEX_HEADER_BYTES)
    if len(head) != _INDEX_HEADER_BYTES:
        raise MalformedMessage("index file too short")
    magic, version = struct.unpack_from("<4sH", head)
    if magic != _INDEX_MAGIC or version not in (1, _FORMAT_VERSION):
        raise MalformedMessage("not a contactmatch index of a known version")
    layout = _INDEX_HEAD_V1 if version == 1 else _INDEX_HEAD
    body, check = head[: layout.size], head[layout.size :]
    expect = blake2b(body, digest_size=len(check)).digest()
    if not hmac.compare_digest(check, expect):
        raise MalformedMessage("index header checksum mismatch")
    if version == 1:
        return _read_v1(path, body, size, verify=verify)
    _, _, mode, key_bits, d, count, salt, data_sum = _INDEX_HEAD.unpack(body)
    # An empty directory keeps all 64 key bits (nothing has been cut yet).
    fits = key_bits - d <= REM_BITS or count == 0
    if mode >= len(MODES) or not (d <= 31 and d <= key_bits <= 64 and fits):
        raise MalformedMessage("not a contactmatch index of a known version")
    n_off = (1 << d) + 1
    at = _INDEX_HEADER_BYTES + 4 * n_off + _pad8(4 * n_off)
    if size != at + 8 * count:
        raise MalformedMessage("index file length does not match its header")
    offsets: npt.NDArray[np.generic]
    entries: npt.NDArray[np.generic]
    if mmap:
        offsets = np.memmap(path, "<u4", "r", offset=_INDEX_HEADER_BYTES, shape=(n_off,))
        entries = (
            np.memmap(path, "<u8", "r", offset=at, shape=(count,))
            if count
            else np.zeros(0, dtype="<u8")
        )
    else:
        raw = Path(path).read_bytes()
        offsets = np.frombuffer(raw, "<u4", n_off, _INDEX_HEADER_BYTES)
        entries = np.frombuffer(raw, "<u8", count, at)
    if int(offsets[0]) != 0 or int(offsets[-1]) != count:
        raise MalformedMessage("index directory does not match its header")
    if verify:
        digest = blake2b(digest_size=16)
        digest.update(np.ascontiguousarray(offsets).data)
        digest.update(np.ascontiguousarray(entries).data)
        if not hmac.compare_digest(digest.digest(), data_sum):
            raise MalformedMessage("index data checksum mismatch")
    # Plain ndarray views of the mapping: np.memmap's subclass hooks cost more than the
    # gathers themselves on small lookups.
    directory = Directory(
        offsets.view(np.ndarray).astype(np.uint32, copy=False),
        entries.view(np.ndarray).astype(np.uint64, copy=False),
        key_bits,
        d,
    )
    return directory, MODES[mode], salt


def _read_v1(
    path: str | os.PathLike[str], body: bytes, size: int, *, verify: bool
) -> tuple[Directory, FingerprintMode, bytes]:
    """Read a format-1 file (sorted ``uint64`` fingerprints, then ``uint32`` row ids)."""
    _, _, mode, count, salt, data_sum = _INDEX_HEAD_V1.unpack(body)
    if mode >= len(MODES):
        raise MalformedMessage("not a contactmatch index of a known version")
    if size != _INDEX_HEADER_BYTES + 12 * count:
        raise MalformedMessage("index file length does not match its header")
    raw = Path(path).read_bytes()
    fp = np.frombuffer(raw, "<u8", count, _INDEX_HEADER_BYTES)
    rows = np.frombuffer(raw, "<u4", count, _INDEX_HEADER_BYTES + 8 * count)
    if verify:
        digest = blake2b(digest_size=16)
        digest.update(fp.data)
        digest.update(rows.data)
        if not hmac.compare_digest(digest.digest(), data_sum):
            raise MalformedMessage("index data checksum mismatch")
    keys = fp.astype(np.uint64)
    if count > 1 and bool((keys[1:] < keys[:-1]).any()):
        raise MalformedMessage("index fingerprints are not sorted")
    return Directory.from_sorted(keys, rows.astype(np.uint32), 64), MODES[mode], salt
